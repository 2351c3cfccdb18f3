# ruff: noqa: E402  (a notebook: each cell imports what it needs)
# %% [markdown]
# # Value models: train one for a reward of your own, steer with it, compose two, see it
#
# Everything here runs on this machine: the embedded local server (SmolLM2-135M-Instruct on
# llama.cpp) is the frozen base model behind an OpenAI-compatible API, and the value model is
# a small slice of the same weights with a value head, trained on the base's own samples.
# Figures from a model this small show the mechanics, not what a large base model would do.
#
# `examples/value_models.ipynb` is built from `examples/value_models.py` by
# `python tools/py_to_notebook.py examples/value_models.py` (edit the .py, rebuild);
# `tests/test_notebook.py` executes it against the real local server.

# %% [markdown]
# ## Parameters
# `VAS_NOTEBOOK_SCALE=ci` (the default) runs in a few minutes on a small CPU; `full` is the
# size the figures in the README were made at. Figures are written only with
# `VAS_NOTEBOOK_SAVE=1`, to `VAS_NOTEBOOK_FIGURES` (default: the repository's docs/figures).

# %%
import os
from pathlib import Path

SAVE_FIGURES = os.environ.get("VAS_NOTEBOOK_SAVE") == "1"
SCALE = os.environ.get("VAS_NOTEBOOK_SCALE", "ci")
_here = Path.cwd()
FIGURES = Path(os.environ.get("VAS_NOTEBOOK_FIGURES") or
               (_here.parent if _here.name == "examples" else _here) / "docs" / "figures")

SIZES = {
    # collect_prompts x samples_per_prompt base samples of up to max_tokens tokens to train on;
    # steer_prompts other training prompts (never the held-out ones) to steer on.
    "ci": dict(collect_prompts=8, samples_per_prompt=4, max_tokens=16, steer_prompts=2,
               betas=[0.0, 2.0, 8.0], grid=[0.0, 4.0], best_of=[1, 2, 4], rerank_n=4),
    "full": dict(collect_prompts=16, samples_per_prompt=6, max_tokens=40, steer_prompts=6,
                 betas=[0.0, 2.0, 4.0, 8.0], grid=[0.0, 3.0, 6.0], best_of=[1, 2, 4, 8],
                 rerank_n=8),
}
if SCALE not in SIZES:
    raise ValueError(f"VAS_NOTEBOOK_SCALE must be one of {sorted(SIZES)}, got {SCALE!r}")
P = SIZES[SCALE]
print(f"scale={SCALE}, save figures={SAVE_FIGURES} -> {FIGURES}", P)

# %%
import re
import statistics
import tempfile

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # figures are shown inline below and saved as PNG; no display needed
import matplotlib.pyplot as plt
import torch
from IPython.display import Image, display

import estimators
from estimators.baselines import PrefixRewardValue
from estimators.collect import as_prompt, collect
from estimators.data import read_prompts
from estimators.rewards import Reward, VaderReward
from estimators.train import TrainConfig, train
from vas_api.local import LocalServer
from vas_api.types import Prefix

torch.set_num_threads(1)  # a small model on a busy small CPU: one thread is the fastest
# Samples, the checkpoint and inline PNGs go here (VAS_NOTEBOOK_WORKDIR, else a fresh temp dir).
WORK = Path(os.environ.get("VAS_NOTEBOOK_WORKDIR") or tempfile.mkdtemp(prefix="vas-notebook-"))
WORK.mkdir(parents=True, exist_ok=True)


def show(fig, name: str) -> None:
    """Display a figure inline, and save it as docs/figures/<name>.png when asked to."""
    if SAVE_FIGURES:
        FIGURES.mkdir(parents=True, exist_ok=True)
        fig.savefig(FIGURES / f"{name}.png", dpi=110, bbox_inches="tight")
    path = WORK / f"{name}.png"
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    display(Image(filename=str(path)))


def sem(xs) -> float:
    """Standard error of the mean (0 for fewer than two values)."""
    return statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0


# %% [markdown]
# ## 1. Start the local server and collect base samples
# Training data are plain temperature-1 samples of the frozen base, drawn through the same API
# the value model will steer (`collect` sets the server's own samplers to neutral values).

# %%
server = LocalServer().start()
plain = server.wrap()  # a VAS client; its provider draws plain base samples
provider = plain.provider(server.model)

all_prompts = read_prompts(Path(estimators.__file__).parent / "data" / "train_prompts.txt")
train_prompts = [as_prompt(p) for p in all_prompts[: P["collect_prompts"]]]
steer_prompts = [as_prompt(p) for p in all_prompts[-P["steer_prompts"]:]]  # not trained on

# %% [markdown]
# ## 2. A reward of your own
# Any function `(prompts, completions) -> list[float]` with a `description` is an estimators
# `Reward`. This one counts concrete details in a review: numbers and durations, and mentions
# of price, capped at 3 and scaled to [0, 1]. Readable, cheap, and not a sentiment score.

