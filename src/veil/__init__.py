"""Veil: a private, multi-model AI gateway."""

__version__ = "0.1.0"
