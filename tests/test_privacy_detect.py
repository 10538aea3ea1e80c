"""PiiDetector: each type found in realistic text, hard negatives left alone, no network."""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Iterator

import pytest

from veil.privacy import PII_TYPES, PiiDetector, Span
from veil.privacy.patterns import iban_ok, luhn_ok, ssn_ok


@pytest.fixture(scope="module")
def detector() -> PiiDetector:
    d = PiiDetector()
    d.warm()
    return d


def found(
    detector: PiiDetector, text: str, types: frozenset[str] | None = None
) -> set[tuple[str, str]]:
    spans = detector.detect(text, types) if types is not None else detector.detect(text)
    return {(s.type, text[s.start : s.end]) for s in spans}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hi, this is Maria Garcia from the billing team.", ("PERSON", "Maria Garcia")),
        (
            "Please write to john.smith@gmail.com before Friday.",
            ("EMAIL_ADDRESS", "john.smith@gmail.com"),
        ),
        ("You can reach me on (415) 555-0132 after 6.", ("PHONE_NUMBER", "(415) 555-0132")),
        ("Call the office: +44 20 7946 0958.", ("PHONE_NUMBER", "+44 20 7946 0958")),
        (
            "I was charged twice on 4111 1111 1111 1111, please refund.",
            ("CREDIT_CARD", "4111 1111 1111 1111"),
        ),
        (
            "New IBAN: GB82 WEST 1234 5698 7654 32, effective today.",
            ("IBAN_CODE", "GB82 WEST 1234 5698 7654 32"),
        ),
        ("My SSN is 123-45-6788 and the form rejects it.", ("US_SSN", "123-45-6788")),
        ("Login from 203.0.113.42 was blocked.", ("IP_ADDRESS", "203.0.113.42")),
        (
            "Traffic from 2001:db8::8a2e:370:7334. Blocked.",
            ("IP_ADDRESS", "2001:db8::8a2e:370:7334"),
        ),
        ("We are moving to Berlin next spring.", ("LOCATION", "Berlin")),
        ("Ship it to 221B Baker Street please.", ("LOCATION", "221B Baker Street")),
        ("Patient DOB: 03/12/1985, referred by the clinic.", ("DATE_OF_BIRTH", "03/12/1985")),
        ("I was born on March 12, 1985 in a small town.", ("DATE_OF_BIRTH", "March 12, 1985")),
        (
            "My portfolio is at https://www.example.com/work/maria (updated).",
            ("URL", "https://www.example.com/work/maria"),
        ),
        (
            'client = OpenAI(api_key="sk-proj-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY")',
            ("API_KEY", "sk-proj-Ab3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY"),
        ),
        (
            "DATABASE_URL=postgres://admin:Tr0ub4dor3x@db.internal:5432/app",
            ("API_KEY", "Tr0ub4dor3x"),
        ),
        ("export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", ("API_KEY", "AKIAIOSFODNN7EXAMPLE")),
        (
            "token: ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY2z4C",
            ("API_KEY", "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY2z4C"),
        ),
        (
            "the api key is 9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c, keep it safe",
            ("API_KEY", "9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c"),
        ),
        ('password = "hunter2!"', ("API_KEY", "hunter2!")),
    ],
)
def test_each_type_is_found_in_realistic_text(
    detector: PiiDetector, text: str, expected: tuple[str, str]
) -> None:
    assert expected in found(detector, text)


@pytest.mark.parametrize(
    "text",
    [
        "Q3 revenue grew 12% and Q4 guidance is unchanged.",
        "Upgrade from v2.3.1 to Python 3.11 fixed it; Windows build 10.0.19045.2965 too.",
        "The ISBN is 978-0-13-468599-1 and the order number is ORD-2024-118833.",
        "Will you review it? May I ask why? Prices rose 4% in May.",
        "Mark the ticket done and bill the client for 12 hours.",
        "The deadline is March 3, 2025; the launch is on 2025-04-01.",
        "Order 4155550132 shipped; 4111111111111112 fails the checksum.",
        "Use `sk-xxxxxxxxxxxxxxxxxxxxxxxx` as a placeholder. Password: ********",
        "password = os.environ['DB_PASSWORD'] and token=${API_TOKEN}",
        "See commit 3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39 and request id 123e4567-e89b-12d3-a456-426614174000.",
        "The MAC address 00:1A:2B:3C:4D:5E; the build ran at 12:30:45 UTC.",
        "Set replicas to 3 in us-east-1 and eu-west-2; our site is example.com.",
        "In Python, `str.split()` returns a list; `re.match` anchors at the start.",
        "git remote add origin git@github.com:acme/payments.git",
        "The SSN-shaped 000-12-3456 and 666-12-3456 are not valid SSNs.",
        "Docker, GitHub and Kubernetes all run on Linux.",
    ],
)
def test_hard_negatives_are_not_flagged(detector: PiiDetector, text: str) -> None:
    assert found(detector, text) == set()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "the courier needs your phone (+49 151 23456789) today",
            {("PHONE_NUMBER", "+49 151 23456789")},
        ),
        (
            'psycopg2.connect("postgresql://app:S3cureP4ss2024@pg-prod-1.acme.net/reports")',
            {("API_KEY", "S3cureP4ss2024")},
        ),
        (
            "Mail it to:\n12 rue de la Paix\nParis",
            {("LOCATION", "12 rue de la Paix"), ("LOCATION", "Paris")},
        ),
    ],
)
def test_boundaries(detector: PiiDetector, text: str, expected: set[tuple[str, str]]) -> None:
    """A span ends where its value ends: not at the sentence's parenthesis, not on the next line."""
    assert found(detector, text) == expected


