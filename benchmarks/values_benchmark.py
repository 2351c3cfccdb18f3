"""Values benchmark: value models that see ahead, on rewards the prefix cannot tell.

Base: SmolLM2-135M-Instruct on the embedded llama.cpp server (llama-cpp-python). Three tasks on
the same base samples (96 training prompts x 8, 32 held-out prompts x 16, up to 64 tokens):
- sentiment: VADER compound of the response (the prefix reward is a strong baseline here);
- ending: a whole-response reward on length and on ending with a finished sentence
  (estimators.rewards, the `ending` spec): its prefix, scored as if finished, is no guide;
- judge: an LLM judge through the API (the same local model asked a yes/no question about the
  finished response, reward = P(yes)); steering with the judge on every prefix would cost one
  judge call per candidate per step, so the learned value model is the affordable way.

Phases (each cached under ~/.cache/vas-api/values_benchmark/, so a re-run resumes):
1. data: `vas collect` samples (train: --n-train per prompt, held-out: --n-heldout);
2. score: every task's reward of every sample (the judge's calls and tokens are counted);
3. train: one TD(lambda) value model per task, with the end of sequence as its own state;
   variants (--lr, --passes with --tag, --center, --freeze and --ridge, --extra for 16
   samples per prompt) each get their own checkpoint;
   refine (--model-round R): on-policy rounds, VAS samples of the previous round's model on the
   training prompts, scored and mixed with base samples, fine-tuned from it;
   validate: pooled and within-prompt Spearman on the validation split of the training prompts,
   how variants and rounds are chosen (never on the held-out prompts);
4. spearman: held-out Spearman at half the completion, learned vs every cheap baseline, pooled
   and within prompts, and rerank mode with the learned model on the Best-of-N pools;
5. steer: the beta of each task is picked on the validation prompts; held-out VAS at that beta
   against base sampling, Best-of-8 and Best-of-16 with the true reward (from the held-out
   samples), with billed tokens per response (judge calls included);
6. compose: the judge and ending value models together, (beta_judge, beta_ending) along a line,
   the trade-off between the two rewards on held-out prompts (a curve, not a choice).

    .venv/bin/python benchmarks/values_benchmark.py          # everything (resumes)
    .venv/bin/python benchmarks/values_benchmark.py --phase data --phase score
Writes benchmarks/results/values_benchmark.json (or --results NAME) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine, sem_of, write_result  # noqa: E402

from estimators.data import Sample, SampleWriter, prompt_key, read_samples  # noqa: E402
from vas_api.paths import cache_dir  # noqa: E402

PROMPTS = ROOT / "estimators" / "data"
DATA = cache_dir() / "values_benchmark"
MODELS = cache_dir() / "models"
PHASES = ("data", "score", "train", "refine", "validate", "spearman", "steer", "compose")
TASKS = ("ending", "judge", "sentiment")
# Fixed positions (value-model tokens into the completion) for a second view of the Spearman.
# 32 is half the 64-token budget: "half the completion" at a position that, unlike half of each
# sample's own length, does not give the final length away.
FIXED_TOKENS = (8, 16, 24, 32)
# Rerank-mode pools scored offline on the held-out samples (the same pools as Best-of-N).
RERANK_POOLS = (8, 16)


# --- the tasks' rewards ---------------------------------------------------------------------

# Chosen on the training samples only (their word counts and endings): 148 of 768 stop on
# their own within 64 tokens, 164 end on a finished sentence; this window gives 1.0 to 12% and
# >= 0.5 to 27% of them.
ENDING_SPEC = "ending:min_words=15,max_words=40,slack=10,unfinished=0.5"
# Chosen on 100 training samples: P(yes) spread sd 0.13, 52% above 0.5 (questions about
# positivity or enthusiasm gave a narrower spread).
JUDGE_QUESTION = "Does this review recommend the product to others? Answer Yes or No."


def make_reward(task: str, judge_endpoint: tuple[Any, str] | None) -> Any:
    """The true reward of a task: a Reward (prompts, completions) -> floats."""
    from estimators.rewards import build_reward

    if task == "sentiment":
        return build_reward("vader")
    if task == "ending":
        return build_reward(ENDING_SPEC)
    from estimators.judge import JudgeReward

    client, model = judge_endpoint  # type: ignore[misc]
    return JudgeReward(client, model, question=JUDGE_QUESTION)


def judge_usage(reward: Any) -> dict[str, int]:
    """Calls and billed tokens of a judge reward so far (zeros for a free reward)."""
    usage = getattr(reward, "usage", None)
    if usage is None:
        return {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
    return {"calls": int(usage.calls), "prompt_tokens": int(usage.prompt_tokens),
            "completion_tokens": int(usage.completion_tokens)}


# --- phase helpers --------------------------------------------------------------------------

def _state(name: str) -> dict[str, Any]:
    """What a phase has finished: one file per phase and task, so two runs on different tasks
    (side by side, one per core) never write the same file."""
    merged: dict[str, Any] = {}
    for part in sorted(DATA.glob(f"{name}.json")) + sorted(DATA.glob(f"{name}-*.json")):
        merged.update(json.loads(part.read_text()))
    return merged


def _save_state(name: str, payload: dict[str, Any]) -> None:
    path = DATA / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)


def phase_data(args: argparse.Namespace) -> dict[str, Any]:
    """Collect with the CLI (resumes: samples already in a file count)."""
    out = _state("data")
    for split, prompts, n, seed in (("train", "train_prompts.txt", args.n_train, 0),
                                    ("heldout", "heldout_prompts.txt", args.n_heldout, 1)):
        path = DATA / f"{split}.jsonl"
        have = len(read_samples(path, require=False).samples)
        wanted = n * len([ln for ln in (PROMPTS / prompts).read_text().splitlines() if ln.strip()])
        if have < wanted:
            cmd = [str(ROOT / ".venv" / "bin" / "vas"), "collect", str(PROMPTS / prompts), "-o",
                   str(path), "--n", str(n), "--max-tokens", str(args.max_tokens),
                   "--seed", str(seed)]
            start = time.perf_counter()
            subprocess.run(cmd, check=True)
            out.setdefault(split, {})["seconds_this_run"] = round(time.perf_counter() - start, 1)
        samples = read_samples(path).samples
        out.setdefault(split, {}).update(
            file=str(path), samples=len(samples), prompts=len({prompt_key(s.prompt) for s in samples}),
            per_prompt=n, max_tokens=args.max_tokens, seed=seed,
            prompt_tokens=sum(int(s.usage.get("prompt_tokens", 0)) for s in samples),
            completion_tokens=sum(int(s.usage.get("completion_tokens", 0)) for s in samples),
            finished=sum(s.finish_reason == "stop" for s in samples),
        )
    _save_state("data", out)
    return out


def _scored_path(task: str, split: str) -> Path:
    return DATA / f"{task}-{split}.jsonl"


def phase_score(tasks: Sequence[str], judge_endpoint: Any, splits: Sequence[str]) -> dict[str, Any]:
    """Each task's reward for every sample, written as a scored copy of the data."""
    for task in tasks:
        for split in splits:
            # One state file per task and split, so two runs (one per core) never write the same file.
            out = _state(f"score-{task}-{split}")
            path = _scored_path(task, split)
            if path.exists():
                continue
            samples = read_samples(DATA / f"{split}.jsonl").samples
            reward = make_reward(task, judge_endpoint)
            start = time.perf_counter()
            scores = _score(reward, samples)
            seconds = time.perf_counter() - start
            tmp = path.with_suffix(".tmp")
            with SampleWriter(tmp) as w:
                for s, r in zip(samples, scores, strict=True):
                    s.reward = r
                    w.write(s)
            tmp.replace(path)
            out[f"{task}/{split}"] = {"samples": len(samples), "seconds": round(seconds, 1),
                                      "judge": judge_usage(reward),
                                      "mean_reward": statistics.fmean(scores),
                                      "spec": getattr(reward, "description", task)}
            _save_state(f"score-{task}-{split}", out)
    return _state("score")


