"""Veil's Presidio recognizers and the AnalyzerEngine they run in.

Presidio's own predefined recognizers are not used: they are compiled with the ``regex``
module, score by context lemmas that need the full spaCy pipeline, and fire on "Q3" (driver's
licence), "john.sm" (URL) and any 9-digit number. Each recognizer here wraps one validated
fast path from :mod:`veil.privacy.patterns` or :mod:`veil.privacy.credentials`, or reads the
names found by :class:`veil.privacy.names.WindowedSpacyEngine`.

Scores order the results when spans overlap: validated patterns (>= 0.7) always beat the NER
(0.5), see :func:`veil.privacy.detector.resolve`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts

from veil.privacy import credentials, patterns
from veil.privacy.detector import NER_SCORE
from veil.privacy.names import NameArtifacts, WindowedSpacyEngine, clean_name

Finder = Callable[[str], Iterable[tuple[int, int]]]


class PatternFinderRecognizer(EntityRecognizer):
    """One entity type found by a validated fast path."""

    def __init__(self, entity: str, finder: Finder, score: float, name: str) -> None:
        super().__init__(supported_entities=[entity], name=name, supported_language="en")
        self.entity = entity
        self.finder = finder
        self.score = score

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        return [
            RecognizerResult(self.entity, start, end, self.score)
            for start, end in self.finder(text)
        ]


class NameRecognizer(EntityRecognizer):
    """PERSON and LOCATION from the windowed NER, trimmed of titles and vetted."""

    def __init__(self, engine: WindowedSpacyEngine) -> None:
        super().__init__(
            supported_entities=["PERSON", "LOCATION"], name="VeilNames", supported_language="en"
        )
        self.engine = engine

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        if not isinstance(nlp_artifacts, NameArtifacts):
            return []
        results = []
        for start, end, label in nlp_artifacts.names:
            if label not in entities:
                continue
            cleaned = clean_name(text, start, end, label, self.engine.is_ordinary)
            if cleaned is not None:
                results.append(RecognizerResult(label, cleaned[0], cleaned[1], NER_SCORE))
        return results


class _NoContextEnhancer(ContextAwareEnhancer):
    """Context is part of each fast path already; lemma-based boosting would need a parser."""

    def __init__(self) -> None:
        super().__init__(
            context_similarity_factor=0.0,
            min_score_with_context_similarity=0.0,
            context_prefix_count=0,
            context_suffix_count=0,
        )

    def enhance_using_context(
        self,
        text: str,
        raw_results: list[RecognizerResult],
        nlp_artifacts: NlpArtifacts,
        recognizers: list[EntityRecognizer],
        context: list[str] | None = None,
    ) -> list[RecognizerResult]:
        return raw_results


def veil_recognizers(nlp_engine: WindowedSpacyEngine) -> list[EntityRecognizer]:
    p, c = patterns, credentials
    return [
        PatternFinderRecognizer("EMAIL_ADDRESS", p.find_emails, 0.95, "VeilEmail"),
        PatternFinderRecognizer("URL", p.find_urls, 0.8, "VeilUrl"),
        PatternFinderRecognizer("IP_ADDRESS", p.find_ips, 0.9, "VeilIp"),
        PatternFinderRecognizer("PHONE_NUMBER", p.find_phones, 0.75, "VeilPhone"),
        PatternFinderRecognizer("CREDIT_CARD", p.find_cards, 1.0, "VeilCard"),
        PatternFinderRecognizer("IBAN_CODE", p.find_ibans, 1.0, "VeilIban"),
        PatternFinderRecognizer("US_SSN", p.find_ssns, 0.95, "VeilSsn"),
        PatternFinderRecognizer("DATE_OF_BIRTH", p.find_birth_dates, 0.9, "VeilBirthDate"),
        PatternFinderRecognizer("API_KEY", c.find_api_keys, 0.95, "VeilApiKey"),
        PatternFinderRecognizer("LOCATION", p.find_addresses, 0.85, "VeilAddress"),
        NameRecognizer(nlp_engine),
    ]


def build_analyzer(nlp_engine: WindowedSpacyEngine) -> AnalyzerEngine:
    patterns.pin_tldextract_offline()
    registry = RecognizerRegistry(
        recognizers=veil_recognizers(nlp_engine), supported_languages=["en"]
    )
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp_engine,
        supported_languages=["en"],
        context_aware_enhancer=_NoContextEnhancer(),
    )