def test_spans_are_sorted_and_never_overlap(detector: PiiDetector) -> None:
    text = (
        "From: Maria Garcia <maria.garcia@gmail.com>, +1 415 555 0132, "
        "https://intranet.example.com/u/maria.garcia@gmail.com, card 4111-1111-1111-1111, "
        "lives in Paris and works in London; IP 10.0.0.12."
    )
    spans = detector.detect(text)
    assert spans == sorted(spans, key=lambda s: s.start)
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))
    # The URL contains an e-mail address: the container wins, nothing is split.
    assert ("URL", "https://intranet.example.com/u/maria.garcia@gmail.com") in found(detector, text)


def test_only_the_requested_types_are_returned(detector: PiiDetector) -> None:
    text = "Maria Garcia (maria@gmail.com) lives in Paris."
    assert found(detector, text, frozenset({"EMAIL_ADDRESS"})) == {
        ("EMAIL_ADDRESS", "maria@gmail.com")
    }
    assert detector.detect(text, frozenset()) == []
    with pytest.raises(ValueError, match="NOT_A_TYPE"):
        detector.detect(text, frozenset({"NOT_A_TYPE"}))


def test_the_ner_is_skipped_where_no_name_can_be(detector: PiiDetector) -> None:
    before = detector.ner_calls
    detector.detect("my email is maria@gmail.com and my card is 4111 1111 1111 1111")
    detector.detect("Deploy failed on Tuesday: see the logs, error 0x80070005.")
    detector.detect("Maria Garcia lives in Paris.", frozenset({"EMAIL_ADDRESS", "URL"}))
    assert detector.ner_calls == before
    detector.detect("Maria Garcia lives in Paris.")
    assert detector.ner_calls == before + 1


def test_validators() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432")
    assert not iban_ok("GB82WEST12345698765433")
    assert ssn_ok("123", "45", "6789")
    assert not any(
        ssn_ok(*p)
        for p in [
            ("000", "12", "3456"),
            ("666", "12", "3456"),
            ("900", "12", "3456"),
            ("123", "00", "4567"),
            ("123", "45", "0000"),
        ]
    )


def test_detection_is_thread_safe(detector: PiiDetector) -> None:
    text = "Maria Garcia (maria@gmail.com) flew from Paris to Berlin; card 4111 1111 1111 1111."
    expected = detector.detect(text)
    results: list[list[Span]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                results.append(detector.detect(text))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(r == expected for r in results)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access attempted in a test")

    # A download starts with a name lookup, which fails before any connect() here.
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_the_network_guard_sees_a_suffix_list_download(no_network: list[object]) -> None:
    """The guard below is able to fail: tldextract's default extractor is caught trying."""
    import tldextract

    tldextract.TLDExtract(cache_dir=None)("a.example.co.uk")  # falls back to its snapshot
    assert no_network


def test_nothing_touches_the_network(no_network: list[object]) -> None:
    """A fresh detector loads, validates e-mail domains and URLs with no connection at all.

    Also Presidio's own EmailRecognizer, which calls tldextract's module-level extractor.
    """
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    from veil.privacy.patterns import has_public_suffix, offline_tldextract

    has_public_suffix.cache_clear()
    offline_tldextract.cache_clear()
    d = PiiDetector()
    d.warm()
    text = "Write to anna@uni-heidelberg.de or see https://www.example.co.uk/a, Maria Garcia."
    assert {t for t, _ in found(d, text)} == {"EMAIL_ADDRESS", "URL", "PERSON"}
    assert EmailRecognizer().validate_result("someone@example.co.uk") is True
    assert offline_tldextract().suffix_list_urls == ()
    assert no_network == []


def test_all_types_are_declared() -> None:
    assert len(PII_TYPES) == len(set(PII_TYPES)) == 11
