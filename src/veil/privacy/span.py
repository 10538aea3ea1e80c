"""The PII types Veil detects and the span it reports for each finding."""

from __future__ import annotations

from dataclasses import dataclass

from veil.config import ALL_PII_TYPES

PII_TYPES: tuple[str, ...] = ALL_PII_TYPES  # one list, in the settings schema
ALL_TYPES: frozenset[str] = frozenset(PII_TYPES)


@dataclass(frozen=True, slots=True)
class Span:
    """One finding: ``text[start:end]`` is a value of ``type``."""

    start: int
    end: int
    type: str
