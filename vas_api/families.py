"""ONE table of OpenAI-compatible server families: how to recognize each, and how to sample
from its base distribution.

Every server-family fact the probe and the request builder use lives in `FAMILIES`; nothing
else in vas-api switches on a server's name. A family says:

- how to recognize it: the ``owned_by`` values its ``GET /v1/models`` lists, and whether it
  answers ``GET /props`` (llama.cpp's server does, with ``default_generation_settings``);
- `neutral`: the request fields that switch off *every* sampler of its chain except temperature
  (the OpenAI ones, temperature/top_p/presence/frequency, are always sent as well); where the
  server cannot be told (`neutral_exact` False), drafts do not follow the reported logprobs;
- `top_k_param`: it takes a top_k sampling field; `top_k_off`: the top_k value that disables it;
- `token_id_prompts`: /v1/completions takes ``prompt`` as a list of token ids;
  `tokenize`: it has /tokenize and /detokenize; `apply_template`: it has /apply-template;
- `min_tokens_for_eos`: a candidates call sends min_tokens=1 (see
  `vas_api.providers.openai_wire.candidates_flow`); `chat_continue`: chat continues a final
  assistant message with continue_final_message=true; `completions`: string prompts may use
  /v1/completions.

Sources (checked with the docs search, 2026-12-01): llama.cpp tools/server/README.md and
server-schema.cpp of the llama.cpp that llama-cpp-python 0.3.36 vendors (sampler fields, the
default chain ``penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature``, the
``samplers`` field, ``n`` as an alias of ``n_cmpl``, ``owned_by: "llamacpp"``); llama-cpp-python
0.3.36's server (measured: ``owned_by: "me"``, defaults top_k 40, top_p 0.95, min_p 0.05,
repeat_penalty 1.1); vLLM ``SamplingParams`` (top_k -1 disables, min_p 0, repetition_penalty 1);
SGLang (the same fields as vLLM); Ollama's OpenAI-compatibility page (its /v1 endpoints take
temperature, top_p, presence/frequency penalty, seed and stop only, so its model defaults for
top_k, min_p and repeat_penalty stay in force; ``owned_by: "library"``); LM Studio (its OpenAI
endpoints take top_k, min_p and repeat_penalty; ``owned_by: "organization_owner"``, undocumented);
TGI (its OpenAI messages API takes temperature, top_p, presence/frequency penalty; it has no
owned_by of its own, so it is recognized only when named).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["ServerFamily", "FAMILIES", "family", "family_from_owned_by", "LLAMA_SERVER_CHAIN"]

LLAMA_SERVER_CHAIN: tuple[str, ...] = (
    "penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature",
)
"""llama-server's default sampler chain (``--samplers``); the dist sampler always ends it."""


@dataclass(frozen=True)
class ServerFamily:
    """What vas-api knows about one kind of OpenAI-compatible server (see the module docstring).

    Attributes:
        key: the family's id, stored in `ProviderProfile.family`.
        name: a human name for messages.
        owned_by: the ``owned_by`` values of its /v1/models entries.
        has_props: it answers ``GET /props`` (llama.cpp's server).
        neutral: request fields (beyond the OpenAI ones) that make every sampler a no-op.
        neutral_exact: `neutral` switches off the whole chain, so samples follow the logprobs.
        top_k_param: it accepts a top_k sampling field.
        top_k_off: the top_k value that disables top-k.
        token_id_prompts: /v1/completions takes a prompt as a list of token ids.
        tokenize: it has /tokenize and /detokenize.
        apply_template: it has /apply-template (chat messages -> prompt text).
        min_tokens_for_eos: candidates calls send min_tokens=1.
        chat_continue: chat continues a final assistant message (continue_final_message).
        completions: string prompts may go to /v1/completions.
        anchor_candidates: candidates calls force a whole token (see
            `ProviderProfile.anchor_token_id`).
    """

    key: str
    name: str
    owned_by: tuple[str, ...] = ()
    has_props: bool = False
    neutral: Mapping[str, Any] = field(default_factory=dict)
    neutral_exact: bool = True
    top_k_param: bool = False
    top_k_off: int | None = None
    token_id_prompts: bool = False
    tokenize: bool = False
    apply_template: bool = False
    min_tokens_for_eos: bool = False
    chat_continue: bool = False
    completions: bool = True
    anchor_candidates: bool = False


