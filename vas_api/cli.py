"""The `vas` command line. Each group of commands lives in its own module under
`vas_api/commands/` and registers itself on `app`; heavy imports (torch, transformers) happen
inside the command functions so `vas --help` stays fast."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vas",
    help="Value Augmented Sampling for black-box LLM APIs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Importing a module registers its commands on `app`.
    import importlib

    for name in ("local", "estimators", "generate", "demo", "batch", "serve"):
        try:
            importlib.import_module(f"vas_api.commands.{name}")
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name != f"vas_api.commands.{name}":
                raise


def main() -> None:
    """Entry point of the `vas` script: VAS errors print as one clear line, not a traceback."""
    from .errors import VASError

    _register()
    try:
        app()
    except VASError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":  # `python -m vas_api.cli`: commands register on vas_api.cli's app
    from vas_api.cli import main as _main

    _main()
