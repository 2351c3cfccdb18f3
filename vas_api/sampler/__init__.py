"""The VAS sampler: a pure state machine per mode, plus the loops that drive it."""

from .core import CandidatesCall, DraftCall, ScoreCall, Step, TokenSampler
from .run import Timings, arun, run, score
from .settings import MODES, SamplerSettings, resolve_mode
from .speculative import DraftLengthPolicy, SpeculativeSampler, expected_tokens_per_call
from .target import decode_step, options_of, target_probs, value_shift

__all__ = [
    "MODES",
    "CandidatesCall",
    "DraftCall",
    "DraftLengthPolicy",
    "ScoreCall",
    "SamplerSettings",
    "SpeculativeSampler",
    "Step",
    "Timings",
    "TokenSampler",
    "arun",
    "expected_tokens_per_call",
    "decode_step",
    "options_of",
    "resolve_mode",
    "run",
    "score",
    "target_probs",
    "value_shift",
]
