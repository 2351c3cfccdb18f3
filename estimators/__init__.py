"""Value models, rewards, data collection and TD(lambda) training for vas-api.

`ValueModel`, `ValueModelConfig` and `DEFAULT_LAYERS` are imported lazily, so importing the
package (e.g. for rewards) does not pull in torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from estimators.value_model import DEFAULT_LAYERS, ValueModel, ValueModelConfig

__all__ = ["DEFAULT_LAYERS", "ValueModel", "ValueModelConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from estimators import value_model

        return getattr(value_model, name)
    raise AttributeError(f"module 'estimators' has no attribute {name!r}")
