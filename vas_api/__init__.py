"""vas-api: steer black-box LLM APIs with a small local value model (Value Augmented Sampling)."""

from .batch import BatchSummary, arun_batch, run_batch
from .budget import Budget
from .client import NOT_GIVEN, AsyncVASClient, VASClient, wrap
from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all
from .report import VASReport
from .types import *  # noqa: F403
from .types import __all__ as _types_all

__version__ = "0.1.0"
__all__ = [*_errors_all, *_types_all, "NOT_GIVEN", "AsyncVASClient", "BatchSummary", "Budget", "arun_batch", "run_batch", "VASClient", "VASReport", "wrap", "__version__"]
