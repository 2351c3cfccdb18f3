"""CLI command modules; each registers its commands on `vas_api.cli.app` when imported."""
