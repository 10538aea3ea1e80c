"""The private compute node: ``veil node serve`` (see ``server``), its measurement and CLI."""
