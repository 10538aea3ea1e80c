"""API_KEY: secrets people paste into prompts — provider keys, tokens, passwords.

Three ways in, from most to least certain:

1. a provider's own key format (``sk-…``, ``sk-ant-…``, ``AKIA…``, ``ghp_…``, ``xox…-``,
   ``AIza…``, JWTs, …);
2. the password in a connection string (``postgres://user:PASSWORD@host/db``), the value of an
   assignment whose name says secret (``DB_PASSWORD=…``, ``"api_key": "…"``), a ``Bearer``
   token, or "my password is …" in prose;
3. a high-entropy token a few words after "key", "token", "secret" or "password".

Placeholders (``***``, ``<your-key>``, ``${API_KEY}``, ``os.environ[...]``, ``sk-xxxx…``) are
not secrets and are left alone; so are git hashes and UUIDs outside a secret's assignment.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator

SpanPos = tuple[int, int]

_PROVIDER = re.compile(
    r"""(?<![\w-])(?:
      sk-ant-[a-z]{2,8}\d{0,3}-[A-Za-z0-9_-]{20,}            # Anthropic
    | sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}        # OpenAI
    | (?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}               # Stripe secret / restricted
    | (?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|AIPA)[A-Z0-9]{16}     # AWS access key id
    | gh[pousr]_[A-Za-z0-9]{36,255}                          # GitHub
    | github_pat_[A-Za-z0-9_]{22,255}
    | glpat-[A-Za-z0-9_-]{20,}                               # GitLab
    | xox[abposr]-[A-Za-z0-9-]{10,}                          # Slack
    | AIza[0-9A-Za-z_-]{35}                                  # Google
    | hf_[A-Za-z0-9]{30,}                                    # Hugging Face
    | npm_[A-Za-z0-9]{36}
    | SG\.[A-Za-z0-9_-]{16,32}\.[A-Za-z0-9_-]{16,64}         # SendGrid
    | eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}  # JWT
    )(?![\w-])""",
    re.VERBOSE,
)
_PROVIDER_HINT = re.compile(
    r"sk-|sk_|rk_|AKIA|ASIA|AGPA|AIDA|AROA|ANPA|AIPA|gh[pousr]_|github_pat_|glpat-|xox|AIza|hf_|npm_|SG\.|eyJ"
)

# postgres://user:PASSWORD@host — http(s) URLs are the URL type's, whole.
_CONN_PASSWORD = re.compile(
    r"\b(?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|rediss?|amqps?|mssql|sqlserver|"
    r"oracle|sftp|smtps?|ldaps?|clickhouse|snowflake)://[^\s:/@]+:([^\s@/]+)@",
    re.IGNORECASE,
)
# Bounded on both sides: unbounded, a long run of "api_key_api_key_…" backtracks quadratically.
_SECRET_NAME = r"[\w.-]{0,40}?(?:api[_-]?key|apikey|secret|token|passw(?:or)?d|passwd|pwd|access[_-]?key|private[_-]?key|auth[_-]?key|credentials?)[\w.-]{0,40}"  # noqa: S105 - a pattern, not a password
_ASSIGNMENT = re.compile(
    rf"(?i)(?<![\w.-])[\"']?({_SECRET_NAME})[\"']?\s*(?::=|=>|=|:)\s*"
    rf"(?:\"([^\"\s]+)\"|'([^'\s]+)'|([^\s\"'`,;{{}}()<>\[\]]+))"
)
_BEARER = re.compile(r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{16,}=*)")
_PROSE_PASSWORD = re.compile(
    r"(?i)\b(?:password|passwd|passcode|passphrase)\s+(?:is|was|would\s+be|=|:)\s*[\"'“]?([^\s\"'”]{4,})"
)
_KEY_WORD = re.compile(r"(?i)\b(?:keys?|tokens?|secrets?|passwords?|credentials?)\b")
_HASH_WORD = re.compile(r"(?i)\b(?:commit|sha\d*|hash|checksum|digest|revision|rev|md5|etag)\b")
_TOKEN = re.compile(r"(?<![\w/.+=-])[A-Za-z0-9][A-Za-z0-9_+/=-]{19,}(?![\w/.+=-])")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PLACEHOLDER = re.compile(
    r"(?i)^(?:[*x.•#_-]+|<[^>]*>?|\$\{?\w+\}?|\{\{?[\w.]*\}?\}?|%\(?\w*\)?s|\w*(?:x{4,}|\*{3,})\w*|"
    r"password|passwd|pass|secret|token|changeme|none|null|true|false|example|redacted|"
    r"your[\w-]*|env|getenv|process\.env.*|os\.environ.*|settings\..*|config\..*|"
    r"self\..*|[a-z_]+\.[a-z_.]+|[a-z]+(?:_[a-z]+)+)$"
)
_TRAILING = ".,;:!?)]}\"'"


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def looks_random(value: str, min_len: int = 16, min_entropy: float = 3.3) -> bool:
    if len(value) < min_len or entropy(value) < min_entropy:
        return False
    classes = sum(
        (
            any(c.islower() for c in value),
            any(c.isupper() for c in value),
            any(c.isdigit() for c in value),
        )
    )
    return classes >= 2


def _is_placeholder(value: str) -> bool:
    return _PLACEHOLDER.match(value) is not None


def _strip(text: str, start: int, end: int) -> SpanPos:
    while end > start and text[end - 1] in _TRAILING:
        end -= 1
    return start, end


def find_api_keys(text: str) -> Iterator[SpanPos]:
    if _PROVIDER_HINT.search(text):
        for m in _PROVIDER.finditer(text):
            body = m.group().split("-", 1)[-1].split("_")[-1]
            if entropy(body) >= 3.0:  # "sk-xxxxxxxxxxxxxxxxxxxxxxxx" is a placeholder
                yield m.span()
    if "://" in text:
        for m in _CONN_PASSWORD.finditer(text):
            if not _is_placeholder(m.group(1)):
                yield m.span(1)
    lowered = text.lower()
    if any(w in lowered for w in ("key", "secret", "token", "pass", "pwd", "auth", "credential")):
        yield from _assignments(text)
        yield from _near_key_words(text)
    if "earer" in text:
        for m in _BEARER.finditer(text):
            if looks_random(m.group(1)):
                yield m.span(1)


def _assignments(text: str) -> Iterator[SpanPos]:
    for m in _ASSIGNMENT.finditer(text):
        name = m.group(1).lower()
        quoted = 2 if m.group(2) is not None else 3 if m.group(3) is not None else 0
        start, end = m.span(quoted) if quoted else _strip(text, *m.span(4))
        value = text[start:end]
        if not value or _is_placeholder(value):
            continue
        if any(p in name for p in ("pass", "pwd")):
            if len(value) >= 4 and not value.isdigit():
                yield start, end
        elif name.endswith(
            ("_id", "-id", ".id", "_url", "-url", "_file", "_path", "_name", "_type")
        ):
            continue
        elif looks_random(value) or _UUID.fullmatch(value):
            yield start, end
    for m in _PROSE_PASSWORD.finditer(text):
        start, end = _strip(text, *m.span(1))
        value = text[start:end]
        if len(value) >= 4 and not _is_placeholder(value):
            yield start, end


def _near_key_words(text: str) -> Iterator[SpanPos]:
    for m in _TOKEN.finditer(text):
        value = m.group()
        if not looks_random(value, min_len=20, min_entropy=3.5) or _UUID.fullmatch(value):
            continue
        line_start = text.rfind("\n", 0, m.start()) + 1
        before = text[max(line_start, m.start() - 40) : m.start()]
        keys = list(_KEY_WORD.finditer(before))
        if not keys or _HASH_WORD.search(before, keys[-1].end()):
            continue  # no key word just before, or "token ... commit <sha>"
        yield m.span()
