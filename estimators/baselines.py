"""Value functions that are not (only) learned: a reward applied to the prefix, and a residual
value model that starts exactly at that baseline and learns a correction.

Both satisfy `vas_api.types.ValueFunction`, so they go wherever a value model goes. A reward
wants (prompt, completion), so these need to know where the prompt ends. They render the prompt
themselves (`render_prompt`, the canonical form of `estimators.prompt_format`) and are told
where it ends (`prompt_lens=` / `prompt_len=`): the client passes the prompt and the response
separately, so nothing is searched for and any base, template or raw prompt works.

Without that information (a caller of the plain `values(texts)`, or a residual checkpoint from
before prompt formats) they fall back to a *prompt split*: a function text -> (prompt_text,
response_so_far), by default cutting after the last ChatML assistant header
("<|im_start|>assistant\\n", also the end of the canonical form); `split_after_prompt(prompt_text)`
handles raw-text prompts when the prompt is known. Only marker splits are saved in checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from vas_api.errors import CheckpointError, ConfigError, ValueModelError
from vas_api.types import END_OF_TEXT

from .prompt_format import DEFAULT_FORMAT, PromptFormat
from .rewards import Reward, build_reward, compute_rewards

if TYPE_CHECKING:
    from .value_model import ValueModel

__all__ = [
    "CHATML_ASSISTANT",
    "PromptSplit",
    "split_after_marker",
    "split_after_prompt",
    "PrefixRewardValue",
    "ResidualValueModel",
    "load_value_function",
]

CHATML_ASSISTANT = "<|im_start|>assistant\n"
"""The generation prompt of ChatML templates (SmolLM2, Qwen): the response starts after it."""

PromptSplit = Callable[[str], tuple[str, str]]


def split_after_marker(marker: str) -> PromptSplit:
    """A split that ends the prompt after the last occurrence of `marker`.

    The returned function raises ValueModelError for a text without the marker, since guessing
    would silently score the prompt as if it were the response.
    """
    if not marker:
        raise ConfigError("the prompt marker must not be empty")

    def split(text: str) -> tuple[str, str]:
        at = text.rfind(marker)
        if at < 0:
            raise ValueModelError(
                f"text has no prompt marker {marker!r}, so the response cannot be told apart "
                f"from the prompt: {text[:60]!r}...; pass prompt_split=split_after_prompt(...) "
                "or the marker of your chat template"
            )
        cut = at + len(marker)
        return text[:cut], text[cut:]

    split.marker = marker  # type: ignore[attr-defined]  # lets checkpoints record it
    return split


def split_after_prompt(prompt_text: str) -> PromptSplit:
    """A split for texts that all start with one known prompt text (raw-completion prompts)."""

    def split(text: str) -> tuple[str, str]:
        if not text.startswith(prompt_text):
            raise ValueModelError(f"text does not start with the prompt {prompt_text[:40]!r}...")
        return prompt_text, text[len(prompt_text) :]

    return split


def _as_split(prompt_split: str | PromptSplit) -> PromptSplit:
    return split_after_marker(prompt_split) if isinstance(prompt_split, str) else prompt_split


class PrefixRewardValue:
    """V(text) = reward(prompt, response so far): the reward-guided-search baseline.

    Free when the reward is cheap (VADER: ~0.35 ms a text); myopic, since a half-written
    response is scored as if it were finished. A finished text (ending with
    `vas_api.END_OF_TEXT`) gets the reward of the text without the marker, so it has no
    `scores_end_of_text` flag: the marker would change nothing.

    Args:
        reward: a Reward or a reward spec string ("vader", "length:target=40", ...).
        prompt_split: for texts that come without their prompt's end: a marker string (split
            after its last occurrence) or a function text -> (prompt_text, response); default:
            the ChatML assistant header.
        prompt_format: how `render_prompt` renders prompts (the reward then sees this text as
            the prompt).
    """

    def __init__(
        self,
        reward: Reward | str,
        prompt_split: str | PromptSplit = CHATML_ASSISTANT,
        prompt_format: PromptFormat = DEFAULT_FORMAT,
    ) -> None:
        self.reward = build_reward(reward) if isinstance(reward, str) else reward
        self.split = _as_split(prompt_split)
        self.marker: str | None = getattr(self.split, "marker", None)
        self.prompt_format = prompt_format
        self.description = f"prefix-reward({self.reward.description})"

    def render_prompt(self, prompt: str | Sequence[dict[str, Any]]) -> str:
        """The prompt text the reward is given, in this function's canonical form."""
        return self.prompt_format.render(prompt)

    def values(self, texts: Sequence[str], *, prompt_lens: Sequence[int] | None = None) -> list[float]:
        """The reward of each text's response-so-far, shape (B,).

        Args:
            texts: rendered prompt + response so far.
            prompt_lens: where each text's prompt ends (characters); None splits each text with
                the prompt split instead.

        Raises:
            ValueModelError: a text cannot be split into prompt and response.
            RewardError: the reward failed or returned a non-finite value.
        """
        if not texts:
            return []
        if prompt_lens is not None:
            if len(prompt_lens) != len(texts):
                raise ValueModelError(f"{len(prompt_lens)} prompt_lens for {len(texts)} texts.")
            pairs = [(t[:n], t[n:]) for t, n in zip(texts, prompt_lens, strict=True)]
        else:
            pairs = [self.split(t) for t in texts]
        # A finished text's reward is the reward of its text (the marker is no text).
        pairs = [(p, c[: -len(END_OF_TEXT)] if c.endswith(END_OF_TEXT) else c) for p, c in pairs]
        return compute_rewards(self.reward, [p for p, _ in pairs], [c for _, c in pairs])

    def score_candidates(
        self, prefix_text: str, candidate_texts: Sequence[str], *, prompt_len: int | None = None
    ) -> list[float]:
        """V(prefix_text + c) for each candidate c, shape (k,); `prompt_len` as in `values`."""
        lens = None if prompt_len is None else [prompt_len] * len(candidate_texts)
        return self.values([prefix_text + c for c in candidate_texts], prompt_lens=lens)


