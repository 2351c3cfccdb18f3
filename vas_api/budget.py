"""Hard spend caps that hold under concurrency: reserve the worst case, then settle.

    job = Budget(max_usd=5.0)                       # one per batch job, shared by every request
    item = job.child(max_usd=0.02)                  # one per request
    meter = Meter("gpt-x", price, item)
    with meter.call(call, sampler) as bill:         # reserves prompt + max_tokens at the price
        draft = provider.draft(...)
        bill(draft.usage)                           # settles with the real usage

Before each API call its worst case (an upper bound on its prompt tokens, plus max_tokens,
at the price, no prompt tokens cached) is *reserved* against what every budget in the chain has
left; the call is refused with `BudgetExceededError` when any of them would go over. After the
call the reservation is replaced by the real usage, which can only be smaller. Because
reserve-and-check is one step under a lock, many requests in flight (threads or asyncio tasks)
can never push the spend past a cap. Money is kept in integer pico-USD so the sums are exact.

Every settled call leaves a `UsageRecord` (model, prompt, cached, completion tokens, cost) in
the request's budget, so a report's spend can be recomputed from the raw records.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import BudgetExceededError, ConfigError, ProviderConnectionError, ProviderError
from .pricing import Price
from .types import Usage

__all__ = ["UsageRecord", "Budget", "Reservation", "Meter", "PROMPT_SLACK_TOKENS"]

PROMPT_SLACK_TOKENS = 16
"""Added to every prompt bound: BOS and template tokens a server may add to the text's tokens."""

_PICO = 10**12


def _to_pico(usd: float) -> int:
    return math.ceil(usd * _PICO - 1e-6)  # never round a cost down to zero


def _from_pico(p: int) -> float:
    return p / _PICO


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """The billed usage of one API call (or of the attempts inside one, e.g. EOS retries).

    Attributes:
        model: the model it was billed for.
        kind: what the call was for ("candidates", "draft", "sample", ...).
        prompt_tokens, cached_tokens, completion_tokens: as the provider reported them.
        calls: HTTP calls the provider made for it.
        cost_usd: at the price in force (None when the price is unknown).
        estimated: True when the call failed and may still have been billed: the record then
            holds the reserved worst case, not a reported usage.
    """

    model: str
    kind: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    calls: int = 1
    cost_usd: float | None = 0.0
    estimated: bool = False

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Reservation:
    """What one call holds against a budget chain until it is settled or released."""

    tokens: int
    pico: int
    chain: tuple[Budget, ...]
    open: bool = True


def _check_cap(name: str, value: float | int | None, integer: bool) -> None:
    if value is None:
        return
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value < 0:
        kind = "a whole number of tokens >= 0" if integer else "a finite number of USD >= 0"
        raise ConfigError(f"{name} = {value!r}: give {kind}, or None for no cap.")


