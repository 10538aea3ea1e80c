"""The PII types Veil detects and the span it reports for each finding."""

from __future__ import annotations

from dataclasses import dataclass

PII_TYPES: tuple[str, ...] = (
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "LOCATION",
    "DATE_OF_BIRTH",
    "URL",
    "API_KEY",
)
ALL_TYPES: frozenset[str] = frozenset(PII_TYPES)


@dataclass(frozen=True, slots=True)
class Span:
    """One finding: ``text[start:end]`` is a value of ``type``."""

    start: int
    end: int
    type: str
