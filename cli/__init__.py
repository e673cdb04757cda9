"""The command line: thin typer adapters over the core; the only layer that prints."""
