"""Pseudonymizer and StreamRestorer: placeholders in, the same values back out."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.errors import PermissionDenied
from veil.privacy import PII_TYPES, PiiDetector, Pseudonymizer, Span

ALL = frozenset(PII_TYPES)


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    d = PiiDetector()
    d.warm()
    return d


def test_the_same_value_gets_the_same_placeholder_across_calls(detector: PiiDetector) -> None:
    p = Pseudonymizer(detector, ALL, "pseudonymize")
    first = p.protect("Hi, I'm Maria Garcia, write to maria.garcia@gmail.com.")
    second = p.protect("Maria Garcia again: my colleague John Smith uses john@gmail.com.")
    assert first == "Hi, I'm <PERSON_1>, write to <EMAIL_ADDRESS_1>."
    assert second == "<PERSON_1> again: my colleague <PERSON_2> uses <EMAIL_ADDRESS_2>."
    assert "Maria" not in first + second


def test_counts_are_occurrences_by_type(detector: PiiDetector) -> None:
    p = Pseudonymizer(detector, ALL, "pseudonymize")
    p.protect("Maria Garcia called Maria Garcia's office in Paris.")
    p.protect("Send it to maria@gmail.com, cc maria@gmail.com.")
    assert p.counts == {"PERSON": 2, "LOCATION": 1, "EMAIL_ADDRESS": 2}


def test_only_the_configured_types_are_replaced(detector: PiiDetector) -> None:
    p = Pseudonymizer(detector, frozenset({"EMAIL_ADDRESS"}), "pseudonymize")
    assert p.protect("Maria Garcia, maria@gmail.com") == "Maria Garcia, <EMAIL_ADDRESS_1>"


def test_restore_puts_values_back_and_leaves_unknown_placeholders(detector: PiiDetector) -> None:
    p = Pseudonymizer(detector, ALL, "pseudonymize")
    p.protect("Ask Maria Garcia in Paris, 4111 1111 1111 1111.")
    answer = "Sure, <PERSON_1> in <LOCATION_1>; card <CREDIT_CARD_1>; not <PERSON_7> or <NAME_1>."
    assert p.restore(answer) == (
        "Sure, Maria Garcia in Paris; card 4111 1111 1111 1111; not <PERSON_7> or <NAME_1>."
    )


def test_a_placeholder_the_user_typed_is_not_reused(detector: PiiDetector) -> None:
    p = Pseudonymizer(detector, ALL, "pseudonymize")
    protected = p.protect("What does <PERSON_1> mean? Asking for Maria Garcia.")
    assert protected == "What does <PERSON_1> mean? Asking for <PERSON_2>."
    assert p.restore("<PERSON_1> is a placeholder, <PERSON_2>.") == (
        "<PERSON_1> is a placeholder, Maria Garcia."
    )


def test_redact_replaces_by_type_and_cannot_restore(detector: PiiDetector) -> None:
    p = Pseudonymizer(detector, ALL, "redact")
    protected = p.protect("Maria Garcia, maria@gmail.com, Maria Garcia")
    assert protected == "<PERSON>, <EMAIL_ADDRESS>, <PERSON>"
    assert p.counts == {"PERSON": 2, "EMAIL_ADDRESS": 1}
    assert p.restore("Hello <PERSON_1> and <PERSON>") == "Hello <PERSON_1> and <PERSON>"


def test_block_raises_naming_types_never_values(detector: PiiDetector) -> None:
    p = Pseudonymizer(detector, ALL, "block")
    assert p.protect("What is two plus two?") == "What is two plus two?"
    with pytest.raises(PermissionDenied) as info:
        p.protect("My card is 4111 1111 1111 1111 and my email is maria@gmail.com")
    exc = info.value
    assert exc.code == "pii_blocked"
    assert exc.status == 403
    assert "CREDIT_CARD" in exc.message
    assert "EMAIL_ADDRESS" in exc.message
    assert "4111" not in exc.message
    assert "maria" not in exc.message
    assert "maria" not in repr(p)
    assert "4111" not in str(exc.to_dict())


def test_text_without_pii_passes_unchanged(detector: PiiDetector) -> None:
    p = Pseudonymizer(detector, ALL, "pseudonymize")
    text = "Q3 revenue grew 12%; upgrade to v2.3.1 before May."
    assert p.protect(text) == text
    assert p.counts == {}


def test_bad_arguments_are_refused(detector: PiiDetector) -> None:
    with pytest.raises(ValueError, match="mode"):
        Pseudonymizer(detector, ALL, "hide")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="PHONE"):
        Pseudonymizer(detector, frozenset({"PHONE"}), "redact")


# ---------------------------------------------------------------- streaming restore


class ListDetector:
    """A stand-in detector: every listed value, wherever it occurs, as its type."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def detect(self, text: str, types: frozenset[str] = ALL) -> list[Span]:
        spans = [
            Span(m.start(), m.end(), t)
            for v, t in self.values.items()
            for m in re.finditer(re.escape(v), text)
        ]
        return sorted(spans, key=lambda s: s.start)


