"""The VAS sampler: a pure state machine per mode, plus the loops that drive it."""

from .block import BlockSampler
from .core import CandidatesCall, DraftCall, ScoreCall, Step, TokenSampler
from .rerank import RerankSampler, SampleCall, effective_sample_size, resampling_probs
from .run import Timings, arun, run, score
from .settings import MODES, ModeChoice, SamplerSettings, choose_mode, default_k, resolve_mode
from .speculative import DraftLengthPolicy, SpeculativeSampler, expected_tokens_per_call
from .target import decode_step, options_of, target_probs, value_shift

__all__ = [
    "MODES",
    "BlockSampler",
    "CandidatesCall",
    "DraftCall",
    "DraftLengthPolicy",
    "ModeChoice",
    "RerankSampler",
    "SampleCall",
    "ScoreCall",
    "SamplerSettings",
    "SpeculativeSampler",
    "Step",
    "Timings",
    "TokenSampler",
    "arun",
    "choose_mode",
    "default_k",
    "effective_sample_size",
    "expected_tokens_per_call",
    "decode_step",
    "options_of",
    "resampling_probs",
    "resolve_mode",
    "run",
    "score",
    "target_probs",
    "value_shift",
]
