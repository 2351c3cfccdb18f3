"""Plain data types shared by providers, the sampler, the client and the estimators.

Provider token ids never leave a provider adapter: everything here is text (or raw bytes for
tokens that are not complete UTF-8 on their own), so any provider works with any value model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "Candidate",
    "Position",
    "Usage",
    "Draft",
    "Completion",
    "Samples",
    "Prefix",
    "Prompt",
    "ProviderProfile",
    "PROFILE_SCHEMA",
    "Continuation",
    "Provider",
    "AsyncProvider",
    "ValueFunction",
    "PromptAwareValueFunction",
    "END_OF_TEXT",
]

END_OF_TEXT = "\uffff"
"""Marks "the response ended here" at the end of a text given to a value function.

A finished response (the base chose end of sequence, or a whole response / block came back
with finish_reason "stop") is scored as ``prompt + response + END_OF_TEXT``; an unfinished one
as ``prompt + response``. U+FFFF is a Unicode noncharacter, so it never occurs in real text
(undecodable bytes become U+FFFD, not this). Only value functions whose `scores_end_of_text`
is True are ever given it (`vas_api.value_binding.text_for`); every other one sees the text
without it, i.e. V(s) for "stop here", as before the marker existed.
"""

Prompt = str | list[dict[str, Any]]
"""A raw completion prompt, or a list of OpenAI-style chat messages."""

Continuation = Literal["completions", "chat_continue", "prefix", "prefill", "none"]
"""How a provider continues a partial response:
- "completions": a raw-text /v1/completions endpoint (chat is rendered with the chat template);
- "chat_continue": chat with continue_final_message=true, add_generation_prompt=false (vLLM, SGLang, TGI);
- "prefix": a final assistant message with prefix=true (DeepSeek, Mistral);
- "prefill": a final assistant message is continued (Anthropic up to the 4.5 models);
- "none": a trailing assistant message starts a new turn (OpenAI hosted chat, Anthropic 4.6+).
"""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One next-token candidate as the provider reported it.

    Attributes:
        raw: the token's bytes; may be an incomplete UTF-8 sequence (part of a multi-byte char).
        logprob: natural-log probability under the base model (at the server's temperature 1).
        special: an end-of-sequence or other control token; choosing it ends the response.
        id: the provider's token id, when the server reported one (llama.cpp's server does);
            lets a continuation be sent as token ids instead of re-tokenized text.
    """

    raw: bytes
    logprob: float
    special: bool = False
    id: int | None = None

    @property
    def text(self) -> str | None:
        """The token as text, or None when its bytes are not complete UTF-8 on their own."""
        try:
            return self.raw.decode("utf-8")
        except UnicodeDecodeError:
            return None

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


@dataclass(frozen=True, slots=True)
class Position:
    """One generated position.

    Attributes:
        candidates: the top-k candidates, merged by identical bytes (logsumexp), sentinel
            values dropped, sorted by logprob, highest first. May hold fewer than k.
        sampled: the token the server actually sampled here, with its own logprob; it may lie
            outside `candidates`. None when the response did not say.
    """

    candidates: tuple[Candidate, ...]
    sampled: Candidate | None = None

    def find(self, raw: bytes) -> Candidate | None:
        """The candidate with these bytes, if any."""
        for c in self.candidates:
            if c.raw == raw:
                return c
        return None


