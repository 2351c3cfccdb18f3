"""Speculative VAS (DESIGN.md section 4): exact token-mode output, far fewer API calls.

One call drafts m tokens from the base at temperature 1 with top-k logprobs at every position.
Position by position, the drafted token x is kept with probability min(1, p(x)/q(x)), where q
is the distribution the draft was sampled from and p the token-mode target; on the first
rejection a token is drawn from r ~ max(0, p - q) and the rest of the draft is dropped. This is
speculative sampling (Leviathan et al. 2023; Chen et al. 2023): every committed token has
exactly the token-mode distribution.

Exactly equal to `TokenSampler` for the target of `vas_api.sampler.target`, provided both
condition each position on the same context: with token-id continuation they do (the draft's
positions follow the server's own ids, and token mode sends those same ids); with text
continuation the server re-tokenizes token mode's text, so the two agree only where the text
re-tokenizes to the drafted ids (DESIGN.md section 7).
Byte fragments: the pending bytes are carried along the drafted path, so a drafted fragment is
an option exactly when it would be one in token mode. A drafted position the server did not
report as itself (`_unknown`: llama-server hides tokens that end mid-character) ends the draft
before it; when that is the first position, a token-mode step (candidates call) takes it. A drafted position that offers no option
(all fragments under text continuation) ends the draft before it, untested: the next request
starts there; when that is the first position, the base's own character is taken through a
token-mode step, so both modes take it from the same unrestricted call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..types import Draft, Position, Prefix
from .core import _BASE, Call, CandidatesCall, DraftCall, Scores, TokenSampler, _SamplerBase
from .settings import SamplerSettings
from .target import Options

__all__ = ["DraftLengthPolicy", "SpeculativeSampler", "expected_tokens_per_call"]


def expected_tokens_per_call(alpha: float, m: int) -> float:
    """Tokens one draft of length m commits when each position is accepted with prob alpha.

    A rejection at position a (a accepted before it) commits a + 1 tokens (the resampled one);
    all m accepted commits m. The sum is (1 - alpha^m) / (1 - alpha).
    """
    if alpha >= 1.0:
        return float(m)
    return (1.0 - alpha**m) / (1.0 - alpha)


@dataclass
class DraftLengthPolicy:
    """Chooses the draft length m that minimises expected cost per committed token.

    Cost of one call = prompt_tokens * price_prompt + m * price_completion (the whole prefix is
    billed again on every call); tokens committed = expected_tokens_per_call(alpha, m), with
    alpha the running acceptance rate under a Beta prior. With no prices (a local server),
    billed tokens are counted at 1 each.

    Attributes:
        m_min, m_max: bounds on m.
        price_prompt, price_completion: USD per million tokens (or any common unit).
        prior_accept, prior_weight: Beta prior on the acceptance rate, as a mean and a count.
    """

    m_min: int = 2
    m_max: int = 64
    price_prompt: float = 0.0
    price_completion: float = 0.0
    prior_accept: float = 0.9
    prior_weight: float = 4.0
    accepted: int = 0
    tested: int = 0

    @property
    def alpha(self) -> float:
        """Posterior mean acceptance rate per drafted position."""
        a = self.prior_accept * self.prior_weight + self.accepted
        return a / (self.prior_weight + self.tested)

    def update(self, tested: int, accepted: int) -> None:
        """Record one draft: `tested` positions went through the accept test, `accepted` kept."""
        self.tested += tested
        self.accepted += accepted

    def choose(self, prompt_tokens: int, remaining: int) -> int:
        """The m to draft next, given the billed prompt size and the tokens still allowed."""
        hi = max(1, min(self.m_max, remaining))
        lo = min(self.m_min, hi)
        pp, pc = (self.price_prompt, self.price_completion)
        if pp <= 0 and pc <= 0:
            pp = pc = 1.0
        alpha = min(self.alpha, 1 - 1e-9)
        best_m, best = lo, math.inf
        for m in range(lo, hi + 1):
            cost = (prompt_tokens * pp + m * pc) / expected_tokens_per_call(alpha, m)
            if cost < best - 1e-12:
                best_m, best = m, cost
        return best_m


def _unknown(position: Position) -> bool:
    """A drafted position that does not describe its own token: no candidates (how the
    llama-server parser marks it), or the candidate with the sampled id has other bytes than the
    sampled entry. llama.cpp's server reports no entry for a token that ends mid-character and
    puts the whole character on the next token's entry, whose candidates belong to a context the
    draft does not show (see `vas_api.logprobs`). The draft ends before it, untested.

    Exactness: cutting a draft at a position because of the token drafted *there* biases the
    output (that token is never tested), so this must not happen in normal operation: top-k
    drafts on llama.cpp's server may not sample the tokens that end mid-character (the
    provider's logit_bias, `Draft.excluded`, and `_q` renormalises over the rest), and such
    positions then do not occur. This check only keeps a stray one from corrupting the text."""
    if not position.candidates:
        return True
    tok = position.sampled
    if tok is None or tok.id is None:
        return False
    own = next((c for c in position.candidates if c.id == tok.id), None)
    return own is not None and own.raw != tok.raw


class SpeculativeSampler(_SamplerBase):
    """Speculative mode. Same target as `TokenSampler`; the report counts drafted tokens.

    Args:
        settings: the request's settings.
        prefix: prompt and any response so far.
        prompt_text: the text the base continues for the prompt (for the value models).
        restrict_top_k: draft with the server's top_k = k, so q is the base renormalised over
            the candidates (every drafted token is then a candidate).
        policy: draft-length policy (its acceptance estimate persists across requests when
            the caller passes the same object).
        by_ids: the provider continues with token ids (`Prefix.response_ids`).
    """

    def __init__(
        self,
        settings: SamplerSettings,
        prefix: Prefix,
        prompt_text: str,
        *,
        restrict_top_k: bool,
        policy: DraftLengthPolicy | None = None,
        by_ids: bool = False,
    ) -> None:
        super().__init__(settings, prefix, prompt_text, by_ids=by_ids)
        self.restrict_top_k = restrict_top_k
        self.policy = policy or DraftLengthPolicy(m_min=settings.draft_min, m_max=settings.draft_max)
        self.drafted = 0  # tokens the server drafted
        self.tested = 0  # drafted positions that went through the accept test
        self.accepted = 0  # drafted tokens kept
        self.resampled = 0  # tokens drawn from the residual after a rejection
        self._prompt_tokens = max(1, len(prompt_text) // 4)  # until the first usage arrives
        self._draft: Draft | None = None
        self._options: list[Options] = []
        self._fallback: TokenSampler | None = None
        # A draft cut by an end-of-sequence the server sampled but did not report: that
        # position's drafted token is known (EOS), so it still goes through the accept test,
        # on the candidates of one candidates call (None: none pending; False: call not made).
        self._eos_test: Options | bool | None = None
        self._eos_position: Position | None = None
        self._eos_excluded: frozenset[int] = frozenset()

    @property
    def wasted(self) -> int:
        """Drafted tokens thrown away (after a rejection, or past a stop or max_tokens)."""
        return self.drafted - self.accepted

    def next_request(self) -> Call | None:
        if self.done:
            return None
        if self._fallback is not None:
            return self._fallback.next_request()
        if self._draft is not None:
            path = tuple(
                o.texts[o.index(p.sampled)]  # type: ignore[index]
                for o, p in zip(self._options[:-1], self._draft.positions, strict=False)
            )
            return self._score_call(path, self._options)
        if self._eos_test is False:
            return CandidatesCall(self._prefix(), self.settings.k)
        if isinstance(self._eos_test, Options):
            return self._score_call((), [self._eos_test])
        remaining = self.settings.max_tokens - self.state.tokens
        m = self.policy.choose(self._prompt_tokens + self.state.tokens, remaining)
        return DraftCall(self._prefix(), m, self.settings.k, self.restrict_top_k)

    def feed(self, answer: Draft | Scores) -> None:
        if self._fallback is not None:
            self._feed_fallback(answer)
        elif self._draft is not None:
            self._expect(answer, list)
            self._verify(answer)  # type: ignore[arg-type]
        elif self._eos_test is not None:
            self._feed_eos_test(answer)
        else:
            self._expect(answer, Draft)
            self._take_draft(answer)  # type: ignore[arg-type]

    # -- internals ------------------------------------------------------------------------
    def _take_draft(self, draft: Draft) -> None:
        self._add_usage(draft)
        self._eos_excluded = draft.excluded
        self._prompt_tokens = max(1, draft.usage.prompt_tokens - self.state.tokens)
        # llama-cpp-python's stock server stops at a sampled end-of-sequence without reporting
        # its position: fewer than m positions, finish "stop", the last one not EOS.
        last = draft.positions[-1].sampled if draft.positions else None
        eos_unreported = draft.finish_reason == "stop" and not (last is not None and last.special)
        if not draft.positions:
            if eos_unreported:
                self.drafted += 1
                self._eos_test = False  # test the drafted EOS at this position
            else:
                self._fall_back()
            return
        self.drafted += len(draft.positions) + int(eos_unreported)
        # Only positions up to the first drafted token that cannot be kept need scoring:
        # a token that is not a usable candidate has p = 0 and is always rejected.
        options: list[Options] = []
        pending = self.state.tail
        for pos in draft.positions:
            if _unknown(pos):
                break  # the server did not report this position as itself: end before it
            opts = self._options_at(pos, pending)
            if not len(opts):
                break  # no option here: the draft ends before this position
            options.append(opts)
            x = opts.index(pos.sampled)
            if x is None or opts.candidates[x].special:
                break
            pending = opts.tails[x]
        if eos_unreported and len(options) == len(draft.positions):
            self._eos_test = True  # after the reported positions, if all are kept
        if not options and _unknown(draft.positions[0]):
            # Not even the first position is known: take it through a candidates call.
            self._eos_test = None
            self._fall_back()
            return
        if not options:
            self._eos_test = None
            # The first position offers no option: the base's own next character, through the
            # same token-mode step (one unrestricted short draft) as in token mode.
            self._fall_back(base_character=True)
            return
        self._draft, self._options = draft, options
        if not self.settings.steered:
            self._verify([])

    def _fall_back(self, base_character: bool = False) -> None:
        """Hand the next token to a token-mode step that shares this sampler's state and rng."""
        fallback = TokenSampler(self.settings, self._prefix(), self.prompt_text)
        fallback.rng, fallback.state = self.rng, self.state  # shared: one response, one rng
        if base_character:
            fallback._pending = _BASE
        self._fallback = fallback

    def _feed_eos_test(self, answer: Draft | Scores) -> None:
        if self._eos_test is False:
            self._expect(answer, Draft)
            self._add_usage(answer)  # type: ignore[arg-type]
            if not answer.positions:  # type: ignore[union-attr]
                self._eos_test = None
                self.state.finish_reason = answer.finish_reason or "stop"  # type: ignore[union-attr]
                return
            self._eos_position = answer.positions[0]  # type: ignore[union-attr]
            opts = self._options_at(self._eos_position)
            if not len(opts):
                self._eos_test = None
                self._fall_back(base_character=True)
                return
            self._eos_test = opts
            if self.settings.steered:
                return
            answer = []
        else:
            self._expect(answer, list)
        opts, self._eos_test = self._eos_test, None
        probs, shift = self._target(opts, [per_model[0] for per_model in answer])  # type: ignore[union-attr, arg-type]
        q = self._q(opts, self._eos_position, self._eos_excluded)  # type: ignore[arg-type]
        x = next((i for i, c in enumerate(opts.candidates) if c.special), None)  # type: ignore[union-attr]
        self.tested += 1
        if x is not None and self.rng.random() * q[x] < probs[x]:
            self.accepted += 1
            self.policy.update(1, 1)
            self._commit(opts, x, probs, shift, "accepted")  # type: ignore[arg-type]
            return
        self.policy.update(1, 0)
        self._resample(opts, probs, q, shift)  # type: ignore[arg-type]

    def _resample(self, opts: Options, probs: np.ndarray, q: np.ndarray, shift: np.ndarray) -> None:
        residual = np.maximum(probs - q, 0.0)
        total = residual.sum()
        r = residual / total if total > 1e-12 else probs
        i = int(self.rng.choice(len(r), p=r))
        self.resampled += 1
        self._commit(opts, i, probs, shift, "resampled")

    def _feed_fallback(self, answer: Draft | Scores) -> None:
        tokens = self.state.tokens
        self._fallback.feed(answer)  # type: ignore[union-attr]
        if self.done or self.state.tokens > tokens:
            self._fallback = None  # its one token is committed (the state is shared)

    def _q(self, opts: Options, position: Position, excluded: frozenset[int]) -> np.ndarray:
        """The draft distribution over the options: the base's, or with top-k drafts the base
        renormalised over the reported candidates minus the ids the draft could not sample."""
        if not self.restrict_top_k:
            return np.exp(opts.logprobs)
        if not excluded:
            return np.exp(opts.logprobs - opts.log_total)
        allowed = [c.logprob for c in position.candidates if c.id not in excluded]
        log_total = float(np.logaddexp.reduce(np.array(allowed))) if allowed else 0.0
        q = np.exp(opts.logprobs - log_total)
        q[[c.id in excluded for c in opts.candidates]] = 0.0
        return q

    def _verify(self, scores: Scores) -> None:
        draft, options = self._draft, self._options
        self._draft, self._options = None, []
        tested = accepted = 0
        for j, opts in enumerate(options):
            pos = draft.positions[j]  # type: ignore[union-attr]
            probs, shift = self._target(opts, [per_model[j] for per_model in scores])
            q = self._q(opts, pos, draft.excluded)  # type: ignore[union-attr]
            x = opts.index(pos.sampled)  # None: not a usable candidate, so p(x) = 0
            tested += 1
            if x is not None and self.rng.random() * q[x] < probs[x]:  # u < p(x) / q(x)
                accepted += 1
                self.accepted += 1
                self._commit(opts, x, probs, shift, "accepted", token=pos.sampled)
                if self.done:
                    break
                continue
            self._resample(opts, probs, q, shift)
            break
        if self._eos_test is not None and (self.done or accepted < len(options)):
            self._eos_test = None  # a rejection (or the end) came first: the EOS is moot
        elif self._eos_test is True:
            self._eos_test = False
        self.tested += tested
        self.policy.update(tested, accepted)