class ResidualValueModel(torch.nn.Module):
    """V(s) = reward(prefix of s) + a learned correction.

    The correction is a ValueModel whose value head starts at zero, so before training this
    is exactly `PrefixRewardValue`; TD(lambda) training (`estimators.train` with residual=True)
    fits the correction on the same targets as a plain value model. Saved as an ordinary
    ValueModel checkpoint whose metadata has {"residual": {"reward": spec, "prompt_marker":
    marker}}, from which `load` rebuilds the baseline.

    Args:
        model: the correction (a ValueModel).
        baseline: the reward-on-prefix part.
    """

    def __init__(self, model: ValueModel, baseline: PrefixRewardValue) -> None:
        super().__init__()
        self.model = model
        self.baseline = baseline

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def scores_end_of_text(self) -> bool:
        """The correction model's end state decides (the baseline strips the marker)."""
        return self.model.scores_end_of_text

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, base_values: torch.Tensor
    ) -> torch.Tensor:
        """(B, T) values: `base_values` (the reward of each prefix, precomputed) + correction."""
        return base_values + self.model(input_ids, attention_mask)

    def render_prompt(self, prompt: str | Sequence[dict[str, Any]]) -> str | None:
        """The correction model's own prompt rendering (None for a checkpoint without one)."""
        return self.model.render_prompt(prompt)

    def values(self, texts: Sequence[str], *, prompt_lens: Sequence[int] | None = None) -> torch.Tensor:
        """V(text) for each text, shape (B,); `prompt_lens` as in `PrefixRewardValue.values`."""
        correction = self.model.values(list(texts))
        base = torch.tensor(self.baseline.values(texts, prompt_lens=prompt_lens), dtype=correction.dtype)
        return base.to(correction.device) + correction

    def score_candidates(
        self, prefix_text: str, candidate_texts: Sequence[str], *, prompt_len: int | None = None
    ) -> torch.Tensor:
        """V(prefix_text + c) for each candidate c, shape (k,)."""
        correction = self.model.score_candidates(prefix_text, list(candidate_texts))
        base = torch.tensor(
            self.baseline.score_candidates(prefix_text, candidate_texts, prompt_len=prompt_len),
            dtype=correction.dtype,
        )
        return base.to(correction.device) + correction

    def score_draft(
        self, prefix_text: str, path: Sequence[str], candidates: Sequence[Sequence[str]], *,
        prompt_len: int | None = None,
    ) -> list[torch.Tensor]:
        """`ValueModel.score_draft` (one forward for a whole drafted path) plus the reward of
        each candidate's prefix; one (k_i,) tensor per position."""
        corrections = self.model.score_draft(prefix_text, path, candidates)
        texts = [
            prefix_text + "".join(path[:i]) + c for i, cands in enumerate(candidates) for c in cands
        ]
        lens = None if prompt_len is None else [prompt_len] * len(texts)
        base = iter(self.baseline.values(texts, prompt_lens=lens))
        return [
            torch.tensor([next(base) for _ in cands], dtype=corr.dtype).to(corr.device) + corr
            for cands, corr in zip(candidates, corrections, strict=True)
        ]

    def score_many(
        self,
        requests: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]],
        keys: Sequence[Any] | None = None,
    ) -> list[list[torch.Tensor]]:
        """`score_draft` for several requests: the corrections in one batched forward
        (`ValueModel.score_many`, a KV cache per key), plus each candidate's prefix reward."""
        corrections = self.model.score_many(requests, keys=keys)
        out = []
        for (prefix_text, path, candidates), corr in zip(requests, corrections, strict=True):
            texts = [prefix_text + "".join(path[:i]) + c for i, cands in enumerate(candidates) for c in cands]
            base = iter(self.baseline.values(texts))
            out.append([
                torch.tensor([next(base) for _ in cands], dtype=c.dtype).to(c.device) + c
                for cands, c in zip(candidates, corr, strict=True)
            ])
        return out

    def release(self, key: Any) -> None:
        """Drop the KV cache kept for `key` (see `ValueModel.release`)."""
        self.model.release(key)

    def residual_metadata(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild the baseline."""
        if self.model.config.prompt_format is not None:
            # The prompt's end always comes with the text; the marker is only the fallback.
            return {"reward": self.baseline.reward.description, "prompt_marker": self.baseline.marker}
        if self.baseline.marker is None:
            raise CheckpointError(
                "only residual models with a marker prompt split can be saved "
                "(a custom split function cannot be written to JSON)"
            )
        return {"reward": self.baseline.reward.description, "prompt_marker": self.baseline.marker}

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Save as a ValueModel checkpoint that names its reward and prompt marker."""
        self.model.config.metadata["residual"] = self.residual_metadata()
        self.model.save(directory)

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], device: str | torch.device | None = None
    ) -> ResidualValueModel:
        """Load a residual checkpoint.

        Raises:
            CheckpointError: missing/corrupt checkpoint, or not a residual one.
        """
        from .value_model import ValueModel

        model = ValueModel.load(directory, device=device)
        return cls.from_value_model(model, directory)

    @classmethod
    def from_value_model(cls, model: ValueModel, where: Any = "") -> ResidualValueModel:
        """Wrap a loaded ValueModel whose metadata names its residual baseline."""
        info = (model.config.metadata or {}).get("residual")
        if not isinstance(info, dict) or "reward" not in info or "prompt_marker" not in info:
            raise CheckpointError(f"checkpoint {where} is not a residual value model")
        marker = info["prompt_marker"] or CHATML_ASSISTANT
        try:
            fmt = model.prompt_format or DEFAULT_FORMAT
            baseline = PrefixRewardValue(info["reward"], marker, prompt_format=fmt)
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {where} names a bad reward: {exc}") from exc
        return cls(model, baseline)


def load_value_function(
    directory: str | os.PathLike[str],
    device: str | torch.device | None = None,
    *,
    prompt_format: PromptFormat | None = None,
) -> ValueModel | ResidualValueModel:
    """Load a saved value model, residual or plain, as its metadata says.

    Args:
        directory: the checkpoint.
        device: where to put it (default CUDA when available).
        prompt_format: declare the canonical form of a checkpoint saved before prompt formats
            were recorded (e.g. `SMOLLM2_CHATML` for one trained on the embedded SmolLM2's chat
            samples), so it scores its own rendering instead of the base's text.

    Raises:
        CheckpointError: the directory is missing or not a valid checkpoint, or prompt_format
            contradicts the one the checkpoint records.
    """
    from .value_model import ValueModel

    model = ValueModel.load(directory, device=device)
    if prompt_format is not None:
        saved = model.config.prompt_format
        if saved is not None and saved != prompt_format.to_json():
            raise CheckpointError(
                f"{directory} records prompt_format {saved}; it cannot be read as {prompt_format.to_json()}."
            )
        model.config.prompt_format = prompt_format.to_json()
    if (model.config.metadata or {}).get("residual"):
        return ResidualValueModel.from_value_model(model, directory)
    return model
