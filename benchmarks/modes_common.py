"""What the modes benchmark and the block-default tuning share: the local server with the
profiles that make it look like endpoints that allow less, and one block / rerank run.

- rerank: the server profiled with continuation="none" (it cannot continue a partial
  response); chat prompts are rendered by the client's template and sent to /v1/completions
  (every rerank call is still one whole fresh response, as on hosted chat). This route was
  chosen while the llama-cpp-python build installed here at 18:01 UTC on 2026-12-01 crashed
  on every batched decode, chat included; tests/test_modes_local.py also runs rerank through
  the chat endpoint.
- block: the server profiled with logprob_shape="none" (no logprobs), continuing by
  /v1/completions.

`--n-batch 1` worked around that crash (every n_batch > 1 segfaulted in llama_decode); the
build was replaced at 18:20 UTC and the benchmark runs kept `--n-batch 1`. It changes speed,
not what is sampled.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from common import MAX_TOKENS, sem_of


def server_args(n_batch: int | None) -> tuple[str, ...]:
    return ("--n_batch", str(n_batch)) if n_batch else ()


def rerank_profile(server: Any) -> Any:
    """The local server as an endpoint that cannot continue a partial response."""
    return replace(server.profile, name="local, no continuation", continuation="none",
                   extra={**server.profile.extra, "completions": True})


def block_profile(server: Any) -> Any:
    """The local server as an endpoint that returns no logprobs."""
    return replace(server.profile, name="local, no logprobs", logprob_shape="none")


def run_mode(
    client: Any,
    model: str,
    prompts: Sequence[str],
    reward: Callable[[Sequence[str]], list[float]],
    label: str,
    *,
    seed: int = 0,
    max_tokens: int = MAX_TOKENS,
    **vas: Any,
) -> dict[str, Any]:
    """One response per (rendered) prompt through `client.completions.create`; the aggregates."""
    from tqdm import tqdm

    rewards, calls, prompt_t, completion_t, wall, ess, blocks = [], 0, 0, 0, 0.0, [], 0
    value_s = 0.0
    for i, prompt in enumerate(tqdm(prompts, desc=label, leave=False, file=sys.stderr)):
        resp = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                         seed=seed * 100_003 + i, **vas)
        r = resp.vas
        rewards.append(reward([resp.choices[0].text])[0])
        calls += r.api_calls
        prompt_t += r.usage.prompt_tokens
        completion_t += r.usage.completion_tokens
        wall += r.time_total_s
        value_s += r.time_value_s
        ess += r.ess
        blocks += r.blocks
    n = len(prompts)
    return {
        "label": label,
        "responses": n,
        "mean_reward": round(statistics.fmean(rewards), 4),
        "sem_reward": round(sem_of(rewards), 4),
        "api_calls_per_response": round(calls / n, 2),
        "prompt_tokens_per_response": round(prompt_t / n, 1),
        "completion_tokens_per_response": round(completion_t / n, 1),
        "billed_tokens_per_response": round((prompt_t + completion_t) / n, 1),
        "mean_ess": round(statistics.fmean(ess), 3) if ess else None,
        "blocks_per_response": round(blocks / n, 2) if blocks else None,
        "wall_s_per_response": round(wall / n, 3),
        "value_share": round(value_s / max(1e-9, wall), 3),
        "rewards": [round(x, 4) for x in rewards],
    }
