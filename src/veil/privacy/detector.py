"""``PiiDetector``: Presidio's AnalyzerEngine with Veil's recognizers, cheap until it is not.

Importing this module is cheap too: Presidio, spaCy and the model load in :meth:`warm`
(or on first use), so the ``veil`` command does not pay for them unless it detects.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterable
from typing import TYPE_CHECKING

from veil.privacy.span import ALL_TYPES, Span

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine, RecognizerResult

    from veil.privacy.names import WindowedSpacyEngine

#: The score of a name found by the NER; every validated pattern scores above it.
NER_SCORE = 0.5
_NAME_TYPES = frozenset({"PERSON", "LOCATION"})


class PiiDetector:
    """Finds personal data in text. Thread-safe; one instance serves the whole process.

    Construction is cheap. The spaCy model loads on first use, or at start-up via
    :meth:`warm`. Nothing is downloaded: the model is an installed package and tldextract
    reads its bundled public-suffix snapshot.
    """

    def __init__(self) -> None:
        self._nlp: WindowedSpacyEngine | None = None
        self._analyzer: AnalyzerEngine | None = None
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Load everything now (blocking: call it off the event loop)."""
        self._engine()

    def _engine(self) -> tuple[AnalyzerEngine, WindowedSpacyEngine]:
        analyzer, nlp = self._analyzer, self._nlp
        if analyzer is None or nlp is None:
            with self._lock:
                if self._analyzer is None or self._nlp is None:
                    from veil.privacy.names import WindowedSpacyEngine
                    from veil.privacy.recognizers import build_analyzer

                    engine = WindowedSpacyEngine()
                    engine.load()
                    self._analyzer = build_analyzer(engine)
                    self._nlp = engine
                analyzer, nlp = self._analyzer, self._nlp
        return analyzer, nlp

    @property
    def ner_calls(self) -> int:
        """How many texts needed the NER so far (the rest were served by patterns alone)."""
        return self._nlp.calls if self._nlp is not None else 0

    def detect(self, text: str, types: frozenset[str] = ALL_TYPES) -> list[Span]:
        """Spans of ``types`` in ``text``: sorted by start and never overlapping."""
        unknown = types - ALL_TYPES
        if unknown:
            raise ValueError(f"unknown PII types: {', '.join(sorted(unknown))}")
        if not text or not types:
            return []
        analyzer, nlp = self._engine()
        artifacts = nlp.artifacts(text, want_names=bool(types & _NAME_TYPES))
        results = analyzer.analyze(
            text, language="en", entities=sorted(types), nlp_artifacts=artifacts
        )
        return resolve(r for r in results if r.entity_type in types)


def resolve(results: Iterable[RecognizerResult]) -> list[Span]:
    """Keep non-overlapping spans: patterns before the NER, then the longer, then the surer.

    Preferring the longer span means a container wins over what it contains: an e-mail
    address inside a URL stays inside the URL's placeholder.
    """

    def rank(r: RecognizerResult) -> tuple[bool, int, float, int]:
        return (r.score <= NER_SCORE, -(r.end - r.start), -r.score, r.start)

    starts: list[int] = []
    kept: list[Span] = []
    for r in sorted(results, key=rank):
        if r.end <= r.start:
            continue
        i = bisect_right(starts, r.start)
        if i and kept[i - 1].end > r.start:
            continue
        if i < len(kept) and kept[i].start < r.end:
            continue
        starts.insert(i, r.start)
        kept.insert(i, Span(r.start, r.end, r.entity_type))
    return kept