class Budget:
    """Caps on money and billed tokens (prompt + completion), shared by many requests.

    Thread-safe, and safe to share between asyncio tasks: its lock is never held across an
    await. A child budget (`child`) counts against itself and every parent, under one lock.

    Args:
        max_usd: money cap in USD (None: none).
        max_tokens: cap on billed tokens, prompt + completion (None: none).
        name: "job", "request", ... (in error messages).
        parent: a budget this one also counts against.

    Raises:
        ConfigError: a cap is negative, not finite, or not a number.
    """

    def __init__(
        self,
        *,
        max_usd: float | None = None,
        max_tokens: int | None = None,
        name: str = "request",
        parent: Budget | None = None,
    ) -> None:
        _check_cap("max_usd", max_usd, integer=False)
        _check_cap("max_tokens", max_tokens, integer=True)
        self.name = name
        self.parent = parent
        self.max_usd = max_usd
        self.max_tokens = max_tokens
        self._max_pico = None if max_usd is None else math.floor(max_usd * _PICO + 1e-6)
        self._lock: threading.RLock = parent._lock if parent is not None else threading.RLock()
        # Wakes callers waiting for calls in flight to settle (one per chain, like the lock).
        self._waiters: list[tuple[Any, Any]] = parent._waiters if parent is not None else []
        self._cond: threading.Condition = parent._cond if parent is not None else threading.Condition(self._lock)
        self._spent_pico = 0
        self._reserved_pico = 0
        self.spent_tokens = 0
        self.reserved_tokens = 0
        self.calls = 0
        self.unpriced_calls = 0
        self.records: list[UsageRecord] = []

    def child(self, *, max_usd: float | None = None, max_tokens: int | None = None,
              name: str = "request") -> Budget:
        """A budget that counts against this one too (e.g. one request of a job)."""
        return Budget(max_usd=max_usd, max_tokens=max_tokens, name=name, parent=self)

    # -- read-outs --------------------------------------------------------------------------
    @property
    def spent_usd(self) -> float:
        return _from_pico(self._spent_pico)

    @property
    def reserved_usd(self) -> float:
        return _from_pico(self._reserved_pico)

    @property
    def capped(self) -> bool:
        """True when this budget or a parent has any cap."""
        b: Budget | None = self
        while b is not None:
            if b.max_usd is not None or b.max_tokens is not None:
                return True
            b = b.parent
        return False

    @property
    def money_capped(self) -> bool:
        b: Budget | None = self
        while b is not None:
            if b.max_usd is not None:
                return True
            b = b.parent
        return False

    @property
    def token_capped(self) -> bool:
        b: Budget | None = self
        while b is not None:
            if b.max_tokens is not None:
                return True
            b = b.parent
        return False

    def remaining_usd(self) -> float | None:
        """Money left before the tightest cap in the chain (None: no money cap)."""
        with self._lock:
            left = [
                _from_pico(b._max_pico - b._spent_pico - b._reserved_pico)
                for b in self._chain() if b._max_pico is not None
            ]
        return min(left) if left else None

    def remaining_tokens(self) -> int | None:
        """Billed tokens left before the tightest token cap in the chain (None: no cap)."""
        with self._lock:
            left = [b.max_tokens - b.spent_tokens - b.reserved_tokens
                    for b in self._chain() if b.max_tokens is not None]
        return min(left) if left else None

    # -- reserve / settle ---------------------------------------------------------------------
    def _chain(self) -> tuple[Budget, ...]:
        out, b = [], self
        while b is not None:
            out.append(b)
            b = b.parent
        return tuple(out)

    def reserve(self, tokens: int, usd: float | None) -> Reservation:
        """Hold `tokens` and `usd` (a call's worst case) against every budget in the chain.

        Args:
            tokens: the call's worst-case billed tokens.
            usd: its worst-case cost; None when the price is unknown (then no money cap may be
                in the chain).

        Raises:
            BudgetExceededError: some budget would go over its cap (nothing is held then).
                `partial` is None here; the caller adds the partial output.
            ConfigError: a money cap applies but the price is unknown.
        """
        pico = 0 if usd is None else _to_pico(usd)
        with self._lock:
            chain = self._chain()
            for b in chain:
                if b.max_tokens is not None and b.spent_tokens + b.reserved_tokens + tokens > b.max_tokens:
                    busy = b.spent_tokens + tokens <= b.max_tokens
                    raise _named(b, busy, BudgetExceededError(
                        f"the {b.name} token cap ({b.max_tokens} billed tokens) would be exceeded: "
                        f"{b.spent_tokens} spent, {b.reserved_tokens} held by calls in flight, and the "
                        f"next call may bill up to {tokens}. Raise the cap or lower max_tokens.",
                        spent=b.spent_tokens, limit=b.max_tokens, unit="tokens",
                    ))
                if b._max_pico is not None:
                    if usd is None:
                        raise ConfigError(
                            f"the {b.name} has a money cap but this model's price is unknown; "
                            "give its price (prices=...) or cap in tokens instead."
                        )
                    if b._spent_pico + b._reserved_pico + pico > b._max_pico:
                        busy = b._spent_pico + pico <= b._max_pico
                        raise _named(b, busy, BudgetExceededError(
                            f"the {b.name} cap of ${b.max_usd:.6g} would be exceeded: "
                            f"${b.spent_usd:.6g} spent, ${b.reserved_usd:.6g} held by calls in flight, "
                            f"and the next call may cost up to ${usd:.6g}. Raise the cap or lower max_tokens.",
                            spent=b.spent_usd, limit=b.max_usd, unit="usd",
                        ))
            for b in chain:
                b.reserved_tokens += tokens
                b._reserved_pico += pico
            return Reservation(tokens, pico, chain)

    def reserve_wait(self, tokens: int, usd: float | None) -> Reservation:
        """`areserve` for threads: blocks while only holds of calls in flight are in the way."""
        with self._lock:
            while True:
                try:
                    return self.reserve(tokens, usd)
                except BudgetExceededError as e:
                    if not getattr(e, "busy", False):
                        raise
                    self._cond.wait()

    async def areserve(self, tokens: int, usd: float | None) -> Reservation:
        """`reserve`, but when the call fits what is *spent* and only the holds of calls in
        flight are in the way, wait for them to settle instead of refusing (their real usage is
        usually far below the worst case they hold). Refuses at once when the spend itself
        leaves no room. Waiting callers hold nothing, so they cannot block each other.

        Raises:
            as `reserve`.
        """
        import asyncio

        while True:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            with self._lock:
                try:
                    return self.reserve(tokens, usd)
                except BudgetExceededError as e:
                    if not getattr(e, "busy", False):
                        raise
                    self._waiters.append((loop, fut))
            await fut

    def _wake(self) -> None:
        """Called under the lock whenever holds shrink: wake every waiter to try again."""
        self._cond.notify_all()
        waiters, self._waiters[:] = list(self._waiters), []
        for loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there
                loop.call_soon_threadsafe(_set_done, fut)

    def release(self, r: Reservation) -> None:
        """Give a reservation back unused (the call was not billed)."""
        with self._lock:
            if not r.open:
                return
            r.open = False
            for b in r.chain:
                b.reserved_tokens -= r.tokens
                b._reserved_pico -= r.pico
            self._wake()

    def settle(self, r: Reservation, record: UsageRecord) -> None:
        """Replace a reservation by what the call really billed, and keep its record in every
        budget of the chain (a job's records are all of its requests').

        A provider that bills more than the reserved worst case is still counted in full (the
        record is the truth); the bound in `Meter` is built so that this cannot happen.
        """
        pico = 0 if record.cost_usd is None else _to_pico(record.cost_usd)
        with self._lock:
            self.release(r)
            for b in r.chain:
                b._spent_pico += pico
                b.spent_tokens += record.tokens
                b.calls += record.calls
                if record.cost_usd is None:
                    b.unpriced_calls += record.calls
                b.records.append(record)

    def summary(self) -> dict[str, Any]:
        """Spent, caps and calls as plain data."""
        with self._lock:
            return {
                "spent_usd": self.spent_usd if not self.unpriced_calls else None,
                "spent_tokens": self.spent_tokens,
                "calls": self.calls,
                "max_usd": self.max_usd,
                "max_tokens": self.max_tokens,
            }

    def __repr__(self) -> str:
        return (f"Budget({self.name}: ${self.spent_usd:.6g} of {self.max_usd}, "
                f"{self.spent_tokens} tokens of {self.max_tokens})")