# llama.cpp (llama-server): every sampler of the default chain set to its no-op value, AND the
# chain itself reduced to temperature (a sampler left out of `samplers` is not applied), so a
# sampler this table does not know (a newer server's) is off too. top_k <= 0 is a no-op,
# typical_p 1, min_p 0, xtc_probability 0, dry_multiplier 0, top_n_sigma -1, mirostat 0,
# dynatemp_range 0, adaptive_target < 0, repeat_last_n 0 with penalty 1.
_LLAMA_SERVER_NEUTRAL = {
    "samplers": ["temperature"],
    "top_k": 0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "repeat_last_n": 0,
    "dry_multiplier": 0.0,
    "xtc_probability": 0.0,
    "top_n_sigma": -1.0,
    "mirostat": 0,
    "dynatemp_range": 0.0,
    "adaptive_target": -1.0,
    "min_keep": 0,
    "post_sampling_probs": False,
}

# llama-cpp-python's server: its own field names (mirostat_mode, tfs_z); it ignores unknown ones.
_LLAMA_CPP_PYTHON_NEUTRAL = {
    "top_k": 0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "mirostat_mode": 0,
    "tfs_z": 1.0,
}

_VLLM_NEUTRAL = {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}

_TABLE = (
    ServerFamily(
        "llama.cpp", "llama.cpp server", owned_by=("llamacpp",), has_props=True,
        neutral=_LLAMA_SERVER_NEUTRAL, top_k_param=True, top_k_off=0, token_id_prompts=True,
        tokenize=True, apply_template=True, anchor_candidates=True,
    ),
    ServerFamily(
        "llama-cpp-python", "llama-cpp-python server", owned_by=("me",),
        neutral=_LLAMA_CPP_PYTHON_NEUTRAL, top_k_param=True, top_k_off=0,
        # Its request model types prompt as str | list[str] (llama_cpp/server/types.py): no id
        # prompts. vas-api's exact reporter on the same server takes them (exact_logprobs).
        token_id_prompts=False, min_tokens_for_eos=True,
    ),
    ServerFamily(
        "vllm", "vLLM", owned_by=("vllm",), neutral=_VLLM_NEUTRAL, top_k_param=True,
        top_k_off=-1, token_id_prompts=True, tokenize=True, chat_continue=True,
    ),
    ServerFamily(
        "sglang", "SGLang", owned_by=("sglang",), neutral=_VLLM_NEUTRAL, top_k_param=True,
        top_k_off=-1, token_id_prompts=True, chat_continue=True,
    ),
    ServerFamily(
        "tgi", "Text Generation Inference", owned_by=("tgi",), neutral={},
        neutral_exact=True,  # its OpenAI API applies no top_k/min_p/penalty unless sent
        chat_continue=False,
    ),
    ServerFamily(
        # Ollama's /v1 takes none of its own sampler options: its model defaults (top_k 40,
        # min_p, repeat_penalty 1.1) cannot be switched off there. The fields are sent anyway
        # (a version that reads them is then neutral) but drafts are not trusted.
        "ollama", "Ollama", owned_by=("library", "ollama"),
        neutral={"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "typical_p": 1.0},
        neutral_exact=False, top_k_param=False,
    ),
    ServerFamily(
        "lmstudio", "LM Studio", owned_by=("organization_owner",),
        neutral={"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0},
        top_k_param=True, top_k_off=0,
    ),
    ServerFamily("openai", "OpenAI", owned_by=("openai", "system", "openai-internal"),
                 completions=False),
    ServerFamily("unknown", "OpenAI-compatible server", completions=False),
)

FAMILIES: Mapping[str, ServerFamily] = MappingProxyType({f.key: f for f in _TABLE})
"""Every known family by key; ``FAMILIES["unknown"]`` is the fallback."""


def family(key: str | None) -> ServerFamily:
    """The family with this key; the "unknown" family for None or an unknown key."""
    return FAMILIES.get(key or "unknown", FAMILIES["unknown"])


def family_from_owned_by(owned_by: str | None) -> ServerFamily | None:
    """The family whose /v1/models lists `owned_by`, or None."""
    value = (owned_by or "").strip().lower()
    for f in _TABLE:
        if value in f.owned_by:
            return f
    return None
