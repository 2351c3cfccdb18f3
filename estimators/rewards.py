"""Reward functions: (prompts, completions) -> one float per pair, and a registry of specs.

A reward sees `prompts[i]`, the rendered prompt text the base model continued
(`provider.prompt_text(prompt)`), and `completions[i]`, the response text. Every reward has a
`description`: a spec string that `build_reward` turns back into the same reward, so a
checkpoint that stores it can rebuild its reward.

Spec strings (the CLI's `--reward`):
    vader                               VADER compound sentiment of the completion, in [-1, 1]
    length:target=50,unit=words         -min(1, |n - target| / target), in [-1, 0]
    ending:min_words=25,max_words=35    1 for a response of 25 to 35 words that ends on a
                                        finished sentence, less outside (see EndingReward)
    keyword:words=great|love,mode=any   1 if a keyword occurs as a whole word (mode=count: count)
    regex:pattern="\\bthanks?\\b",ignore_case=true
    hf:path/or/name                     a Hugging Face sequence-classification reward model
    judge:question="Is it polite?"      P(yes) of an LLM asked about the finished response,
                                        through an OpenAI-compatible API (estimators.judge)
    py:package.module.factory,k=v       any Reward returned by factory(k=v, ...)
    0.7*vader+0.3*length:target=40      a weighted sum of the above
Values holding ',', '+' or quotes must be quoted ("..." or '...'); a value without `key=` is
the reward's main argument (`hf:PATH`, `regex:PATTERN`, `keyword:WORDS`).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from vas_api.errors import ConfigError, RewardError, VASError

__all__ = [
    "Reward",
    "VaderReward",
    "LengthReward",
    "EndingReward",
    "ends_on_sentence",
    "KeywordReward",
    "RegexReward",
    "HFReward",
    "WeightedReward",
    "compute_rewards",
    "build_reward",
    "register_reward",
    "available_rewards",
]


@runtime_checkable
class Reward(Protocol):
    """A reward: one finite float per (prompt text, completion) pair."""

    description: str

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]: ...


def compute_rewards(
    reward: Reward, prompts: Sequence[str], completions: Sequence[str]
) -> list[float]:
    """Call a reward and check what it returns.

    Args:
        reward: any Reward.
        prompts: rendered prompt texts, one per completion.
        completions: the completions to score.

    Returns:
        One finite float per completion.

    Raises:
        RewardError: the reward failed, returned the wrong number of values, or a value that
            is not a finite number (the message names the reward and the index).
    """
    if len(prompts) != len(completions):
        raise RewardError(f"{len(prompts)} prompts for {len(completions)} completions")
    name = getattr(reward, "description", repr(reward))
    try:
        raw = reward(list(prompts), list(completions))
    except VASError:
        raise
    except Exception as exc:  # a user reward may raise anything; report it as a reward failure
        raise RewardError(f"reward {name!r} failed: {type(exc).__name__}: {exc}") from exc
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError) as exc:
        raise RewardError(f"reward {name!r} returned a value that is not a number: {exc}") from exc
    if len(values) != len(completions):
        raise RewardError(
            f"reward {name!r} returned {len(values)} values for {len(completions)} completions"
        )
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise RewardError(
                f"reward {name!r} returned {v} for item {i} "
                f"(completion {completions[i][:60]!r}); rewards must be finite numbers"
            )
    return values


# -- built-in rewards ---------------------------------------------------------------------------


class VaderReward:
    """VADER compound sentiment of the completion, in [-1, 1] (the prompt is ignored).

    The lexicon ships inside the vaderSentiment wheel: nothing is downloaded.
    """

    description = "vader"

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as exc:
            raise RewardError("the vader reward needs `pip install vaderSentiment`") from exc
        self._analyzer = SentimentIntensityAnalyzer()

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [float(self._analyzer.polarity_scores(c)["compound"]) for c in completions]


class LengthReward:
    """Closeness of the completion's length to a target: -min(1, |n - target| / target).

    0 at the target, -1 at zero length or twice the target and beyond.
    """

    def __init__(self, target: float = 50, unit: str = "words") -> None:
        if not (isinstance(target, int | float) and math.isfinite(target) and target > 0):
            raise ConfigError(f"length reward: target must be a positive number, got {target!r}")
        if unit not in ("words", "chars"):
            raise ConfigError(f"length reward: unit must be 'words' or 'chars', got {unit!r}")
        self.target, self.unit = target, unit
        self.description = _describe("length", {"target": target, "unit": unit})

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        def n(text: str) -> int:
            return len(text.split()) if self.unit == "words" else len(text)

        return [-min(1.0, abs(n(c) - self.target) / self.target) for c in completions]


# What may follow the sentence's final mark: closing quotes, brackets and markdown emphasis.
_CLOSERS = "\"'\u201d\u2019)]*_"
_FINAL_MARKS = ".!?\u2026"  # . ! ? and the ellipsis character


def ends_on_sentence(text: str) -> bool:
    """True when `text` ends on a finished sentence: its last non-space character, after any
    closing quotes, brackets or markdown emphasis (``"'”’)]*_``), is ``.``, ``!``, ``?`` or ``…``.
    """
    return text.rstrip().rstrip(_CLOSERS)[-1:] in tuple(_FINAL_MARKS)


class EndingReward:
    """A whole-response reward: between `min_words` and `max_words` words, ending on a finished
    sentence (`ends_on_sentence`).

    reward = length_score * (1 if the response ends on a finished sentence else `unfinished`),
    where length_score is 1 inside the window and exp(-d / slack) at d words outside it. So a
    finished response in the window scores 1, a response cut mid-sentence at most `unfinished`,
    and every extra word away from the window lowers the score a little (graded, so rankings and
    Spearman correlations mean something). Its value on a half-written response (the prefix
    baseline) says little about the finished one: that is the point of this reward.

    Args:
        min_words: the fewest words (whitespace-separated) that count as in the window.
        max_words: the most words that count as in the window.
        slack: words outside the window over which the length score falls by a factor e.
        unfinished: the factor for a response that does not end on a finished sentence, in
            [0, 1] (0: such a response scores 0).

    Raises:
        ConfigError: a bound is not a positive number, min_words > max_words, slack <= 0, or
            unfinished outside [0, 1].
    """

    def __init__(
        self,
        min_words: int = 25,
        max_words: int = 35,
        slack: float = 10.0,
        unfinished: float = 0.5,
    ) -> None:
        for name, v in (("min_words", min_words), ("max_words", max_words)):
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ConfigError(f"ending reward: {name} must be a positive number, got {v!r}")
        if min_words > max_words:
            raise ConfigError(
                f"ending reward: min_words ({min_words}) must not exceed max_words ({max_words})"
            )
        if not (isinstance(slack, int | float) and math.isfinite(slack) and slack > 0):
            raise ConfigError(f"ending reward: slack must be a positive number, got {slack!r}")
        if not (isinstance(unfinished, int | float) and 0.0 <= unfinished <= 1.0):
            raise ConfigError(f"ending reward: unfinished must be in [0, 1], got {unfinished!r}")
        self.min_words, self.max_words = min_words, max_words
        self.slack, self.unfinished = float(slack), float(unfinished)
        self.description = _describe(
            "ending",
            {"min_words": min_words, "max_words": max_words, "slack": self.slack,
             "unfinished": self.unfinished},
        )

    def score(self, completion: str) -> float:
        """The reward of one completion (see the class docstring)."""
        n = len(completion.split())
        distance = max(0.0, self.min_words - n, n - self.max_words)
        length_score = math.exp(-distance / self.slack)
        return length_score * (1.0 if ends_on_sentence(completion) else self.unfinished)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [self.score(c) for c in completions]


class RegexReward:
    """1.0 when the pattern occurs in the completion (mode=any), or its number of matches."""

    def __init__(self, pattern: str = "", mode: str = "any", ignore_case: bool = False) -> None:
        if not pattern:
            raise ConfigError("regex reward: give a pattern, e.g. regex:pattern=\"\\bthanks\\b\"")
        if mode not in ("any", "count"):
            raise ConfigError(f"regex reward: mode must be 'any' or 'count', got {mode!r}")
        try:
            self._re = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        except re.error as exc:
            raise ConfigError(f"regex reward: bad pattern {pattern!r}: {exc}") from exc
        self.mode = mode
        self.description = _describe(
            "regex", {"pattern": pattern, "mode": mode, "ignore_case": ignore_case}
        )

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if self.mode == "count":
            return [float(len(self._re.findall(c))) for c in completions]
        return [1.0 if self._re.search(c) else 0.0 for c in completions]


class KeywordReward(RegexReward):
    """Keywords (separated by '|') as whole words, case-insensitive unless case_sensitive."""

    def __init__(self, words: str = "", mode: str = "any", case_sensitive: bool = False) -> None:
        items = [w.strip() for w in str(words).split("|") if w.strip()]
        if not items:
            raise ConfigError("keyword reward: give words, e.g. keyword:words=great|love")
        pattern = r"\b(?:" + "|".join(re.escape(w) for w in items) + r")\b"
        super().__init__(pattern, mode=mode, ignore_case=not case_sensitive)
        self.description = _describe(
            "keyword", {"words": "|".join(items), "mode": mode, "case_sensitive": case_sensitive}
        )


class HFReward:
    """A Hugging Face sequence-classification model as a reward (e.g. an OpenAssistant
    DeBERTa reward model), scoring the pair (user prompt, completion).

    With one output label the reward is its logit; with several, the probability of `label`
    (default: the last). The prompt passed to the model is the last user turn when the prompt
    text is a rendered ChatML or Llama-3 chat, else the whole prompt text.
    Weights load from safetensors unless safetensors=false (then transformers' weights-only
    torch.load is used).
    """

    def __init__(
        self,
        path: str = "",
        device: str = "cpu",
        batch_size: int = 16,
        max_length: int = 512,
        label: int = -1,
        use_prompt: bool = True,
        safetensors: bool = True,
    ) -> None:
        if not path:
            raise ConfigError("hf reward: give a model name or path, e.g. hf:./my-reward-model")
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as exc:
            raise RewardError("the hf reward needs torch and transformers installed") from exc
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, use_safetensors=safetensors
            )
        except Exception as exc:  # transformers raises OSError/ValueError/... for bad paths
            raise RewardError(
                f"cannot load the reward model {path!r} ({type(exc).__name__}: {exc}). "
                "Give a local directory or a model already in the Hugging Face cache; "
                "nothing is downloaded when offline."
            ) from exc
        self.model.to(device).eval()
        self._torch = torch
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        self.label, self.use_prompt = label, use_prompt
        self.description = _describe(
            "hf",
            {
                "path": path, "device": device, "batch_size": batch_size,
                "max_length": max_length, "label": label, "use_prompt": use_prompt,
                "safetensors": safetensors,
            },
        )

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        torch = self._torch
        out: list[float] = []
        for i in range(0, len(completions), self.batch_size):
            comps = list(completions[i : i + self.batch_size])
            if self.use_prompt:
                users = [_last_user_turn(p) for p in prompts[i : i + self.batch_size]]
                enc = self.tokenizer(
                    users, comps, truncation=True, max_length=self.max_length,
                    padding=True, return_tensors="pt",
                )
            else:
                enc = self.tokenizer(
                    comps, truncation=True, max_length=self.max_length,
                    padding=True, return_tensors="pt",
                )
            with torch.no_grad():
                logits = self.model(**enc.to(self.device)).logits.float()  # (B, labels)
            if logits.shape[-1] == 1:
                out += logits[:, 0].tolist()
            else:
                out += logits.softmax(-1)[:, self.label].tolist()
        return out


_CHAT_USER = [
    re.compile(r"<\|im_start\|>user\n(.*?)(?:<\|im_end\|>|$)", re.S),  # ChatML (SmolLM2, Qwen)
    re.compile(r"<\|start_header_id\|>user<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|$)", re.S),
]


def _last_user_turn(prompt_text: str) -> str:
    for pattern in _CHAT_USER:
        turns = pattern.findall(prompt_text)
        if turns:
            return turns[-1].strip()
    return prompt_text


class WeightedReward:
    """sum_i w_i * reward_i; each part is checked on its own, so errors name the part."""

    def __init__(self, terms: Sequence[tuple[float, Reward]]) -> None:
        if not terms:
            raise ConfigError("a weighted reward needs at least one term")
        self.terms = list(terms)
        self.description = "+".join(f"{_fmt(w)}*{r.description}" for w, r in self.terms)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        total = [0.0] * len(completions)
        for weight, reward in self.terms:
            for i, v in enumerate(compute_rewards(reward, prompts, completions)):
                total[i] += weight * v
        return total


# -- the registry and spec parser -----------------------------------------------------------------

# name -> (factory, name of the positional parameter or None)
_REGISTRY: dict[str, tuple[Callable[..., Reward], str | None]] = {}

# Rewards whose module registers them when first imported: a spec naming one imports it, so
# `build_reward("judge:...")` works without importing estimators.judge (and openai) up front.
_LAZY: dict[str, str] = {"judge": "estimators.judge"}


def register_reward(
    name: str, factory: Callable[..., Reward], *, positional: str | None = None
) -> None:
    """Make `name[:k=v,...]` build `factory(**params)` in spec strings.

    Args:
        name: lower-case identifier used in specs.
        factory: callable returning a Reward; its keyword defaults set how values are parsed
            (bool, int, float, else str).
        positional: the parameter a value without `key=` is given to.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ConfigError(f"reward names are lower-case identifiers, got {name!r}")
    _REGISTRY[name] = (factory, positional)


def available_rewards() -> list[str]:
    """The registered reward names (including those registered on first use)."""
    return sorted(set(_REGISTRY) | set(_LAZY))


def _python_reward(factory: str = "", **params: Any) -> Reward:
    module_name, _, attr = factory.rpartition(".")
    if not module_name:
        raise ConfigError(f"py reward: give module.factory, got {factory!r}")
    try:
        make = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"py reward: cannot import {factory!r}: {exc}") from exc
    reward = make(**params)
    if not hasattr(reward, "description"):
        # Keep the spec rebuildable even when the user's object has no description.
        with contextlib.suppress(AttributeError):
            reward.description = _describe("py", {"factory": factory, **params})
    return reward