def _named(budget: Budget, busy: bool, exc: BudgetExceededError) -> BudgetExceededError:
    exc.budget_name = budget.name  # which budget of the chain refused ("job", "request", ...)
    exc.busy = busy  # the spend leaves room: only holds of calls in flight are in the way
    return exc


def _set_done(fut: Any) -> None:
    if not fut.done():
        fut.set_result(None)


def _maybe_billed(exc: BaseException) -> bool:
    """Whether a failed call may still have been billed (it reached the provider and the answer
    was lost), so its worst case must stay counted. An HTTP error status means it was refused."""
    if isinstance(exc, ProviderConnectionError):
        return True
    if isinstance(exc, ProviderError | ConfigError | BudgetExceededError):
        return False
    status = getattr(exc, "status_code", None)
    return status is None


@dataclass
class Meter:
    """Counts every API call of one request and holds it to its budget chain.

    Args:
        model: the model billed.
        price: its price; None when unknown (only allowed without money caps).
        budget: the request's budget (its parents are the job's).
        candidate_attempts: HTTP calls one candidates call may make (EOS retries in
            `openai_wire.candidates_flow`): each is reserved.
        slack: tokens added to every prompt bound.
        on_budget: what the client does when a cap stops the request ("raise" / "partial").
    """

    model: str
    price: Price | None
    budget: Budget
    candidate_attempts: int = 1
    slack: int = PROMPT_SLACK_TOKENS
    on_budget: str = "raise"
    _known: tuple[int, int] | None = field(default=None, repr=False)  # (text bytes, prompt tokens)

    @property
    def records(self) -> list[UsageRecord]:
        return self.budget.records

    def prompt_bound(self, text: str) -> int:
        """An upper bound on the prompt tokens of a call that sends `text`.

        Byte-level tokenizers give every token at least one byte, so the UTF-8 length bounds the
        count; once a call has reported its prompt tokens for a shorter prefix of the same text,
        that count plus the bytes added since is tighter.
        """
        n = len(text.encode("utf-8"))
        bound = n + self.slack
        if self._known is not None and n >= self._known[0]:
            bound = min(bound, self._known[1] + (n - self._known[0]) + self.slack)
        return bound

    def worst_case(self, call: Any, text: str) -> tuple[int, int, int]:
        """(prompt tokens, completion tokens, HTTP calls) that `call` may bill at most."""
        completion = int(getattr(call, "m", None) or getattr(call, "max_tokens", None) or 1)
        n = int(getattr(call, "n", None) or 1)
        attempts = self.candidate_attempts if type(call).__name__ == "CandidatesCall" else 1
        prompt = self.prompt_bound(text)
        return prompt * attempts, completion * n * attempts, attempts

    def _plan(self, call: Any, sampler: Any) -> tuple[str, int, int, int, float | None]:
        prefix = getattr(call, "prefix", None)
        response = getattr(prefix, "response", "") if prefix is not None else ""
        text = getattr(sampler, "prompt_text", "") + (response or "")
        prompt, completion, attempts = self.worst_case(call, text)
        usd = None if self.price is None else self.price.worst_case(prompt, completion)
        return text, prompt, completion, attempts, usd

    @contextlib.contextmanager
    def call(self, call: Any, sampler: Any) -> Iterator[Callable[[Usage], None]]:
        """Reserve the worst case of `call` (made by `sampler`), yield a `bill(usage)` to
        settle it with; a call that fails is released, or counted at its worst case when it
        may have been billed (`UsageRecord.estimated`).

        Raises:
            BudgetExceededError: the call does not fit; `partial` holds the sampler's response
                so far.
        """
        plan = self._plan(call, sampler)
        text, prompt, completion, _, usd = plan
        try:
            r = self.budget.reserve_wait(prompt + completion, usd)
        except BudgetExceededError as e:
            e.partial = getattr(sampler, "response", None)
            raise
        with self._settling(r, call, plan) as bill:
            yield bill

    @contextlib.asynccontextmanager
    async def acall(self, call: Any, sampler: Any):
        """`call` for the event loop: when only calls in flight hold the room this call needs,
        it waits for them to settle (`Budget.areserve`) instead of failing."""
        plan = self._plan(call, sampler)
        text, prompt, completion, _, usd = plan
        try:
            r = await self.budget.areserve(prompt + completion, usd)
        except BudgetExceededError as e:
            e.partial = getattr(sampler, "response", None)
            raise
        with self._settling(r, call, plan) as bill:
            yield bill

    @contextlib.contextmanager
    def _settling(self, r: Reservation, call: Any, plan: tuple) -> Iterator[Callable[[Usage], None]]:
        text, prompt, completion, attempts, usd = plan
        kind = type(call).__name__.removesuffix("Call").lower() or "call"
        billed: list[Usage] = []
        try:
            yield billed.append
        except BaseException as exc:
            if billed:
                self._settle(r, billed[0], kind, text)
            elif _maybe_billed(exc):
                self.budget.settle(r, UsageRecord(
                    self.model, kind, prompt, 0, completion, attempts, usd, estimated=True))
            else:
                self.budget.release(r)
            raise
        if billed:
            self._settle(r, billed[0], kind, text)
        else:
            self.budget.release(r)

    def _settle(self, r: Reservation, usage: Usage, kind: str, text: str) -> None:
        cost = None if self.price is None else self.price.cost_of(usage)
        record = UsageRecord(self.model, kind, usage.prompt_tokens, usage.cached_tokens,
                             usage.completion_tokens, max(1, usage.calls), cost)
        self.budget.settle(r, record)
        if usage.prompt_tokens and usage.calls <= 1:
            self._known = (len(text.encode("utf-8")), usage.prompt_tokens)


