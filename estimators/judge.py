"""An LLM judge as a reward: the probability that a model answers "yes" to a question about the
finished response, asked through any OpenAI-compatible API.

For each (prompt text, completion) the judge makes one call with max_tokens=1 and the top k
logprobs of the answer's first token, and scores

    reward = P(yes) / (P(yes) + P(no))

where P(yes) sums the probabilities of the yes-variants found in the top k (" Yes", "Yes",
"YES", "yes", ... : a token counts when, stripped of spaces and BPE space marks, it equals a
yes-word case-insensitively), P(no) likewise. When neither appears the reward is 0.5 and the
answer is counted as undecided. An answer whose top k holds only one side scores 0 or 1: the
other side's mass is below the k-th candidate and is taken as 0.

Every call is metered: `judge.usage` is a `JudgeUsage` (calls, prompt and completion tokens
billed, undecided answers, seconds spent), and `judge.reset_usage()` returns it and starts a new
count, so a benchmark can put the judge's cost next to the generator's.

Spec strings (registered as ``judge``; the first unnamed value is the question)::

    judge:question="Does this review recommend the product? Answer Yes or No."
    judge:question="...",base_url=http://127.0.0.1:8080/v1,model=NAME,top_logprobs=20

Without base_url the judge starts the embedded local server (`vas_api.local.LocalServer`,
SmolLM2-135M-Instruct) on its first call and stops it at `close()` or exit. The API key for a
base_url comes from $VAS_JUDGE_API_KEY, else $OPENAI_API_KEY, else a dummy (local servers take
any); it is never part of the description.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from vas_api.errors import ConfigError, RewardError

from .rewards import _describe, _last_user_turn, register_reward

__all__ = ["DEFAULT_TEMPLATE", "JudgeUsage", "JudgeReward", "answer_distribution", "top_candidates"]

DEFAULT_TEMPLATE = "Request: {prompt}\n\nResponse: {response}\n\n{question}"
"""The judge's user message; {prompt} is the last user turn of the prompt, {response} the
completion, {question} the yes/no question."""

_ENDPOINTS = ("chat", "completions")
_SENTINEL = -9999.0  # OpenAI's logprob for "not in the top k"


@dataclass(frozen=True)
class JudgeUsage:
    """What a judge has spent since it was built or last reset.

    Attributes:
        calls: API calls made (one per judged text, failed ones included).
        prompt_tokens: prompt tokens billed, summed over the calls that reported usage.
        completion_tokens: completion tokens billed, likewise.
        failed: calls that raised (their tokens are unknown and not counted).
        unmetered: answered calls whose reply carried no usage.
        undecided: answers with neither a yes nor a no in the top k (scored 0.5).
        seconds: wall-clock time spent in calls, summed (concurrent calls overlap).
    """

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: int = 0
    unmetered: int = 0
    undecided: int = 0
    seconds: float = 0.0

    @property
    def total_tokens(self) -> int:
        """prompt_tokens + completion_tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: JudgeUsage) -> JudgeUsage:
        return JudgeUsage(
            *(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__)
        )


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """`obj.name` for SDK objects, `obj[name]` for plain JSON."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def top_candidates(logprobs: Any) -> list[tuple[str, float]]:
    """The (token, logprob) candidates of the first answer position, from either wire shape.

    Args:
        logprobs: a choice's ``logprobs``: the chat shape (``content: [{token, logprob,
            top_logprobs: [{token, logprob}]}]``, the one `vas_api.local.LocalServer` also adds
            to completions) or the legacy one (``tokens``, ``token_logprobs``, ``top_logprobs:
            [{token: logprob}]``); an SDK object or a dict.

    Returns:
        The candidates, sentinel (-9999) and non-finite logprobs dropped; the sampled token is
        added when the top list does not name it. Empty when the payload holds no position.
    """
    pairs: list[tuple[str, float]] = []
    sampled: tuple[str, float] | None = None
    content = _get(logprobs, "content")
    if content:
        first = content[0]
        pairs = [(str(_get(c, "token", "")), _get(c, "logprob")) for c in _get(first, "top_logprobs") or []]
        sampled = (str(_get(first, "token", "")), _get(first, "logprob"))
    else:
        tops = _get(logprobs, "top_logprobs") or []
        if tops and isinstance(tops[0], Mapping):
            pairs = list(tops[0].items())
        tokens, values = _get(logprobs, "tokens") or [], _get(logprobs, "token_logprobs") or []
        if tokens and values:
            sampled = (str(tokens[0]), values[0])
    if sampled is not None and sampled[0] not in {t for t, _ in pairs}:
        pairs.append(sampled)
    out = []
    for token, lp in pairs:
        if isinstance(lp, int | float) and math.isfinite(lp) and lp > _SENTINEL:
            out.append((token, float(lp)))
    return out


def _norm(token: str) -> str:
    # "Ġ" and "▁" are the space marks of byte-level BPE and SentencePiece vocabularies, which
    # some servers report raw.
    return token.strip().lstrip("\u0120\u2581").strip().casefold()


def answer_distribution(
    candidates: Iterable[tuple[str, float]], yes: Iterable[str] = ("yes",), no: Iterable[str] = ("no",)
) -> tuple[float, float]:
    """(P(yes), P(no)): the probability summed over the candidates that spell each answer.

    Args:
        candidates: (token, logprob) pairs (`top_candidates`).
        yes, no: the answer words; matched case-insensitively, ignoring surrounding spaces.
    """
    yes_words = {w.casefold() for w in yes}
    no_words = {w.casefold() for w in no}
    p_yes = p_no = 0.0
    for token, lp in candidates:
        word = _norm(token)
        if word in yes_words:
            p_yes += math.exp(lp)
        elif word in no_words:
            p_no += math.exp(lp)
    return p_yes, p_no


def _words(value: str | Sequence[str], name: str) -> tuple[str, ...]:
    items = value.split("|") if isinstance(value, str) else list(value)
    words = tuple(w.strip() for w in items if w.strip())
    if not words:
        raise ConfigError(f"judge reward: {name} needs at least one answer word, e.g. {name}=yes")
    return words


class JudgeReward:
    """An LLM judge's P(yes) to a yes/no question about the finished response (module docstring).

    Args:
        client_or_base_url: an ``openai.OpenAI`` client, a base URL (``http://HOST:PORT/v1``),
            or None for the embedded local server (started on the first call).
        model: the judge model's name; default for the embedded server: its model alias.
        question: the yes/no question, e.g. "Does this review recommend the product to others?
            Answer Yes or No."
        template: the user message; must contain {response} and {question} (and may contain
            {prompt}: the last user turn of the judged prompt).
        system: a system message for the judge ("" sends none, so the server's template adds
            its default one).
        endpoint: "chat" (chat.completions with logprobs=True, top_logprobs=k) or "completions"
            (the legacy endpoint with logprobs=k; the messages are rendered with
            `chat_template`).
        chat_template: for endpoint="completions": a GGUF path, a Jinja string or a Hugging Face
            tokenizer name (`vas_api.chat_template.load_chat_template`); default for the
            embedded server: its GGUF's template.
        top_logprobs: k, how many candidates of the answer token to read (OpenAI allows 20).
        yes, no: the answer words ("|"-separated in a string).
        max_workers: concurrent calls per batch (1: one after another).
        timeout: seconds per call before the client gives up.
        max_retries: the openai client's retries for a client built from a URL (the only
            retry layer).

    Attributes:
        usage: a `JudgeUsage` snapshot of what was spent since the last `reset_usage()`.
        description: the spec that rebuilds this judge.

    Raises:
        ConfigError: an empty question, a template without {response} or {question}, an unknown
            endpoint, k < 1, equal yes and no words, max_workers < 1, or a client that is none
            of the above; all before any call.
    """

    def __init__(
        self,
        client_or_base_url: Any = None,
        model: str = "",
        question: str = "",
        *,
        template: str = DEFAULT_TEMPLATE,
        system: str = "",
        endpoint: str = "chat",
        chat_template: Any = None,
        top_logprobs: int = 20,
        yes: str | Sequence[str] = "yes",
        no: str | Sequence[str] = "no",
        max_workers: int = 1,
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        if not isinstance(question, str) or not question.strip():
            raise ConfigError(
                'judge reward: give a yes/no question, e.g. judge:question="Is the response polite? '
                'Answer Yes or No."'
            )
        for field in ("{response}", "{question}"):
            if field not in template:
                raise ConfigError(f"judge reward: the template must contain {field}, got {template!r}")
        try:
            template.format(prompt="", response="", question="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"judge reward: the template may only use {{prompt}}, {{response}} and {{question}} "
                f"(write literal braces as {{{{ }}}}): {exc!r}"
            ) from exc
        if endpoint not in _ENDPOINTS:
            raise ConfigError(f"judge reward: endpoint must be one of {_ENDPOINTS}, got {endpoint!r}")
        if not (isinstance(top_logprobs, int) and top_logprobs >= 1):
            raise ConfigError(f"judge reward: top_logprobs must be a positive integer, got {top_logprobs!r}")
        if not (isinstance(max_workers, int) and max_workers >= 1):
            raise ConfigError(f"judge reward: max_workers must be a positive integer, got {max_workers!r}")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ConfigError(f"judge reward: timeout must be a positive number, got {timeout!r}")
        self.yes, self.no = _words(yes, "yes"), _words(no, "no")
        if {w.casefold() for w in self.yes} & {w.casefold() for w in self.no}:
            raise ConfigError(f"judge reward: a word cannot be both a yes {self.yes} and a no {self.no}")
        self.question, self.template, self.system = question.strip(), template, system
        self.endpoint, self.top_logprobs = endpoint, top_logprobs
        self.max_workers, self.timeout, self.max_retries = max_workers, float(timeout), max_retries
        self._chat_template_spec = chat_template
        self._chat_template: Any = None
        self._server: Any = None  # the embedded LocalServer, when this judge started one
        self._client: Any = None
        self.base_url = ""
        self.model = model
        if client_or_base_url is None:
            self._embedded = True
        elif isinstance(client_or_base_url, str):
            if not client_or_base_url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"judge reward: base_url must be an http(s) URL such as http://127.0.0.1:8080/v1, "
                    f"got {client_or_base_url!r}"
                )
            self._embedded = False
            self.base_url = client_or_base_url.rstrip("/")
        else:
            import openai

            if not isinstance(client_or_base_url, openai.OpenAI):
                raise ConfigError(
                    "judge reward: pass an openai.OpenAI client, a base URL, or None for the local "
                    f"server; got {type(client_or_base_url).__name__}"
                )
            self._embedded = False
            self._client = client_or_base_url
            self.base_url = str(client_or_base_url.base_url).rstrip("/")
        if not self._embedded and not model:
            raise ConfigError("judge reward: give the judge's model name (model=...) for a base_url")
        self._lock = threading.Lock()
        self._usage = JudgeUsage()
        self.description = self._describe()

    # -- spending -------------------------------------------------------------------------------

    @property
    def usage(self) -> JudgeUsage:
        """What was spent since the judge was built or last reset (a snapshot)."""
        with self._lock:
            return self._usage

    def reset_usage(self) -> JudgeUsage:
        """Return what was spent so far and start counting from zero."""
        with self._lock:
            spent, self._usage = self._usage, JudgeUsage()
            return spent

    def _add(self, **counts: Any) -> None:
        with self._lock:
            self._usage = replace(
                self._usage, **{k: getattr(self._usage, k) + v for k, v in counts.items()}
            )

    # -- scoring --------------------------------------------------------------------------------

    def messages(self, prompt_text: str, completion: str) -> list[dict[str, str]]:
        """The chat messages the judge is sent for one (prompt text, completion)."""
        user = self.template.format(
            prompt=_last_user_turn(prompt_text), response=completion, question=self.question
        )
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": user}]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """P(yes) for each (prompt text, completion), in [0, 1].

        Raises:
            RewardError: a call failed, or the server returned no logprobs.
        """
        if len(prompts) != len(completions):
            raise RewardError(f"judge: {len(prompts)} prompts for {len(completions)} completions")
        if not completions:
            return []
        client = self._ensure_client()
        jobs = list(zip(prompts, completions, strict=True))
        if self.max_workers == 1 or len(jobs) == 1:
            return [self._judge_one(client, p, c) for p, c in jobs]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(jobs))) as pool:
            return list(pool.map(lambda job: self._judge_one(client, *job), jobs))

    def _judge_one(self, client: Any, prompt_text: str, completion: str) -> float:
        import openai

        messages = self.messages(prompt_text, completion)
        start = time.perf_counter()
        try:
            if self.endpoint == "chat":
                reply = client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=1,
                    logprobs=True, top_logprobs=self.top_logprobs,
                )
            else:
                reply = client.completions.create(
                    model=self.model, prompt=self._render(messages), max_tokens=1,
                    logprobs=self.top_logprobs,
                )
        except openai.OpenAIError as exc:
            self._add(calls=1, failed=1, seconds=time.perf_counter() - start)
            hint = " (does this server support logprobs?)" if "logprob" in str(exc).lower() else ""
            raise RewardError(
                f"judge call to {self._where()} failed{hint}: {type(exc).__name__}: {exc}"
            ) from exc
        usage = _get(reply, "usage")
        self._add(
            calls=1, seconds=time.perf_counter() - start,
            prompt_tokens=int(_get(usage, "prompt_tokens", 0) or 0) if usage else 0,
            completion_tokens=int(_get(usage, "completion_tokens", 0) or 0) if usage else 0,
            unmetered=0 if usage else 1,
        )
        choices = _get(reply, "choices") or []
        logprobs = _get(choices[0], "logprobs") if choices else None
        candidates = top_candidates(logprobs) if logprobs is not None else []
        if not candidates:
            raise RewardError(
                f"judge: {self._where()} returned no logprobs for model {self.model!r}; the judge "
                f"needs the top-k logprobs of the answer ({self._ask()}). Use a server or model "
                "that returns them (vLLM, llama.cpp, OpenAI models without reasoning)."
            )
        p_yes, p_no = answer_distribution(candidates, self.yes, self.no)
        if p_yes + p_no <= 0.0:
            self._add(undecided=1)
            return 0.5
        return p_yes / (p_yes + p_no)

    # -- plumbing -------------------------------------------------------------------------------

    def _ask(self) -> str:
        if self.endpoint == "chat":
            return f"chat.completions with logprobs=true, top_logprobs={self.top_logprobs}"
        return f"completions with logprobs={self.top_logprobs}"

    def _where(self) -> str:
        return self.base_url or "the embedded local server"

    def _ensure_client(self) -> Any:
        with self._lock:
            if self._client is not None:
                return self._client
            import openai

            if self._embedded:
                from vas_api.local import LocalServer

                server = LocalServer()
                try:
                    server.start()
                except Exception as exc:
                    raise RewardError(f"judge: the embedded local server cannot start: {exc}") from exc
                self._server = server
                self.base_url = ""
                self.model = self.model or server.model
                self._client = server.client(max_retries=self.max_retries, timeout=self.timeout)
            else:
                key = os.environ.get("VAS_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "sk-local"
                self._client = openai.OpenAI(
                    base_url=self.base_url, api_key=key, max_retries=self.max_retries,
                    timeout=self.timeout,
                )
            return self._client

    def _render(self, messages: list[dict[str, str]]) -> str:
        if self._chat_template is None:
            from vas_api.chat_template import load_chat_template

            spec = self._chat_template_spec
            if spec is None and self._server is not None:
                spec = str(self._server.gguf_path)
            if spec is None:
                raise ConfigError(
                    "judge reward: endpoint=completions needs chat_template= (a GGUF path, a Jinja "
                    "string or a tokenizer name) to render the judge's messages"
                )
            self._chat_template = load_chat_template(spec)
        return self._chat_template.render(messages, add_generation_prompt=True)

    def _describe(self) -> str:
        params: dict[str, Any] = {"question": self.question}
        if not self._embedded:
            params["base_url"] = self.base_url
        if self.model:
            params["model"] = self.model
        if self.template != DEFAULT_TEMPLATE:
            params["template"] = self.template
        if self.system:
            params["system"] = self.system
        if self.endpoint != "chat":
            params["endpoint"] = self.endpoint
            if isinstance(self._chat_template_spec, str):
                params["chat_template"] = self._chat_template_spec
        params["top_logprobs"] = self.top_logprobs
        if self.yes != ("yes",):
            params["yes"] = "|".join(self.yes)
        if self.no != ("no",):
            params["no"] = "|".join(self.no)
        return _describe("judge", params)

    def close(self) -> None:
        """Stop the embedded server if this judge started one (a later call starts it again)."""
        with self._lock:
            server, self._server = self._server, None
            if server is not None:
                self._client.close()
                self._client = None
                server.stop()

    def __enter__(self) -> JudgeReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"JudgeReward({self.description!r})"


def _judge_from_spec(
    question: str = "",
    base_url: str = "",
    model: str = "",
    template: str = DEFAULT_TEMPLATE,
    system: str = "",
    endpoint: str = "chat",
    chat_template: str = "",
    top_logprobs: int = 20,
    yes: str = "yes",
    no: str = "no",
    max_workers: int = 1,
    timeout: float = 60.0,
) -> JudgeReward:
    """The ``judge:`` spec factory (an empty base_url: the embedded local server)."""
    return JudgeReward(
        base_url or None, model, question, template=template.replace("\\n", "\n"), system=system,
        endpoint=endpoint, chat_template=chat_template or None, top_logprobs=top_logprobs,
        yes=yes, no=no, max_workers=max_workers, timeout=timeout,
    )


register_reward("judge", _judge_from_spec, positional="question")