# %%
_PRICE = re.compile(r"\$|€|£|\b(?:price[sd]?|cheap|expensive|costs?|pricey|affordable|money|budget)\b", re.I)
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|"
                     r"minutes?|hours?|days?|weeks?|months?|years?)\b", re.I)


def concrete_details(prompts: list[str], completions: list[str]) -> list[float]:
    """Numbers, durations and price mentions in each completion: min(count, 3) / 3."""
    return [min(3, len(_PRICE.findall(c)) + len(_NUMBER.findall(c))) / 3 for c in completions]


concrete_details.description = "concrete-details"
assert isinstance(concrete_details, Reward)
print(concrete_details([""], ["It cost $40 and took two hours."]))  # price, 40, two, hours -> 1.0

# %%
samples_path = WORK / "samples.jsonl"
summary = collect(provider, train_prompts, samples_path, n=P["samples_per_prompt"],
                  max_tokens=P["max_tokens"], reward=concrete_details, progress=False)
print(summary.line())

# %% [markdown]
# ## 3. Train a small value model
# TD(lambda) on the stored rewards (`reward=None`), two backbone layers, five passes at lr 1e-3:
# about a minute on a CPU. With this little data a cautious schedule (one pass at lr 1e-4) leaves
# the value head near zero; these settings were picked on other training prompts (never the ones
# steered on below), where V at half a response reached a Spearman of 0.39 with the final reward
# and one pass at 1e-4 -0.05. The validation split holds out whole prompts.

# %%
result = train(TrainConfig(data=str(samples_path), output_dir=str(WORK / "details-vm"), reward=None,
                           num_layers=2, passes=5, batch_size=8, epochs_per_batch=2, lr=1e-3,
                           heldout_fraction=0.25, num_threads=1), progress=False)
learned = result.model
print(f"trained {result.batches} batches in {result.seconds:.0f} s; validation: {result.metrics}")

# %% [markdown]
# ## 4. Steer with it: reward against beta
# Each value function steers the same prompts with the same seeds at several betas (beta = 0
# is the base model). The baseline is the prefix reward: the reward of the response so far,
# free here, but myopic.

# %%
MAX_TOKENS = P["max_tokens"]
prefix_details = PrefixRewardValue(concrete_details)


def steer(client, prompts, **vas):
    """One response per prompt (seeded by its index); the texts and their VAS reports."""
    texts, reports = [], []
    for i, msgs in enumerate(prompts):
        resp = client.chat.completions.create(model=server.model, messages=msgs,
                                              max_tokens=MAX_TOKENS, seed=1000 + i, **vas)
        texts.append(resp.choices[0].message.content)
        reports.append(resp.vas)
    return texts, reports


client = server.wrap(mode="speculative")
by_beta = {}
for name, vf in [("learned", learned), ("prefix reward", prefix_details)]:
    for beta in P["betas"]:
        texts, _ = steer(client, steer_prompts, value_model=vf, beta=beta)
        by_beta[name, beta] = concrete_details([""] * len(texts), texts)

fig, ax = plt.subplots(figsize=(6, 4))
for name in ("learned", "prefix reward"):
    ys = [by_beta[name, b] for b in P["betas"]]
    ax.errorbar(P["betas"], [statistics.fmean(y) for y in ys], yerr=[sem(y) for y in ys],
                marker="o", capsize=3, label=name)
ax.set(xlabel="beta", ylabel="concrete-details reward (mean, SEM bars)",
       title=f"Reward against beta (n = {len(steer_prompts)} prompts, {MAX_TOKENS} tokens, SmolLM2-135M)")
ax.legend()
show(fig, "reward_vs_beta")

# %% [markdown]
# ## 5. Compose two value functions
# Value functions add at request time, each with its own beta: here the learned details model
# and the prefix value of VADER sentiment. A small (beta_1, beta_2) grid draws the trade-off.

# %%
sentiment = PrefixRewardValue(VaderReward())
vader = VaderReward()
points = []
for b1 in P["grid"]:
    for b2 in P["grid"]:
        texts, _ = steer(client, steer_prompts, value_model=[learned, sentiment], beta=[b1, b2])
        blank = [""] * len(texts)
        points.append((b1, b2, statistics.fmean(concrete_details(blank, texts)),
                       statistics.fmean(vader(blank, texts))))

fig, ax = plt.subplots(figsize=(6, 4.5))
sc = ax.scatter([p[2] for p in points], [p[3] for p in points], c=[p[1] - p[0] for p in points],
                cmap="coolwarm", s=60)
