"""A value model's own rendering of (conversation or prompt, response): its canonical form.

A value model reads text, but which text? Not the base model's chat template: a value model
trained on SmolLM2's ``<|im_start|>assistant`` text would meet Gemma's ``<start_of_turn>model``
text, a raw completions prompt, or a hosted chat model with no rendered template at all. So a
value model renders the prompt itself, in the form recorded in its checkpoint (config.json
``prompt_format``), trains on that form, and is always told where the prompt ends: the caller
passes the prompt and the response separately, nothing is found by searching for a marker.

    fmt = PromptFormat()                                  # ChatML, no default system turn
    prompt_text = fmt.render([{"role": "user", "content": "Hi"}])
    # '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'; the response follows it

A raw completions prompt (a string) renders as one user turn: the value model judges the
response to that text, whatever the base made of it.

Checkpoints written before this field existed have no ``prompt_format``: they keep scoring the
base's rendered text (their old behaviour), unless the caller declares the form they were
trained on (`SMOLLM2_CHATML` for the ones trained on the embedded SmolLM2's samples).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vas_api.errors import CheckpointError, ConfigError

__all__ = ["PromptFormat", "DEFAULT_FORMAT", "SMOLLM2_CHATML", "prompt_text_for", "values_for"]

_FORMATS = ("chatml",)


@dataclass(frozen=True)
class PromptFormat:
    """How a value model renders a prompt (the response is appended as it is).

    Attributes:
        name: the layout; "chatml" (``<|im_start|>role\\ncontent<|im_end|>\\n`` per turn, then
            ``<|im_start|>assistant\\n``) is the one there is.
        system: a system turn put first when the conversation has none (None: no system turn).
    """

    name: str = "chatml"
    system: str | None = None

    def __post_init__(self) -> None:
        if self.name not in _FORMATS:
            raise ConfigError(f"prompt format {self.name!r} is unknown; use one of {', '.join(_FORMATS)}.")
        if self.system is not None and not isinstance(self.system, str):
            raise ConfigError(f"prompt format system must be a string or None, got {self.system!r}.")

    def render(self, prompt: str | Sequence[dict[str, Any]]) -> str:
        """The text the value model reads before the response.

        Args:
            prompt: a raw prompt (one user turn) or chat messages (content a string or a list of
                text blocks, as OpenAI and Anthropic accept).

        Raises:
            ConfigError: an empty prompt or a message without role/content text.
        """
        turns = _turns(prompt)
        if self.system is not None and not any(role == "system" for role, _ in turns):
            turns = [("system", self.system), *turns]
        return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"

    def to_json(self) -> dict[str, Any]:
        """The dict saved as config.json ``prompt_format``."""
        return {"version": 1, **asdict(self)}

    @classmethod
    def from_json(cls, value: Any, where: Any = "") -> PromptFormat:
        """Read a saved ``prompt_format``.

        Raises:
            CheckpointError: not a dict of a known format.
        """
        if not isinstance(value, dict) or value.get("version") != 1:
            raise CheckpointError(f"{where}: prompt_format {value!r} is not a version-1 prompt format.")
        try:
            return cls(name=value.get("name", ""), system=value.get("system"))
        except ConfigError as exc:
            raise CheckpointError(f"{where}: {exc}") from exc


DEFAULT_FORMAT = PromptFormat()
"""What new value models render: ChatML without a default system turn."""

SMOLLM2_CHATML = PromptFormat(system="You are a helpful AI assistant named SmolLM, trained by Hugging Face")
"""SmolLM2-Instruct's own template, as ChatML: the exact text a checkpoint trained on the embedded
base's chat samples (before prompt formats were recorded) was trained on."""


def _content_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) and isinstance(b.get("text"), str) for b in content):
        return "".join(b["text"] for b in content)
    raise ConfigError(f"message {i}: content must be a string or a list of text blocks, got {content!r}.")


def _turns(prompt: Any) -> list[tuple[str, str]]:
    if isinstance(prompt, str):
        if not prompt:
            raise ConfigError("the prompt is empty.")
        return [("user", prompt)]
    if not isinstance(prompt, list | tuple) or not prompt:
        raise ConfigError(f"a prompt is a non-empty string or list of chat messages, got {prompt!r}.")
    turns = []
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ConfigError(f"message {i} must be a dict with 'role' and 'content', got {m!r}.")
        turns.append((m["role"], _content_text(m.get("content", ""), i)))
    return turns


def prompt_text_for(value_fn: Any, prompt: Any, base_prompt_text: str) -> str:
    """The prompt text `value_fn` scores: its own rendering, or (a function without one, or a
    checkpoint from before prompt formats) the base's rendered `base_prompt_text`."""
    render = getattr(value_fn, "render_prompt", None)
    own = render(prompt) if render is not None else None
    return base_prompt_text if own is None else own


def values_for(value_fn: Any, prompt_texts: Sequence[str], responses: Sequence[str]) -> Any:
    """V(prompt + response) for each pair, telling a value function that takes it where each
    prompt ends (`values(texts, prompt_lens=...)`); others get the texts alone."""
    texts = [p + r for p, r in zip(prompt_texts, responses, strict=True)]
    if getattr(value_fn, "render_prompt", None) is not None:
        return value_fn.values(texts, prompt_lens=[len(p) for p in prompt_texts])
    return value_fn.values(texts)