register_reward("vader", VaderReward)
register_reward("length", LengthReward, positional="target")
register_reward("ending", EndingReward)
register_reward("regex", RegexReward, positional="pattern")
register_reward("keyword", KeywordReward, positional="words")
register_reward("hf", HFReward, positional="path")
register_reward("py", _python_reward, positional="factory")

_WEIGHT = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE]-?\d+)?)\s*\*\s*(.*)$", re.S)


def build_reward(spec: str) -> Reward:
    """Build a reward from a spec string (see the module docstring).

    Raises:
        ConfigError: the spec does not parse, names an unknown reward, or has bad parameters.
        RewardError: the reward could not be set up (a missing package or model).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("empty reward spec; try 'vader' or 'length:target=50'")
    terms = _split_outside_quotes(spec.strip(), "+")
    if len(terms) == 1 and not _WEIGHT.match(terms[0]):
        return _build_term(terms[0])
    built: list[tuple[float, Reward]] = []
    for term in terms:
        match = _WEIGHT.match(term)
        weight, body = (float(match.group(1)), match.group(2)) if match else (1.0, term)
        built.append((weight, _build_term(body)))
    return WeightedReward(built)


def _build_term(term: str) -> Reward:
    name, _, rest = term.strip().partition(":")
    name = name.strip().lower()
    if name not in _REGISTRY and name in _LAZY:
        importlib.import_module(_LAZY[name])  # registers `name`
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown reward {name!r} in {term!r}; known: {', '.join(available_rewards())}"
        )
    factory, positional = _REGISTRY[name]
    params: dict[str, str] = {}
    for part in _split_outside_quotes(rest, ",") if rest.strip() else []:
        key, eq, value = part.partition("=")
        if not eq or _is_quoted(key.strip()):
            if positional is None:
                raise ConfigError(f"reward {name!r} takes key=value parameters, got {part!r}")
            key, value = positional, part
        params[key.strip()] = _unquote(value.strip())
    kwargs = _coerce(factory, name, params)
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for reward {name!r}: {exc}") from exc


def _coerce(factory: Callable[..., Any], name: str, params: dict[str, str]) -> dict[str, Any]:
    """Parse each value by the type of the factory's default for that parameter."""
    sig = inspect.signature(factory)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    out: dict[str, Any] = {}
    for key, raw in params.items():
        param = sig.parameters.get(key)
        if param is None and not accepts_any:
            known = [k for k, p in sig.parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
            raise ConfigError(f"reward {name!r} has no parameter {key!r}; it takes {known}")
        default = param.default if param is not None else None
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(f"expected true/false, got {raw!r}")
                out[key] = raw.lower() in ("true", "1", "yes")
            elif isinstance(default, int):
                out[key] = float(raw) if "." in raw else int(raw)
            elif isinstance(default, float):
                out[key] = float(raw)
            elif param is None:  # a **kwargs factory: guess the type from the text
                out[key] = _guess(raw)
            else:
                out[key] = raw
        except ValueError as exc:
            raise ConfigError(f"reward {name!r}, parameter {key!r}: {exc}") from exc
    return out


def _guess(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, buf, quote = [], [], None
    for ch in text:
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            buf.append(ch)
        elif ch == sep:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    if quote:
        raise ConfigError(f"unclosed quote in reward spec {text!r}")
    parts.append("".join(buf))
    if any(not p.strip() for p in parts):
        raise ConfigError(f"empty part around {sep!r} in reward spec {text!r}")
    return parts


def _is_quoted(text: str) -> bool:
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'"


def _unquote(text: str) -> str:
    return text[1:-1] if _is_quoted(text) else text


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    if any(ch in text for ch in ",+\"'=") or text != text.strip():
        quote = "'" if '"' in text else '"'
        return f"{quote}{text}{quote}"
    return text


def _describe(name: str, params: dict[str, Any]) -> str:
    """The spec string that rebuilds a reward: name:key=value,..."""
    if not params:
        return name
    return name + ":" + ",".join(f"{k}={_fmt(v)}" for k, v in params.items())