for b1, b2, x, y in points:
    ax.annotate(f"({b1:g}, {b2:g})", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
fig.colorbar(sc, label="beta_sentiment - beta_details")
ax.set(xlabel="concrete-details reward (mean)", ylabel="VADER sentiment (mean)",
       title=f"Composition: (beta_details, beta_sentiment) grid\n(n = {len(steer_prompts)} prompts per point)")
show(fig, "composition")

# %% [markdown]
# ## 6. Reward against billed tokens: VAS modes and Best-of-N
# The same learned value model at beta = 4 in three modes: speculative (exact token-level VAS,
# few calls), token (one call per token) and rerank (N whole responses, one picked by V).
# Best-of-N keeps the sample with the highest TRUE reward of N plain base samples: an oracle
# that calls the reward on every sample. Billed tokens are summed over every call.

# %%
BETA = 4.0
costs = {}
for mode, extra in [("speculative", {}), ("token", {}), ("rerank", {"rerank_n": P["rerank_n"]})]:
    texts, reports = steer(server.wrap(mode=mode), steer_prompts, value_model=learned, beta=BETA, **extra)
    costs[mode] = (statistics.fmean(concrete_details([""] * len(texts), texts)),
                   statistics.fmean(r.usage.total_tokens for r in reports))

pools = []  # per prompt: (reward, billed tokens) of each plain sample, in order
for i, msgs in enumerate(steer_prompts):
    pool = []
    for j in range(max(P["best_of"])):
        s = provider.sample(Prefix(msgs), n=1, max_tokens=MAX_TOKENS, seed=5000 + 100 * i + j)
        pool.append((concrete_details([""], [s.completions[0].text])[0], s.usage.total_tokens))
    pools.append(pool)
best_of = {n: (statistics.fmean(max(r for r, _ in pool[:n]) for pool in pools),
               statistics.fmean(sum(t for _, t in pool[:n]) for pool in pools)) for n in P["best_of"]}

fig, ax = plt.subplots(figsize=(6, 4))
ax.plot([best_of[n][1] for n in P["best_of"]], [best_of[n][0] for n in P["best_of"]], "o-",
        color="grey", label="Best-of-N (true reward)")
for n in P["best_of"]:
    ax.annotate(f"N={n}", (best_of[n][1], best_of[n][0]), textcoords="offset points", xytext=(4, -10), fontsize=8)
for mode, (r, t) in costs.items():
    ax.scatter([t], [r], s=70, label=f"VAS {mode}, beta={BETA:g}")
ax.set(xscale="log", xlabel="billed tokens per response (prompt + completion, log)",
       ylabel="concrete-details reward (mean)",
       title=f"Reward against billed tokens (n = {len(steer_prompts)} prompts, {MAX_TOKENS} tokens)")
ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # unlabelled minor ticks
ax.legend(fontsize=8)
show(fig, "reward_vs_tokens")

# %% [markdown]
# ## 7. See the push
# `resp.vas` renders in a notebook as the response with every token shaded by how far the
# value model moved it (green: pushed up, red: pushed down; hover for the numbers). Below it,
# the same trace drawn with matplotlib.

# %%
resp = client.chat.completions.create(model=server.model, messages=steer_prompts[0], value_model=learned,
                                      beta=BETA, max_tokens=MAX_TOKENS, seed=7)
display(resp.vas)


def draw_trace(trace, title: str, width: int = 90):
    """The committed tokens laid out in monospace, each shaded by its value shift."""
    cmap, lim = plt.get_cmap("RdYlGn"), max(1e-6, max(abs(s.shift) for s in trace))
    cells, line, col = [], 0, 0  # (line, column, text, shift)
    for s in trace:
        text = "<end>" if s.special else s.text
        for k, piece in enumerate(text.split("\n")):
            if k:
                line, col = line + 1, 0
            if col + len(piece) > width:
                line, col = line + 1, 0
            if piece:
                cells.append((line, col, piece, s.shift))
                col += len(piece)
    lines = line + 1
    fig_w, text_h = 10.0, 0.3 * lines
    fig = plt.figure(figsize=(fig_w, text_h + 1.4))
    ax = fig.add_axes((0.02, 0.9 / (text_h + 1.4), 0.96, text_h / (text_h + 1.4)))
    ax.set(xlim=(0, width), ylim=(lines, 0))
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    # One column of the grid is one monospace character: 0.6 em wide in DejaVu Sans Mono.
    size = fig_w * 0.96 * 72 / width / 0.602
    for ln, c, piece, shift in cells:
        ax.text(c, ln + 0.1, piece, family="DejaVu Sans Mono", fontsize=size, va="top",
                bbox=dict(boxstyle="square,pad=0.1", lw=0, fc=cmap(0.5 + 0.5 * shift / lim)))
    cax = fig.add_axes((0.25, 0.25 / (text_h + 1.4), 0.5, 0.15 / (text_h + 1.4)))
    fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(-lim, lim), cmap=cmap), cax=cax,
                 orientation="horizontal", label="value shift beta * (V - mean V) of the token")
    return fig


show(draw_trace(resp.vas.traces[0], f"{steer_prompts[0][0]['content']}\n"
                f"learned details model, beta = {BETA:g}, {len(resp.vas.traces[0])} tokens"), "shaded_tokens")

# %%
server.stop()
