"""Render chat messages to the exact prompt text a model continues, as Hugging Face does.

The environment matches ``transformers.utils.chat_template_utils`` (and llama-cpp-python's
Jinja2ChatFormatter, which copies it): a sandboxed, immutable Jinja environment with
``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, ``{% generation %}``
accepted as a pass-through tag, a ``tojson`` filter that does not HTML-escape, and the
``raise_exception`` / ``strftime_now`` globals. Templates come from Hub repositories and GGUF
files, i.e. they are untrusted code: that is why the sandbox is not optional.

Sources: a GGUF file's ``tokenizer.chat_template`` metadata, a Hugging Face tokenizer (name or
path, offline), or a Jinja string given by the user.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ConfigError

__all__ = ["ChatTemplate", "load_chat_template"]


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` renders its body (HF uses it to mark the
    assistant's tokens for training masks; the text is the same)."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes <, >, & for HTML; chat templates need the plain JSON.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template plus the special tokens it refers to.

    Attributes:
        source: the Jinja text.
        bos_token: the model's beginning-of-sequence text (templates often print it).
        eos_token: the model's end-of-sequence text.
        special_tokens: control-token strings of the vocabulary (end-of-turn markers etc.);
            providers read them as end-of-sequence when a server spells them out.
        origin: where the template came from, for messages.
    """

    source: str
    bos_token: str = ""
    eos_token: str = ""
    special_tokens: tuple[str, ...] = ()
    origin: str = "string"
    extra_context: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def _compiled(self) -> jinja2.Template:
        try:
            return _environment().from_string(self.source)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(
                f"the chat template from {self.origin} is not valid Jinja: {exc}"
            ) from exc

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """The prompt text for `messages`, ending with the assistant header by default.

        Args:
            messages: OpenAI-style chat messages ({"role": ..., "content": ...}).
            add_generation_prompt: append the assistant turn's opening (HF's flag).
            **kwargs: more template variables (tools, documents, ...).

        Returns:
            The rendered text.

        Raises:
            ConfigError: the template is invalid or raised (``raise_exception``) for these
                messages, e.g. roles it does not accept.
        """
        context = {
            **self.extra_context,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **kwargs,
            "messages": [dict(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            return self._compiled.render(**context)
        except jinja2.TemplateError as exc:
            raise ConfigError(
                f"the chat template from {self.origin} refused these messages: {exc}"
            ) from exc

    @property
    def end_tokens(self) -> frozenset[str]:
        """Strings that mark an end of sequence for this model (eos and control tokens)."""
        return frozenset(t for t in (self.eos_token, *self.special_tokens) if t)

    # -- constructors -----------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, path: str | Path) -> ChatTemplate:
        """The template stored in a GGUF file's ``tokenizer.chat_template``.

        Raises:
            DataError: the file cannot be read.
            ConfigError: the file has no chat template.
        """
        from .gguf_meta import gguf_special_tokens

        info = gguf_special_tokens(str(Path(path).resolve()))
        if not info["chat_template"]:
            raise ConfigError(
                f"{path} has no tokenizer.chat_template; pass chat_template= as a Jinja string "
                "or a Hugging Face tokenizer name."
            )
        return cls(
            str(info["chat_template"]),
            bos_token=info["bos_token"],
            eos_token=info["eos_token"],
            special_tokens=tuple(info["control_tokens"]),
            origin=str(path),
        )

    @classmethod
    def from_hf(cls, name_or_path: str) -> ChatTemplate:
        """The template of a Hugging Face tokenizer, loaded offline (local path or HF cache).

        Raises:
            ConfigError: the tokenizer is not available offline or has no chat template.
        """
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
        except Exception as exc:  # transformers raises OSError, ValueError, ... here
            raise ConfigError(
                f"cannot load the tokenizer {name_or_path!r} offline ({exc}); download it once "
                "(huggingface-cli download NAME) or pass the chat template as a string."
            ) from exc
        template = tok.chat_template
        if isinstance(template, dict):  # named templates: "default" is what HF renders
            template = template.get("default") or next(iter(template.values()), None)
        if not template:
            raise ConfigError(f"the tokenizer {name_or_path!r} has no chat template.")
        specials = tuple(str(t) for t in getattr(tok, "all_special_tokens", []) or [])
        return cls(
            str(template),
            bos_token=str(tok.bos_token or ""),
            eos_token=str(tok.eos_token or ""),
            special_tokens=specials,
            origin=name_or_path,
        )


def load_chat_template(
    spec: ChatTemplate | str | Path,
    *,
    bos_token: str = "",
    eos_token: str = "",
    special_tokens: Iterable[str] = (),
) -> ChatTemplate:
    """A ChatTemplate from whatever the user passed.

    Args:
        spec: a ChatTemplate; a path to a .gguf file; a Jinja string (anything containing
            ``{%`` or ``{{``); otherwise a Hugging Face tokenizer name or directory.
        bos_token, eos_token, special_tokens: used for a Jinja string only.

    Raises:
        ConfigError, DataError: the template cannot be found or loaded.
    """
    if isinstance(spec, ChatTemplate):
        return spec
    text = str(spec)
    if "{%" in text or "{{" in text:
        return ChatTemplate(
            text, bos_token=bos_token, eos_token=eos_token,
            special_tokens=tuple(special_tokens), origin="a string",
        )
    if text.lower().endswith(".gguf"):
        return ChatTemplate.from_gguf(text)
    return ChatTemplate.from_hf(text)
