"""Block mode (DESIGN.md section 5): for endpoints that continue a partial response but return
no logprobs (Anthropic prefill, DeepSeek / Mistral prefix, any server with logprobs off).

Each step samples n candidate blocks of up to L tokens from the base after the current prefix
s (one call with n= where the endpoint takes it), and appends one drawn in proportion to

    w(b) = exp( sum_i beta_i * V_i(s + b) )

then continues from s + b. This is sequential importance resampling toward the same target as
token-level VAS (blocks come from the base, the weights tilt them by exp(beta * V); exact as n
grows). A block that ended at a stop string or end of sequence (finish_reason "stop") ends the
response; so does max_tokens.

    sampler = BlockSampler(settings, Prefix(prompt), prompt_text)
    while not sampler.done:
        call = sampler.next_request()    # SampleCall, then ScoreCall (when steered)
        sampler.feed(answer_to(call))    # Samples, then value scores

Token counts: a block that stopped for "length" holds exactly the tokens asked for; one that
ended at "stop" ends the response, so its length does not matter for max_tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, ProviderError
from ..types import Prefix, Prompt, Samples
from .core import ScoreCall, Scores, Step, _SamplerBase, finished_texts
from .rerank import RerankSampler, SampleCall, chatml_text, effective_sample_size, resampling_probs
from .settings import SamplerSettings
from .target import value_shift

__all__ = ["BlockSampler", "sequence_sampler", "value_prompt_text"]


def sequence_sampler(
    mode: str, settings: SamplerSettings, prefix: Prefix, prompt_text: str
) -> BlockSampler | RerankSampler:
    """The sampler of block or rerank mode for one choice (the client's mode dispatch).

    Raises:
        ConfigError: top_p other than 1 (these modes sample whole blocks from the base, so
            there is no per-token distribution to cut).
    """
    if settings.top_p != 1.0:
        raise ConfigError(
            f"top_p = {settings.top_p} cannot apply in {mode} mode (it samples whole "
            f"{'blocks' if mode == 'block' else 'responses'} from the base); drop top_p."
        )
    cls = BlockSampler if mode == "block" else RerankSampler
    return cls(settings, prefix, prompt_text)


def value_prompt_text(provider: Any, prompt: Prompt, mode: str) -> str:
    """The prompt text the value models see: the provider's rendering, or (block and rerank
    over a chat endpoint that renders no template, e.g. OpenAI hosted chat) the messages in
    ChatML form.

    Raises:
        ConfigError: token-level modes need the provider's own rendering and it has none.
    """
    try:
        return provider.prompt_text(prompt)
    except ConfigError:
        if mode not in ("block", "rerank") or isinstance(prompt, str):
            raise
        return chatml_text(prompt)


class BlockSampler(_SamplerBase):
    """Block mode (see the module docstring).

    Read-outs besides `_SamplerBase`'s: `blocks` (committed blocks), `ess` (effective sample
    size of each step's weights). The trace holds one Step per committed block (source
    "block"; base logprob unknown, NaN).
    """

    def __init__(self, settings: SamplerSettings, prefix: Prefix, prompt_text: str) -> None:
        super().__init__(settings, prefix, prompt_text)
        self._blocks: list[str] | None = None  # the current step's candidates
        self._finishes: list[str | None] = []
        self._asked = 0  # tokens asked for in the current step
        self.blocks = 0
        self.ess: list[float] = []

    @property
    def pool_size(self) -> int:
        return self.settings.block_n

    def next_request(self) -> SampleCall | ScoreCall | None:
        if self.done:
            return None
        s = self.settings
        if self._blocks is None:
            self._asked = min(s.block_len, s.max_tokens - self.state.tokens)
            # A distinct seed per step (and per choice, via settings.seed), or every step would
            # draw the same blocks from a seeded server.
            seed = None if s.seed is None else s.seed * 1_000_003 + self.blocks
            return SampleCall(self._prefix(), s.block_n, self._asked, s.temperature, s.stop, seed)
        return ScoreCall(self._prefix_text(), (), (finished_texts(self._blocks, self._finishes),))

    def feed(self, answer: Samples | Scores) -> None:
        if self._blocks is None:
            self._expect(answer, Samples)
            samples: Samples = answer  # type: ignore[assignment]
            self.state.usage = self.state.usage + samples.usage
            if not samples.completions:
                raise ProviderError("the provider returned no completions for a block step.")
            self._blocks = [c.text for c in samples.completions]
            self._finishes = [c.finish_reason for c in samples.completions]
            if not self.settings.steered:
                self._choose([])
            return
        self._expect(answer, list)
        self._choose([per_model[0] for per_model in answer])  # type: ignore[union-attr]

    def _choose(self, scores: list[np.ndarray]) -> None:
        blocks, finishes, self._blocks = self._blocks or [], self._finishes, None
        n = len(blocks)
        shift = value_shift(scores, self.settings.betas) if scores else np.zeros(n)
        if scores:
            probs = resampling_probs(scores, self.settings.betas, "sample")
        else:
            probs = np.full(n, 1.0 / n)
        self.ess.append(effective_sample_size(np.exp(shift - shift.max())))
        i = int(self.rng.choice(n, p=probs))
        self._commit_block(blocks[i], finishes[i], float(shift[i]), float(probs[i]))

    def _commit_block(self, text: str, finish: str | None, shift: float, prob: float) -> None:
        st, s = self.state, self.settings
        st.steps.append(Step(text, float("nan"), shift, prob, "block"))
        self.blocks += 1
        before = len(st.response)
        st.response += text
        st.tokens += self._asked
        if s.stop:
            # The server checks stop strings in the text it generated; one that spans the join
            # of two blocks is found here.
            start = max(0, before - max(len(x) for x in s.stop) + 1)
            hits = [j for x in s.stop if (j := st.response.find(x, start)) >= 0]
            if hits:
                st.response = st.response[: min(hits)]
                st.finish_reason = "stop"
                return
        if finish != "length" or not text:
            # "stop" (EOS or a stop string), or anything else a server says: the response ends.
            # An empty block that claims "length" would repeat forever; it ends too.
            st.finish_reason = "stop"
        elif st.tokens >= s.max_tokens:
            st.finish_reason = "length"