@dataclass(slots=True)
class Usage:
    """Billed tokens of one or more API calls.

    Attributes:
        prompt_tokens: every prompt token, cached or not.
        completion_tokens: generated tokens.
        cached_tokens: prompt tokens read from the provider's prompt cache.
        calls: API calls.
        cache_write_tokens: prompt tokens written to the provider's prompt cache (Anthropic's
            cache_creation_input_tokens; billed above the plain input price).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    calls: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.calls + other.calls,
            self.cache_write_tokens + other.cache_write_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Draft:
    """What one logprob call returned: one Position per generated token, in order.

    A candidates call is a draft of length 1. When the server stopped at an end-of-sequence
    token it may or may not report that position; `finish_reason == "stop"` says it stopped.
    `excluded` holds token ids the draft was not allowed to sample (a logit_bias that left the
    reported logprobs as they were): a top-k draft then samples from the top k minus these.
    """

    positions: list[Position]
    finish_reason: str | None
    usage: Usage
    excluded: frozenset[int] = frozenset()

    @property
    def raw(self) -> bytes:
        """The sampled tokens joined as bytes (partial UTF-8 tokens join up here)."""
        return b"".join(p.sampled.raw for p in self.positions if p.sampled and not p.sampled.special)

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", errors="replace")


@dataclass(slots=True)
class Completion:
    """One plainly sampled completion (for data collection and Best-of-N)."""

    text: str
    finish_reason: str | None


@dataclass(slots=True)
class Samples:
    """The completions of one sampling request, with the usage of all calls it took."""

    completions: list[Completion]
    usage: Usage


@dataclass(frozen=True, slots=True)
class Prefix:
    """Where generation stands: the user's prompt and the assistant text produced so far.

    Attributes:
        prompt: the user's prompt (a string or chat messages).
        response: the assistant text produced so far.
        response_ids: the provider token ids of `response`, in order, when every committed
            token came with an id; None when unknown (the response is then sent as text).
    """

    prompt: Prompt
    response: str = ""
    response_ids: tuple[int, ...] | None = None


PROFILE_SCHEMA = 2
"""Version of `ProviderProfile`'s fields; a cached profile of another version is re-probed."""


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    """What an endpoint can do; probed once per (base URL, model) and cached.

    Attributes:
        name: a short human name ("llama.cpp server", "vLLM", "OpenAI chat", ...).
        max_top_k: the largest k the endpoint returns; None when no cap was found.
        logprob_shape: "legacy" (``tokens``/``top_logprobs`` dicts), "chat" (a ``content``
            list with bytes; llama.cpp's server answers /v1/completions in this shape too) or
            "none". The parser tells the shapes apart by their fields either way.
        continuation: how a partial response is continued (see `Continuation`).
        top_k_param: the server honours a top_k sampling parameter (checked with a test that
            has power, see `vas_api.profiles.top_k_evidence`), so drafts can be limited to the
            top k candidates (every drafted token is then a candidate).
        n_param: one call can return n > 1 completions.
        price_prompt: USD per million prompt tokens (0 for a local server).
        price_completion: USD per million completion tokens.
        family: the server family's key in `vas_api.families.FAMILIES` ("llama.cpp",
            "llama-cpp-python", "vllm", "sglang", "tgi", "ollama", "lmstudio", "openai",
            "unknown"); it decides the neutral sampler parameters sent with every request.
        completions: string prompts may use /v1/completions even when chat messages go to chat.
        max_tokens_param: the request field for the token limit ("max_completion_tokens" for
            OpenAI chat).
        min_tokens_for_eos: candidates calls send min_tokens=1 (llama-cpp-python drops the
            position of a sampled end-of-sequence otherwise).
        special_tokens: control-token strings of the model (end-of-turn etc.).
        eos_token_ids: token ids that end the response, where the server says (llama.cpp's
            /props, the GGUF metadata); with reported ids they tell EOS from byte fragments.
        exact_logprobs: the server is vas-api's exact llama-cpp-python reporter.
        token_id_prompts: /v1/completions takes the prompt as a list of token ids. Where the
            logprobs also carry ids (llama-server; the exact local server, which takes id
            prompts whatever this says) partial responses are continued with the ids the base
            produced instead of re-tokenized text; elsewhere (vLLM) they go as text.
        tokenize: the server has /tokenize and /detokenize.
        apply_template: the server has /apply-template (chat messages -> prompt text).
        neutral_sampling: every server-side sampler can be switched off, so drafts follow the
            reported logprobs (False for Ollama's /v1, which ignores its sampler options).
        anchor_token_id: a token with complete text that candidates calls force with
            logit_bias (llama-server: its id for "."). llama-server reports no position whose
            sampled token is a byte fragment (nor any logprobs when max_tokens=1 sampled one);
            forcing a whole token makes it report the position, and its logprobs still come
            from the raw logits, before the bias (checked against the unbiased call).
    """

    name: str
    max_top_k: int | None
    logprob_shape: Literal["legacy", "chat", "none"]
    continuation: Continuation
    top_k_param: bool = False
    n_param: bool = False
    price_prompt: float = 0.0
    price_completion: float = 0.0
    family: str = "unknown"
    completions: bool = False
    max_tokens_param: str = "max_tokens"
    min_tokens_for_eos: bool = False
    special_tokens: tuple[str, ...] = ()
    eos_token_ids: tuple[int, ...] = ()
    exact_logprobs: bool = False
    token_id_prompts: bool = False
    tokenize: bool = False
    apply_template: bool = False
    neutral_sampling: bool = True
    anchor_token_id: int | None = None

    def __post_init__(self) -> None:
        # JSON round trips give lists; keep the profile hashable and comparable.
        object.__setattr__(self, "special_tokens", tuple(str(t) for t in self.special_tokens))
        object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in self.eos_token_ids))

    @property
    def extra(self) -> dict[str, Any]:
        """Deprecated read-only view of the typed fields under their old ``extra`` key names
        (``sampler_dialect``, ``completions``, ``max_tokens_param``, ``min_tokens_for_eos``,
        ``family``, ``special_tokens``, ``exact_logprobs``); read the fields instead."""
        from .families import family as _family

        dialect = {"llama.cpp": "llama.cpp", "llama-cpp-python": "llama.cpp",
                   "vllm": "vllm", "sglang": "vllm"}.get(_family(self.family).key, "openai")
        return {
            "sampler_dialect": dialect, "completions": self.completions,
            "max_tokens_param": self.max_tokens_param,
            "min_tokens_for_eos": self.min_tokens_for_eos, "family": self.family,
            "special_tokens": list(self.special_tokens), "exact_logprobs": self.exact_logprobs,
        }

    def modes(self) -> list[str]:
        """The VAS modes this endpoint can run, best first."""
        can_continue = self.continuation != "none"
        has_logprobs = self.logprob_shape != "none"
        modes = []
        if can_continue and has_logprobs:
            # Drafts must be sampled from the reported distribution; a server that ignores its
            # sampler options (Ollama's /v1: top_k 40, min_p, repeat penalty) cannot draft
            # exactly, while token mode only reads the reported logprobs.
            modes += ["speculative", "token"] if self.neutral_sampling else ["token"]
        if can_continue:
            modes.append("block")
        modes.append("rerank")
        return modes

    def cost(self, usage: Usage) -> float:
        """USD billed for `usage` at this profile's prices."""
        return (
            usage.prompt_tokens * self.price_prompt
            + usage.completion_tokens * self.price_completion
        ) / 1e6


