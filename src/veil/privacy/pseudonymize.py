"""Placeholders in, real values back out — also across streamed chunks.

A :class:`Pseudonymizer` lives for one request. In ``pseudonymize`` mode it gives each
distinct value a typed, numbered placeholder (``<PERSON_1>``, ``<EMAIL_ADDRESS_2>``) that
stays the same across every message part of the request, and puts the values back in the
answer. ``redact`` replaces values by their bare type (``<PERSON>``) and cannot restore.
``block`` refuses the request, naming the types found and never the values.

``counts`` counts occurrences: "Ann met Ann" adds 2 to ``counts["PERSON"]`` although both
become ``<PERSON_1>``. In ``block`` mode it counts what was found and caused the refusal.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import TYPE_CHECKING, Literal

from veil.errors import PermissionDenied
from veil.privacy.span import ALL_TYPES, PII_TYPES

if TYPE_CHECKING:
    from veil.privacy.detector import PiiDetector

Mode = Literal["pseudonymize", "redact", "block"]
_PLACEHOLDER = re.compile(r"<(" + "|".join(PII_TYPES) + r")_(\d+)>")


class Pseudonymizer:
    """Protects the text of one request and restores the answer. Not shared between requests."""

    def __init__(self, detector: PiiDetector, types: frozenset[str], mode: Mode) -> None:
        if mode not in ("pseudonymize", "redact", "block"):
            raise ValueError(f"unknown privacy mode {mode!r}")
        unknown = types - ALL_TYPES
        if unknown:
            raise ValueError(f"unknown PII types: {', '.join(sorted(unknown))}")
        self.detector = detector
        self.types = types
        self.mode: Mode = mode
        #: Occurrences replaced (or, in block mode, found), by type.
        self.counts: dict[str, int] = Counter()
        self._by_value: dict[tuple[str, str], str] = {}
        self._by_placeholder: dict[str, str] = {}
        self._next: Counter[str] = Counter()
        self._prefixes: set[str] = set()
        self._longest = 0

    def __repr__(self) -> str:  # never show the map
        return f"Pseudonymizer(mode={self.mode!r}, counts={dict(self.counts)!r})"

    def protect(self, text: str) -> str:
        """The text with its personal data replaced; raises ``PermissionDenied`` in block mode."""
        spans = self.detector.detect(text, self.types)
        if not spans:
            return text
        if self.mode == "block":
            found = Counter(s.type for s in spans)
            self.counts.update(found)
            raise PermissionDenied(
                "The request contains personal data that this route does not allow: "
                + ", ".join(sorted(found))
                + ".",
                code="pii_blocked",
            )
        parts: list[str] = []
        pos = 0
        for span in spans:
            parts.append(text[pos : span.start])
            value = text[span.start : span.end]
            if self.mode == "redact":
                parts.append(f"<{span.type}>")
            else:
                parts.append(self._placeholder(span.type, value, text))
            self.counts[span.type] += 1
            pos = span.end
        parts.append(text[pos:])
        return "".join(parts)

    def _placeholder(self, type_: str, value: str, text: str) -> str:
        key = (type_, value)
        placeholder = self._by_value.get(key)
        if placeholder is None:
            while True:
                self._next[type_] += 1
                placeholder = f"<{type_}_{self._next[type_]}>"
                # A placeholder the user typed themselves must not be restored to a value.
                if placeholder not in text:
                    break
            self._by_value[key] = placeholder
            self._by_placeholder[placeholder] = value
            self._prefixes.update(placeholder[:i] for i in range(1, len(placeholder)))
            self._longest = max(self._longest, len(placeholder))
        return placeholder

    def restore(self, text: str, *, json_string: bool = False) -> str:
        """Known placeholders back to their values; anything else is left as it is.

        ``json_string``: the text is the inside of a JSON string (tool-call arguments), so
        values are escaped — a quote or backslash in a value must not break the JSON."""
        if not self._by_placeholder or "<" not in text:
            return text
        known = self._by_placeholder

        def value(match: re.Match[str]) -> str:
            found = known.get(match.group())
            if found is None:
                return match.group()
            return json.dumps(found, ensure_ascii=False)[1:-1] if json_string else found

        return _PLACEHOLDER.sub(value, text)

    def stream_restorer(self, *, json_string: bool = False) -> StreamRestorer:
        return StreamRestorer(self, json_string=json_string)

    def is_placeholder_prefix(self, fragment: str) -> bool:
        """Whether ``fragment`` is the start (and not the whole) of a placeholder issued here."""
        return fragment in self._prefixes

    @property
    def longest_placeholder(self) -> int:
        return self._longest


class StreamRestorer:
    """Restores placeholders in a streamed answer, however the stream splits them.

    It holds back only a trailing fragment that could still grow into a placeholder this
    request issued ("<PER", "<PERSON_1"), so at most one placeholder's length minus one.
    """

    def __init__(self, pseudonymizer: Pseudonymizer, *, json_string: bool = False) -> None:
        self._p = pseudonymizer
        self._json = json_string
        self._held = ""

    def feed(self, piece: str) -> str:
        """The text that is safe to emit now, with complete placeholders restored."""
        buffer = self._held + piece
        cut = buffer.rfind("<")
        if cut >= 0 and self._p.is_placeholder_prefix(buffer[cut:]):
            self._held = buffer[cut:]
            return self._p.restore(buffer[:cut], json_string=self._json)
        self._held = ""
        return self._p.restore(buffer, json_string=self._json)

    def flush(self) -> str:
        """At the end of the stream: whatever is still held, restored as far as possible."""
        held, self._held = self._held, ""
        return self._p.restore(held, json_string=self._json)

    @property
    def held(self) -> int:
        """Characters held back right now."""
        return len(self._held)