def _score(reward: Any, samples: Sequence[Sample], chunk: int = 64) -> list[float]:
    from tqdm import tqdm

    from estimators.rewards import compute_rewards

    scores: list[float] = []
    for i in tqdm(range(0, len(samples), chunk), desc="score", file=sys.stderr, leave=False):
        part = samples[i:i + chunk]
        scores += compute_rewards(reward, [s.prompt_text for s in part], [s.completion for s in part])
    return scores


def _checkpoint(task: str, args: argparse.Namespace, round_: int | None = None) -> Path:
    """Round 0: trained on base samples; round r > 0: after r rounds of on-policy refinement."""
    r = args.model_round if round_ is None else round_
    return MODELS / (f"values-{task}-L{args.layers}-lr{args.lr:g}{args.tag}" + ("-centered" if args.center else "")
                     + ("-frozen" if args.freeze else "") + ("-n16" if args.extra else "")
                     + (f"-ridge{args.ridge:g}" if args.ridge is not None else "")
                     + (f"-r{r}" if r else ""))


def phase_train(tasks: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """One value model per task (reused when its checkpoint is complete)."""
    from estimators.train import TrainConfig, train

    for task in tasks:
        ckpt = _checkpoint(task, args, 0)
        key = ckpt.name
        out = _state(f"train-{task}-{key}")  # one file per variant: variants can train side by side
        if (ckpt / "config.json").exists() and key in out:
            continue
        data = _scored_path(task, "train")
        if args.extra:  # the same prompts, twice the samples: validation keeps the same prompts
            data = DATA / f"{task}-train16.jsonl"
            rows = [*read_samples(_scored_path(task, "train")).samples,
                    *read_samples(_scored_path(task, "train-extra")).samples]
            tmp = data.with_suffix(".tmp")  # SampleWriter appends: start from an empty file
            tmp.unlink(missing_ok=True)
            with SampleWriter(tmp) as w:
                for row in rows:
                    w.write(row)
            tmp.replace(data)
        cfg = TrainConfig(
            data=str(data), output_dir=str(ckpt), reward=None,
            num_layers=args.layers, lr=args.lr, passes=args.passes, lam=0.95,
            epochs_per_batch=4, batch_size=8, heldout_fraction=0.1, seed=0, device="cpu",
            num_threads=args.threads, end_state=True, center_rewards=args.center,
            freeze_backbone=args.freeze, ridge=args.ridge, eval_every=-1 if args.freeze else 0,
            base_model="SmolLM2-135M-Instruct (Q4_1 GGUF, llama-cpp-python)",
        )
        result = train(cfg)
        meta = result.model.config.metadata["training"]
        out[key] = {"task": task, "checkpoint": str(ckpt), "seconds": meta["seconds_total"],
                    "batches": meta["batches"], "train_samples": meta["train_samples"],
                    "val_samples": meta["val_samples"], "validation": meta["val"],
                    "layers": args.layers, "lr": args.lr, "passes": args.passes,
                    "end_state": True, "center_rewards": args.center, "threads": args.threads,
                    "freeze_backbone": args.freeze, "ridge": args.ridge, "data": str(data)}
        _save_state(f"train-{task}-{key}", out)
    return _state("train")


def _validation_metrics(value_fn: Any, task: str, fit_samples: int = 160) -> dict[str, float]:
    """Pooled and within-prompt Spearman on the validation split of the training prompts, at
    half the completion, at half the budget (32 tokens) and at the end state; and the same at
    half on about `fit_samples` of the samples it was trained on (whole prompts; fit_...),
    which tells a model that could not fit its data from one that fit it and does not
    generalise. With the train-extra samples scored, also on the validation prompts' 16
    samples each (val16_...)."""
    import random

    from estimators.evaluate import END, spearman, spearman_within, values_at
    from estimators.train import split_by_prompt

    train_part, val = split_by_prompt(read_samples(_scored_path(task, "train")).samples, 0.1, 0)
    tok = value_fn.tokenizer
    out: dict[str, float] = {"n": len(val)}
    # Whole prompts, so the within-prompt figure has every sample of a prompt.
    keys = sorted({prompt_key(s.prompt) for s in train_part})
    per_prompt = max(1, len(train_part) // max(1, len(keys)))
    chosen = set(random.Random(0).sample(keys, min(len(keys), max(1, fit_samples // per_prompt))))
    fit = [s for s in train_part if prompt_key(s.prompt) in chosen]
    views_of = [("", val), ("fit_", fit)]
    extra = _scored_path(task, "train-extra")
    if extra.exists():  # 8 more samples of each validation prompt: a less noisy within-prompt view
        val_keys = {prompt_key(s.prompt) for s in val}
        views_of.append(("val16_", val + [s for s in read_samples(extra).samples
                                         if prompt_key(s.prompt) in val_keys]))
    for label, part in views_of:
        rewards = [float(s.reward) for s in part]
        groups = [prompt_key(s.prompt) for s in part]
        views = [("0.5", values_at(value_fn, part, tok, 0.5))]
        if label != "fit_":
            views += [("32tokens", values_after_tokens(value_fn, part, tok, 32))]
        if not label:
            views += [("end", values_at(value_fn, part, tok, END))]
        for name, vals in views:
            out[f"{label}spearman@{name}"] = spearman(vals, rewards)
            out[f"{label}within_prompt_spearman@{name}"] = spearman_within(vals, rewards, groups)
    return out


def phase_validate(tasks: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """Validation metrics (pooled and within prompts) of this run's checkpoint of each task:
    how training variants and refinement rounds are compared, on the training prompts only."""
    for task in tasks:
        name = _checkpoint(task, args).name
        out = _state(f"validate-{name}")
        if name not in out:
            start = time.perf_counter()
            out[name] = {"task": task, **_validation_metrics(_load(task, args), task),
                         "seconds": round(time.perf_counter() - start, 1)}
            _save_state(f"validate-{name}", out)
    return _state("validate")


def phase_refine(tasks: Sequence[str], args: argparse.Namespace, server: Any, judge_endpoint: Any) -> dict[str, Any]:
    """On-policy refinement (as in Iterative Value Optimization): sample with VAS under the
    previous round's model on the trainer's training prompts (validation prompts left out),
    score the samples with the true reward, and fine-tune the previous model on them mixed with
    as many of its base samples (every validation sample kept, so each round is validated on
    the same prompts). Both rounds' validation metrics are recorded; nothing held out is used."""
    import random

    from estimators.train import TrainConfig, split_by_prompt, train

    for task in tasks:
        out = _state(f"refine-{task}")
        for r in range(1, args.model_round + 1):
            key = f"{task}/r{r}"
            ckpt = _checkpoint(task, args, r)
            if key in out and (ckpt / "config.json").exists():
                continue
            prev = _load(task, args, r - 1)
            base = read_samples(_scored_path(task, "train")).samples
            train_part, val_part = split_by_prompt(base, 0.1, 0)
            path = DATA / f"{task}-onpolicy-r{r}.jsonl"
            if not path.exists():
                client = server.wrap(value_model=prev, mode=args.mode, k=20)
                prompts = _prompts_of(train_part)
                reward = make_reward(task, judge_endpoint)
                row = run_vas(client, server.model, prompts, {task: reward},
                              per_prompt=args.refine_per_prompt, max_tokens=args.max_tokens,
                              seed=100 + r, label=f"{task} on-policy r{r}", beta=args.refine_beta,
                              keep_samples=True)
                tmp = path.with_suffix(".tmp")
                with SampleWriter(tmp) as w:
                    for smp, rew in zip(row["samples"], row[task]["rewards_exact"], strict=True):
                        smp.reward = rew
                        w.write(smp)
                tmp.replace(path)
                row[task].pop("rewards_exact")  # the samples file holds them; the state keeps the rounded ones
                out[f"{key}/collect"] = {k: v for k, v in row.items() if k not in ("samples", "texts")}
                _save_state(f"refine-{task}", out)
            onpolicy = read_samples(path).samples
            rng = random.Random(r)
            mix = onpolicy + rng.sample(train_part, min(len(train_part), len(onpolicy))) + val_part
            mix_path = DATA / f"{task}-mix-r{r}.jsonl"
            with SampleWriter(mix_path) as w:
                for smp in mix:
                    w.write(smp)
            cfg = TrainConfig(
                data=str(mix_path), output_dir=str(ckpt), reward=None, num_layers=args.layers,
                lr=args.lr, passes=args.passes, lam=0.95, epochs_per_batch=4, batch_size=8,
                heldout_fraction=0.1, seed=0, device="cpu", num_threads=args.threads,
                end_state=True, center_rewards=args.center,
                base_model="SmolLM2-135M-Instruct (Q4_1 GGUF, llama-cpp-python)",
            )
            before = _validation_metrics(prev, task)  # train() updates prev in place
            start = time.perf_counter()
            result = train(cfg, model=prev)
            out[key] = {"task": task, "checkpoint": str(ckpt), "from": str(_checkpoint(task, args, r - 1)),
                        "seconds": round(time.perf_counter() - start, 1),
                        "onpolicy_samples": len(onpolicy), "mix_samples": len(mix),
                        "beta": args.refine_beta, "validation_before": before,
                        "validation_after": _validation_metrics(result.model, task)}
            _save_state(f"refine-{task}", out)
    return _state("refine")


def _load(task: str, args: argparse.Namespace, round_: int | None = None) -> Any:
    from estimators.baselines import load_value_function

    return load_value_function(str(_checkpoint(task, args, round_)))


def values_after_tokens(value_fn: Any, samples: Sequence[Sample], tokenizer: Any, n: int) -> list[float]:
    """V after the first min(n, L) value-model tokens of each completion: a fixed position, where
    (unlike half of each sample's own length) the state does not give the final length away."""
    from estimators.prompt_format import prompt_text_for, values_for
    from estimators.states import split_states

    prompts = [prompt_text_for(value_fn, s.prompt, s.prompt_text) for s in samples]
    responses = []
    for p, s in zip(prompts, samples, strict=True):
        sp = split_states(tokenizer, p, s.completion)
        responses.append(s.completion[: sp.ends[min(n, sp.num_states - 1)]] if sp else "")
    out: list[float] = []
    for i in range(0, len(samples), 32):
        out += [float(v) for v in values_for(value_fn, prompts[i:i + 32], responses[i:i + 32])]
    return out


def phase_spearman(tasks: Sequence[str], args: argparse.Namespace, judge_endpoint: Any) -> dict[str, Any]:
    """Held-out Spearman at half the completion: the learned model vs every cheap baseline
    (the prefix reward, VADER of the prefix, a words-so-far table fitted on the training
    samples); the judge on the prefix too, with its calls (one per state scored). Each free one
    also at fixed positions, pooled and within prompts (what steering uses); and rerank mode
    with the learned model, scored offline on the same held-out pools as Best-of-N."""
    from estimators.baselines import PrefixRewardValue
    from estimators.evaluate import END, spearman, spearman_within, values_at
    from estimators.words_so_far import WordsSoFarValue

    for task in tasks:
        out = _state(f"spearman-{task}")
        if task in out:
            continue
        samples = read_samples(_scored_path(task, "heldout")).samples
        rewards = [float(s.reward) for s in samples]
        groups = [prompt_key(s.prompt) for s in samples]
        learned = _load(task, args)
        tok = learned.tokenizer
        train_samples = read_samples(_scored_path(task, "train")).samples
        candidates: dict[str, tuple[Any, Any]] = {"learned": (learned, None)}
        reward = make_reward(task, judge_endpoint)
        if task != "judge" or args.judge_prefix_baseline:
            candidates["prefix_reward"] = (PrefixRewardValue(reward), reward)
        if task != "sentiment":
            candidates["vader_prefix"] = (PrefixRewardValue("vader"), None)
        candidates["words_so_far"] = (WordsSoFarValue.fit(
            [s.completion for s in train_samples], [float(s.reward) for s in train_samples]), None)
        rows: dict[str, Any] = {}
        for name, (value_fn, metered) in candidates.items():
            start = time.perf_counter()
            before = judge_usage(metered)["calls"]
            vals = values_at(value_fn, samples, tok, 0.5)
            rows[name] = {"spearman@0.5": spearman(vals, rewards),
                          "within_prompt_spearman@0.5": spearman_within(vals, rewards, groups),
                          "seconds": round(time.perf_counter() - start, 1),
                          "judge_calls": judge_usage(metered)["calls"] - before}
            if getattr(metered, "usage", None) is None:  # free ones: also at fixed positions
                for n in FIXED_TOKENS:
                    at_n = values_after_tokens(value_fn, samples, tok, n)
                    rows[name][f"spearman@{n}tokens"] = spearman(at_n, rewards)
                    rows[name][f"within_prompt_spearman@{n}tokens"] = spearman_within(at_n, rewards, groups)
        end = values_at(learned, samples, tok, END)
        finished = [i for i, s in enumerate(samples) if s.finish_reason == "stop"]
        if finished:
            rows["learned"]["spearman@end_finished"] = spearman([end[i] for i in finished],
                                                                [rewards[i] for i in finished])
            rows["learned"]["finished_samples"] = len(finished)
        rows["learned"]["spearman@end"] = spearman(end, rewards)
        rows["learned"]["within_prompt_spearman@end"] = spearman_within(end, rewards, groups)
        cheap = [k for k, v in rows.items() if k != "learned" and v["judge_calls"] == 0]
        best = max(cheap, key=lambda k: rows[k]["spearman@0.5"])
        out[task] = {"n": len(samples), "model": _checkpoint(task, args).name, "rows": rows,
                     "best_cheap_baseline": best,
                     "learned_minus_best_cheap": rows["learned"]["spearman@0.5"] - rows[best]["spearman@0.5"],
                     "rerank_argmax_offline": {str(n): rerank_offline(samples, end, n) for n in RERANK_POOLS}}
        for n in FIXED_TOKENS:
            key = f"spearman@{n}tokens"
            best_n = max(cheap, key=lambda k: rows[k].get(key, float("-inf")))
            out[task][f"learned_minus_best_cheap@{n}tokens"] = rows["learned"][key] - rows[best_n][key]
            out[task][f"best_cheap_baseline@{n}tokens"] = best_n
        _save_state(f"spearman-{task}", out)
    return _state("spearman")


def rerank_offline(samples: Sequence[Sample], values: Sequence[float], n: int) -> dict[str, Any]:
    """Rerank mode (argmax of the learned V over N base responses) on the first n held-out
    samples of each prompt: the pools Best-of-n picks from with the true reward. The samples
    were drawn as rerank mode draws them (the base, neutral samplers), so this is that mode's
    outcome on these pools, with their billed tokens and no judge call."""
    by_prompt: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_prompt.setdefault(prompt_key(s.prompt), []).append(i)
    picked, billed = [], 0
    for idx in by_prompt.values():
        pool = idx[:n]
        picked.append(float(samples[max(pool, key=lambda i: values[i])].reward))
        billed += sum(int(samples[i].usage.get("prompt_tokens", 0))
                      + int(samples[i].usage.get("completion_tokens", 0)) for i in pool)
    return {"label": f"rerank argmax V, N={n} (offline)", "responses": len(picked),
            "mean_reward": statistics.fmean(picked), "sem_reward": sem_of(picked),
            "billed_tokens_per_response": billed / len(picked), "judge_calls_per_response": 0}


# --- steering -------------------------------------------------------------------------------

def _prompts_of(samples: Sequence[Sample]) -> list[Any]:
    seen: dict[str, Any] = {}
    for s in samples:
        seen.setdefault(prompt_key(s.prompt), s.prompt)
    return list(seen.values())


def validation_prompts(task: str) -> list[Any]:
    """The validation split of the training prompts, as the trainer draws it (seed 0)."""
    from estimators.train import split_by_prompt

    _, val = split_by_prompt(read_samples(_scored_path(task, "train")).samples, 0.1, 0)
    return _prompts_of(val)


def run_vas(client: Any, model: str, prompts: Sequence[Any], rewards: dict[str, Any], *,
            per_prompt: int, max_tokens: int, seed: int, label: str, keep_samples: bool = False,
            **vas: Any) -> dict[str, Any]:
    """VAS responses for each prompt, scored by each true reward (judge calls counted apart
    from the generation's own calls), with their costs. keep_samples: also return them as
    Samples (row["samples"]) and each reward unrounded (row[name]["rewards_exact"])."""
    from tqdm import tqdm

    from estimators.prompt_format import DEFAULT_FORMAT
    from estimators.rewards import compute_rewards

    texts, prompt_texts, calls, billed, wall = [], [], 0, 0, 0.0
    samples: list[Sample] = []
    for i, messages in enumerate(tqdm(prompts, desc=label, file=sys.stderr, leave=False)):
        for j in range(per_prompt):
            # The judge reads the request (its last user turn) as well as the response.
            prompt_texts.append(DEFAULT_FORMAT.render(messages))
            resp = client.chat.completions.create(model=model, messages=messages,
                                                  max_tokens=max_tokens,
                                                  seed=seed * 1_000_003 + i * 101 + j, **vas)
            texts.append(resp.choices[0].message.content or "")
            u = resp.vas.usage
            calls += resp.vas.api_calls
            billed += u.prompt_tokens + u.completion_tokens
            wall += resp.vas.time_total_s
            if keep_samples:
                samples.append(Sample(prompt=messages, prompt_text=prompt_texts[-1], completion=texts[-1],
                                      finish_reason=resp.choices[0].finish_reason, model=model,
                                      usage={"prompt_tokens": u.prompt_tokens,
                                             "completion_tokens": u.completion_tokens}))
    n = len(texts)
    row: dict[str, Any] = {"label": label, "responses": n, "api_calls_per_response": calls / n,
                           "billed_tokens_per_response": billed / n, "wall_s_per_response": wall / n}
    for name, reward in rewards.items():
        before = judge_usage(reward)["calls"]
        scores = compute_rewards(reward, prompt_texts, texts)
        row[name] = {"mean_reward": statistics.fmean(scores), "sem_reward": sem_of(scores),
                     "scoring_judge_calls_per_response": (judge_usage(reward)["calls"] - before) / n,
                     "rewards": [round(r, 4) for r in scores]}
        if keep_samples:
            row[name]["rewards_exact"] = scores
    row["texts"] = texts
    if keep_samples:
        row["samples"] = samples
    return row


def best_of(samples: Sequence[Sample], n: int, judge_cost: dict[str, float] | None) -> dict[str, Any]:
    """Best-of-n with the true reward from the first n held-out samples of each prompt."""
    by_prompt: dict[str, list[Sample]] = {}
    for s in samples:
        by_prompt.setdefault(prompt_key(s.prompt), []).append(s)
    best, billed = [], 0
    for group in by_prompt.values():
        pool = group[:n]
        best.append(max(float(s.reward) for s in pool))
        billed += sum(int(s.usage.get("prompt_tokens", 0)) + int(s.usage.get("completion_tokens", 0))
                      for s in pool)
    per_prompt = billed / len(best)
    judge_tokens = n * judge_cost["tokens_per_call"] if judge_cost else 0.0
    return {"label": f"best-of-{n}", "responses": len(best), "mean_reward": statistics.fmean(best),
            "sem_reward": sem_of(best), "base_billed_tokens_per_response": per_prompt,
            "judge_calls_per_response": n if judge_cost else 0,
            "billed_tokens_per_response": per_prompt + judge_tokens}


def phase_steer(tasks: Sequence[str], args: argparse.Namespace, server: Any, judge_endpoint: Any) -> dict[str, Any]:
    """Pick beta on validation prompts, then held-out VAS vs base and Best-of-N."""
    from estimators.collect import as_prompt

    score = _state("score")
    heldout = [as_prompt(ln) for ln in (PROMPTS / "heldout_prompts.txt").read_text().splitlines() if ln.strip()]
    for task in tasks:
        out = _state(f"steer-{task}")
        if task in out:
            continue
        value = _load(task, args)
        reward = make_reward(task, judge_endpoint)
        client = server.wrap(value_model=value, mode=args.mode, k=20)
        val_prompts = validation_prompts(task)
        sweep = {}
        for beta in args.betas:
            row = run_vas(client, server.model, val_prompts, {task: reward}, per_prompt=args.val_per_prompt,
                          max_tokens=args.max_tokens, seed=7, label=f"{task} val beta={beta:g}",
                          beta=beta)
            sweep[f"{beta:g}"] = {"mean_reward": row[task]["mean_reward"],
                                  "sem_reward": row[task]["sem_reward"],
                                  "responses": row["responses"],
                                  "billed_tokens_per_response": row["billed_tokens_per_response"]}
        best_beta = max(args.betas, key=lambda b: sweep[f"{b:g}"]["mean_reward"])
        vas_row = run_vas(client, server.model, heldout, {task: reward}, per_prompt=args.per_prompt,
                          max_tokens=args.max_tokens, seed=11, label=f"{task} held-out beta={best_beta:g}",
                          beta=best_beta)
        held = read_samples(_scored_path(task, "heldout")).samples
        judge_cost = None
        if task == "judge":
            j = score["judge/heldout"]["judge"]
            judge_cost = {"tokens_per_call": (j["prompt_tokens"] + j["completion_tokens"]) / max(1, j["calls"])}
        base = [float(s.reward) for s in held]
        base_billed = statistics.fmean(int(s.usage.get("prompt_tokens", 0)) + int(s.usage.get("completion_tokens", 0))
                                       for s in held)
        out[task] = {
            "model": _checkpoint(task, args).name, "model_round": args.model_round,
            "beta_chosen_on_validation": best_beta, "validation_sweep": sweep,
            "vas": vas_row,
            "base": {"label": "base", "responses": len(base), "mean_reward": statistics.fmean(base),
                     "sem_reward": sem_of(base), "billed_tokens_per_response": base_billed},
            "best_of_8": best_of(held, 8, judge_cost), "best_of_16": best_of(held, 16, judge_cost),
            "judge_cost": judge_cost,
        }
        _save_state(f"steer-{task}", out)
    return _state("steer")


def phase_compose(args: argparse.Namespace, server: Any, judge_endpoint: Any) -> dict[str, Any]:
    """Judge + ending value models with their own betas: the trade-off curve (held-out)."""
    from estimators.collect import as_prompt

    out = _state("compose")
    lines = [ln for ln in (PROMPTS / "heldout_prompts.txt").read_text().splitlines() if ln.strip()]
    prompts = [as_prompt(ln) for ln in lines[: args.compose_prompts]]
    from estimators.baselines import load_value_function

    ending = MODELS / args.compose_ending if args.compose_ending else _checkpoint("ending", args)
    models = [_load("judge", args), load_value_function(str(ending))]
    rewards = {"judge": make_reward("judge", judge_endpoint), "ending": make_reward("ending", None)}
    client = server.wrap(value_model=models, mode=args.mode, k=20)
    top = max(args.betas)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        betas = (round(top * (1 - frac), 3), round(top * frac, 3))
        key = f"{betas[0]:g},{betas[1]:g}"
        if key in out.get("points", {}):
            continue
        row = run_vas(client, server.model, prompts, rewards, per_prompt=1,
                      max_tokens=args.max_tokens, seed=13, label=f"compose {key}", beta=list(betas))
        out.setdefault("points", {})[key] = {"beta_judge": betas[0], "beta_ending": betas[1], **row}
        _save_state("compose", out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phase", action="append", choices=PHASES, help="run only these phases")
    ap.add_argument("--task", action="append", choices=TASKS, help="only these tasks")
    ap.add_argument("--n-train", type=int, default=8)
    ap.add_argument("--n-heldout", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--passes", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split", action="append", choices=("train", "heldout", "train-extra"),
                    help="score phase: only these splits (two runs can then share the cores); "
                         "train-extra: the samples --extra trains on")
    ap.add_argument("--extra", action="store_true",
                    help="train on train.jsonl + train-extra.jsonl (8 more base samples per training "
                         "prompt, collected by hand: vas collect ... -o train-extra.jsonl --n 8 --seed 2)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--center", action="store_true",
                    help="train on rewards centered per prompt (TrainConfig.center_rewards)")
    ap.add_argument("--freeze", action="store_true",
                    help="train the value head only, on the frozen backbone's features (computed once)")
    ap.add_argument("--ridge", type=float, default=None,
                    help="with --freeze: fit the head in closed form (TrainConfig.ridge)")
    ap.add_argument("--model-round", type=int, default=0,
                    help="rounds of on-policy refinement (refine phase); later phases use that round's model")
    ap.add_argument("--refine-per-prompt", type=int, default=2, help="VAS samples per training prompt a round")
    ap.add_argument("--refine-beta", type=float, default=8.0, help="beta of the on-policy samples")
    ap.add_argument("--val-per-prompt", type=int, default=2, help="VAS responses per validation prompt and beta")
    ap.add_argument("--mode", default="speculative")
    ap.add_argument("--betas", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    ap.add_argument("--per-prompt", type=int, default=1, help="held-out VAS responses per prompt")
    ap.add_argument("--compose-prompts", type=int, default=16)
    ap.add_argument("--compose-ending", default=None,
                    help="compose: the ending model's checkpoint name under the models cache (default: this run's)")
    ap.add_argument("--judge-prefix-baseline", action=argparse.BooleanOptionalAction, default=True,
                    help="also score the judge on every held-out prefix (one call each)")
    ap.add_argument("--note", action="append", default=[],
                    help="notes for the results file (without any, the file's earlier notes are kept)")
    ap.add_argument("--results", default="values_benchmark",
                    help="the results file's name under benchmarks/results/ (a later run on a new "
                         "cache writes its own file instead of replacing an earlier run's)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    phases = args.phase or list(PHASES)
    tasks = args.task or list(TASKS)
    DATA.mkdir(parents=True, exist_ok=True)

    if "data" in phases:
        phase_data(args)
    from vas_api.local import LocalServer

    with LocalServer(n_threads=1) as server:
        judge_endpoint = (server.client(max_retries=2, timeout=300), server.model)
        if "score" in phases:
            phase_score(tasks, judge_endpoint, args.split or ["train", "heldout"])
        if "train" in phases:
            phase_train(tasks, args)
        if "refine" in phases and args.model_round > 0:
            phase_refine(tasks, args, server, judge_endpoint)
        if "validate" in phases:
            phase_validate(tasks, args)
        if "spearman" in phases:
            phase_spearman(tasks, args, judge_endpoint)
        if "steer" in phases:
            phase_steer(tasks, args, server, judge_endpoint)
        if "compose" in phases and {"judge", "ending"} <= set(tasks):
            phase_compose(args, server, judge_endpoint)
    report(args)


def report(args: argparse.Namespace) -> None:
    """Assemble the results JSON from the cached phases; print the headline table."""
    sp, st, tr = _state("spearman"), _state("steer"), _state("train")
    name = getattr(args, "results", "values_benchmark")
    notes = args.note
    previous = ROOT / "benchmarks" / "results" / f"{name}.json"
    if not notes and previous.exists():  # a phase run without --note keeps the run's notes
        notes = json.loads(previous.read_text()).get("notes", [])
    payload: dict[str, Any] = {
        "benchmark": "values_benchmark", "machine_detail": machine(),
        "base_model": "SmolLM2-135M-Instruct (Q4_1 GGUF, llama-cpp-python)",
        "data": _state("data"), "scoring": _state("score"), "training": tr,
        "on_policy_refinement": _state("refine"), "validation": _state("validate"),
        "spearman_at_half": sp, "steering": st, "composition": _state("compose"),
        "notes": notes,
    }
    # The headline key is the ending task's, the reward built so that its prefix cannot compute
    # it; every task's figure is listed beside it.
    if "ending" in sp:
        payload["lookahead_spearman_learned_minus_best_baseline"] = sp["ending"]["learned_minus_best_cheap"]
    payload["lookahead_spearman_learned_minus_best_baseline_by_task"] = {
        t: v["learned_minus_best_cheap"] for t, v in sp.items()}
    for n in (16, 32):
        payload[f"learned_minus_best_cheap_at_{n}_tokens_by_task"] = {
            t: v.get(f"learned_minus_best_cheap@{n}tokens") for t, v in sp.items()}
    payload["within_prompt_spearman_at_half_by_task"] = {
        t: {name: row.get("within_prompt_spearman@0.5") for name, row in v["rows"].items()
            if "within_prompt_spearman@0.5" in row} for t, v in sp.items()}
    if "judge" in st:
        j = st["judge"]
        payload["judge_vas_minus_bon8"] = j["vas"]["judge"]["mean_reward"] - j["best_of_8"]["mean_reward"]
        payload["judge_vas_billed_tokens_per_response"] = j["vas"]["billed_tokens_per_response"]
        payload["judge_bon8_billed_tokens_per_response"] = j["best_of_8"]["billed_tokens_per_response"]
    if "judge" in st and "judge" in sp:
        # Rerank mode with the learned model: a different algorithm from token-level VAS (DESIGN
        # section 5), scored offline on the same held-out pools as Best-of-N; listed apart.
        for n, row in sp["judge"]["rerank_argmax_offline"].items():
            payload[f"judge_rerank{n}_minus_bon8"] = row["mean_reward"] - st["judge"]["best_of_8"]["mean_reward"]
            payload[f"judge_rerank{n}_billed_tokens_per_response"] = row["billed_tokens_per_response"]
    path = write_result(name, payload)
    print(json.dumps({k: v for k, v in payload.items() if not isinstance(v, dict | list)}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