def metered(meter: Meter | None, call: Any, sampler: Any) -> contextlib.AbstractContextManager:
    """`meter.call(call, sampler)`, or a no-op when there is no meter (the hook in
    `vas_api.sampler.run`)."""
    if meter is None:
        return contextlib.nullcontext(lambda _usage: None)
    return meter.call(call, sampler)


REQUEST_BUDGET_KEYS = ("max_cost_usd", "max_total_tokens", "budget", "on_budget")
"""Per-request options (keyword arguments of `create`, or defaults given to `wrap`)."""


def request_meter(
    model: str,
    provider: Any,
    *,
    prices: Any = None,
    max_cost_usd: float | None = None,
    max_total_tokens: int | None = None,
    budget: Budget | None = None,
    on_budget: str = "raise",
) -> Meter:
    """The meter of one request: its price, its caps, and the shared budget it counts against.

    Args:
        model: the base model's name at the provider.
        provider: the provider adapter (its client's base URL tells a local server from a
            hosted one; its profile how many calls one candidates call may make).
        prices: user prices on top of the shipped table (see vas_api.pricing).
        max_cost_usd, max_total_tokens: caps of this request (None: none).
        budget: a shared Budget (e.g. a batch job's) this request also counts against.
        on_budget: "raise" (BudgetExceededError) or "partial" (return what was produced with
            finish_reason "budget"); kept on the meter, acted on by the client.

    Raises:
        ConfigError: bad caps or on_budget; a hosted model with no known price and no token
            cap; a money cap on a model whose price is unknown.
    """
    from .pricing import base_url_of, resolve_price
    from .providers.openai_wire import EOS_RETRIES

    if on_budget not in ("raise", "partial"):
        raise ConfigError(f"on_budget = {on_budget!r}: use 'raise' or 'partial'.")
    if budget is not None and not isinstance(budget, Budget):
        raise ConfigError(f"budget must be a vas_api.budget.Budget, got {type(budget).__name__}.")
    # Always a budget of its own, so its records are this request's (they reach the parents too).
    request = Budget(max_usd=max_cost_usd, max_tokens=max_total_tokens, name="request", parent=budget)
    price = resolve_price(model, base_url_of(provider), prices, token_capped=request.token_capped)
    if price is None and request.money_capped:
        raise ConfigError(
            f"a money cap is set but no price is known for {model!r}; give its price "
            "(prices=...) or cap the spend in tokens only."
        )
    profile = getattr(provider, "profile", None)
    extra = getattr(profile, "extra", {}) or {}
    attempts = 1 if extra.get("min_tokens_for_eos") else 1 + EOS_RETRIES
    return Meter(model, price, request, candidate_attempts=attempts, on_budget=on_budget)


def ametered(meter: Meter | None, call: Any, sampler: Any) -> contextlib.AbstractAsyncContextManager:
    """`meter.acall(call, sampler)`, or a no-op without a meter (the hook in `arun`)."""
    if meter is None:
        return contextlib.nullcontext(lambda _usage: None)
    return meter.acall(call, sampler)