@runtime_checkable
class Provider(Protocol):
    """A synchronous base-model endpoint. One adapter module per provider family."""

    model: str
    profile: ProviderProfile

    def prompt_text(self, prompt: Prompt) -> str:
        """The exact text the base model continues for `prompt` (chat rendered by its template)."""
        ...

    def candidates(self, prefix: Prefix, *, k: int) -> Draft:
        """One call, max_tokens=1: the top-k next-token candidates after `prefix`."""
        ...

    def draft(self, prefix: Prefix, *, m: int, k: int, restrict_top_k: bool = False) -> Draft:
        """One call drafting m tokens at temperature 1, top_p 1, every other sampler neutral,
        with top-k logprobs and the sampled token's own logprob at every position.
        restrict_top_k=True also sends top_k=k (only when profile.top_k_param)."""
        ...

    def sample(
        self,
        prefix: Prefix,
        *,
        n: int,
        max_tokens: int,
        temperature: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Samples:
        """n plain completions from the base distribution (neutral server-side samplers)."""
        ...


@runtime_checkable
class AsyncProvider(Protocol):
    """The asyncio twin of `Provider`: same methods, awaited."""

    model: str
    profile: ProviderProfile

    def prompt_text(self, prompt: Prompt) -> str: ...

    async def candidates(self, prefix: Prefix, *, k: int) -> Draft: ...

    async def draft(
        self, prefix: Prefix, *, m: int, k: int, restrict_top_k: bool = False
    ) -> Draft: ...

    async def sample(
        self,
        prefix: Prefix,
        *,
        n: int,
        max_tokens: int,
        temperature: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Samples: ...


@runtime_checkable
class ValueFunction(Protocol):
    """Anything that scores text prefixes: a learned value model, a reward on the prefix, ...

    The required part: `values(texts)` and `score_candidates(prefix_text, candidate_texts)`,
    where a text is the prompt text followed by the response so far. A function with only these
    is given the *base's* rendered prompt, `provider.prompt_text(prompt)` (so it only fits bases
    that render prompts the way its training data did).

    A value function that travels across bases also has `render_prompt(prompt)`: its own
    canonical rendering of the prompt (`estimators.prompt_format`, recorded in its checkpoint).
    It is then always given that rendering followed by the response, and told where the prompt
    ends: `values(texts, prompt_lens=...)`, `score_candidates(..., prompt_len=...)` and, where
    it has one, `score_draft(..., prompt_len=...)` take the prompt's length in characters.
    `render_prompt` may return None (a checkpoint saved before prompt formats): the function
    is then treated as one without it. `vas_api.value_binding` does this for each request.

    Optional flag `scores_end_of_text` (default False when absent): the function tells a
    finished response from the same text as an unfinished prefix, so it is given texts that
    end with `END_OF_TEXT` for end-of-sequence candidates and finished responses (a value
    model trained with an end state, `estimators.value_model.ValueModelConfig.end_state`).
    """

    def values(self, texts: Sequence[str]) -> Sequence[float]:
        """V(text) for each text, shape (B,)."""
        ...

    def score_candidates(self, prefix_text: str, candidate_texts: Sequence[str]) -> Sequence[float]:
        """V(prefix_text + c) for each candidate c, shape (k,). Implementations may cache the
        committed prefix between calls."""
        ...


@runtime_checkable
class PromptAwareValueFunction(ValueFunction, Protocol):
    """A `ValueFunction` that renders prompts itself and is told where they end (see there)."""

    def render_prompt(self, prompt: Prompt) -> str | None:
        """Its own rendering of `prompt` (None: use the base's prompt text)."""
        ...

    def values(self, texts: Sequence[str], *, prompt_lens: Sequence[int] | None = None) -> Sequence[float]:
        """V(text) for each text; text i's prompt is its first prompt_lens[i] characters."""
        ...

    def score_candidates(
        self, prefix_text: str, candidate_texts: Sequence[str], *, prompt_len: int | None = None
    ) -> Sequence[float]:
        """V(prefix_text + c) for each c; prefix_text's prompt is its first prompt_len characters."""
        ...