VALUES = {f"Person{i:02d}": "PERSON" for i in range(1, 13)} | {
    "a@b.io": "EMAIL_ADDRESS",
    "203.0.113.9": "IP_ADDRESS",
    "sk-secret": "API_KEY",
}


def issued() -> Pseudonymizer:
    p = Pseudonymizer(ListDetector(VALUES), ALL, "pseudonymize")  # type: ignore[arg-type]
    p.protect(" ".join(VALUES))
    return p


KNOWN = ["<PERSON_1>", "<PERSON_2>", "<PERSON_10>", "<PERSON_12>", "<EMAIL_ADDRESS_1>",
         "<IP_ADDRESS_1>", "<API_KEY_1>"]  # fmt: skip
ISSUED = [f"<PERSON_{i}>" for i in range(1, 13)] + [
    "<EMAIL_ADDRESS_1>",
    "<IP_ADDRESS_1>",
    "<API_KEY_1>",
]
NEAR_MISSES = ["<PERSON_13>", "<PERSON_1", "<PERSON_", "<PER", "<", ">", "<<PERSON_1>>",
               "<person_1>", "<PERSON_01>", "<EMAIL_1>", "PERSON_2>", "<PERSON_1 >"]  # fmt: skip
pieces = st.one_of(
    st.sampled_from(KNOWN),
    st.sampled_from(NEAR_MISSES),
    st.text(alphabet="<>_PERSON12 abc\n", max_size=8),
    st.text(max_size=5),
)
texts = st.lists(pieces, max_size=12).map("".join)


def stream(p: Pseudonymizer, chunks: list[str]) -> str:
    restorer = p.stream_restorer()
    out = []
    fed = ""
    for chunk in chunks:
        out.append(restorer.feed(chunk))
        fed += chunk
        # What is held is a trailing fragment of the input that could still become a
        # placeholder: a proper prefix of one this request issued, nothing more.
        assert restorer.held < p.longest_placeholder
        held = fed[len(fed) - restorer.held :] if restorer.held else ""
        assert not held or any(k.startswith(held) and k != held for k in ISSUED)
    out.append(restorer.flush())
    assert restorer.held == 0
    return "".join(out)


def test_longest_placeholder_is_known() -> None:
    assert issued().longest_placeholder == len("<EMAIL_ADDRESS_1>")


@settings(max_examples=300, deadline=None)
@given(texts)
def test_stream_split_at_every_position_equals_restore(text: str) -> None:
    p = issued()
    expected = p.restore(text)
    for i in range(len(text) + 1):
        assert stream(p, [text[:i], text[i:]]) == expected


@settings(max_examples=300, deadline=None)
@given(texts, st.lists(st.integers(min_value=0, max_value=200), max_size=20))
def test_stream_random_chunkings_equal_restore(text: str, cuts: list[int]) -> None:
    p = issued()
    points = sorted({min(c, len(text)) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    assert stream(p, chunks) == p.restore(text)


@settings(max_examples=100, deadline=None)
@given(texts)
def test_stream_char_by_char_equals_restore(text: str) -> None:
    p = issued()
    assert stream(p, list(text)) == p.restore(text)


def test_stream_holds_only_a_possible_placeholder_prefix() -> None:
    p = issued()
    r = p.stream_restorer()
    assert r.feed("Hello <PER") == "Hello "
    assert r.feed("SON_1") == ""
    assert r.feed("0> and <b>bold</b> <") == "Person10 and <b>bold</b> "
    assert r.feed("3") == "<3"  # "<3" can no longer become a placeholder
    assert r.feed(" a < b, <PERSON_13> <API_KEY_1>") == " a < b, <PERSON_13> sk-secret"
    assert r.feed("<PERSON_2") == ""
    assert r.flush() == "<PERSON_2"  # the stream ended mid-placeholder: shown as it came


def test_stream_passes_text_through_when_nothing_was_replaced(detector: PiiDetector) -> None:
    p = Pseudonymizer(detector, ALL, "redact")
    p.protect("Maria Garcia")
    r = p.stream_restorer()
    assert r.feed("<PER") == "<PER"
    assert r.feed("SON>") == "SON>"
    assert r.flush() == ""
