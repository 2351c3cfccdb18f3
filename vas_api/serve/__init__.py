"""`vas serve`: an OpenAI-compatible HTTP server in front of one VAS client."""

from .app import create_app, load_values
from .config import KeySpec, ServeConfig, ValueSpec, load_keys_file, parse_value_spec

__all__ = ["create_app", "load_values", "ServeConfig", "ValueSpec", "KeySpec", "parse_value_spec",
           "load_keys_file"]
