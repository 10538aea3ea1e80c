"""Fast paths: structured identifiers found by regular expressions, then validated.

Each ``find_*`` function returns ``(start, end)`` character spans. A cheap precondition
(an ``@``, a digit, ``://``) skips the regex on text that cannot match. Validation is what
keeps these quiet: Luhn for cards, ISO 7064 mod 97 for IBANs, the SSA's rules for SSNs,
``ipaddress`` for IPs, ``phonenumbers`` for international phone numbers and tldextract's
bundled public-suffix snapshot (never the network) for e-mail domains.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from functools import lru_cache

import phonenumbers
import tldextract

SpanPos = tuple[int, int]

# ------------------------------------------------------------------ public suffixes


@lru_cache(maxsize=1)
def offline_tldextract() -> tldextract.TLDExtract:
    """A TLDExtract that only reads the public-suffix snapshot bundled with tldextract.

    No suffix-list URLs and no cache directory: it can neither fetch nor write anything.
    """
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


def pin_tldextract_offline() -> None:
    """Point tldextract's module-level extractor (used by Presidio's recognizers) at the snapshot.

    Presidio's ``EmailRecognizer`` calls ``tldextract.extract``, whose default extractor
    downloads the public-suffix list on first use. Replacing it is the only way to keep
    any Presidio recognizer in this process off the network.
    """
    import tldextract.tldextract as module

    module.TLD_EXTRACTOR = offline_tldextract()


@lru_cache(maxsize=4096)
def has_public_suffix(host: str) -> bool:
    parts = offline_tldextract()(host)
    return bool(parts.domain and parts.suffix)


# ------------------------------------------------------------------------- e-mail

_EMAIL = re.compile(
    r"(?<![\w.+%-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})(?![\w@-])"
)
_SSH_REMOTE_AFTER = re.compile(r":[\w~./-]")


def find_emails(text: str) -> Iterator[SpanPos]:
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        # git@github.com:owner/repo.git is an SSH remote, not somebody's mailbox.
        if _SSH_REMOTE_AFTER.match(text, m.end()):
            continue
        token_start = max(text.rfind(c, 0, m.start()) for c in " \t\n\"'(") + 1
        if "://" in text[token_start : m.start()]:
            continue  # scheme://user:password@host is a URL's userinfo, not a mailbox
        if has_public_suffix(m.group(1)):
            yield m.span()


# ---------------------------------------------------------------------------- URL

_URL = re.compile(r"\b(?:(?:https?|ftp)://|www\.)[^\s<>\"'`]+", re.IGNORECASE)
_URL_TRAILING = ".,;:!?*_~'\""
_CLOSERS = {")": "(", "]": "[", "}": "{"}


def find_urls(text: str) -> Iterator[SpanPos]:
    if "://" not in text and "www." not in text.lower():
        return
    for m in _URL.finditer(text):
        start, end = m.span()
        while end > start:
            last = text[end - 1]
            if last in _URL_TRAILING:
                end -= 1
            elif last in _CLOSERS and text.count(last, start, end) > text.count(
                _CLOSERS[last], start, end
            ):
                end -= 1  # "(see https://x.org/a)" keeps its own parentheses only
            else:
                break
        body = text[start:end]
        if body.lower().startswith("www.") and not has_public_suffix(body.split("/", 1)[0]):
            continue
        if len(body) > 10:
            yield start, end


# --------------------------------------------------------------------- IP address

_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,8}(?:\.\d{1,3}){0,3}(?!\w|[.:]\w)"
)


def find_ips(text: str) -> Iterator[SpanPos]:
    if "." in text:
        for m in _IPV4.finditer(text):
            if all(len(o) == 1 or o[0] != "0" for o in m.group().split(".")):
                try:
                    ipaddress.IPv4Address(m.group())
                except ValueError:
                    continue
                yield m.span()
    if "::" in text or text.count(":") >= 5:
        for m in _IPV6.finditer(text):
            value = m.group()
            start, end = m.span()
            if value.endswith(":") and not value.endswith("::"):
                value, end = value[:-1], end - 1  # "from fe80::1: denied"
            if sum(1 for group in value.split(":") if group) < 2:
                continue  # "::1", Python's "[::2]" slices
            try:
                ipaddress.IPv6Address(value)
            except ValueError:
                continue
            yield start, end


# ------------------------------------------------------------------- phone number

_PHONE_CONTEXT = re.compile(
    r"(?i)\b(?:phone|tel|telephone|call|calling|mobile|cell|fax|whats\s?app|sms|text|"
    r"ring|reach|contact|number|hotline|landline)\b"
)
# +CC then groups: "+44 20 7946 0958", "+1 (415) 555-0132", "+49-30-901820".
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .\-]?\(?\d{1,5}\)?){1,6}(?![\w+])")
# North American: "(415) 555-0132", "415-555-0132", "415.555.0132", "1-800-555-0199".
_PHONE_NANP = re.compile(
    r"(?<![\w.+-])(?:1[ .\-])?(?:\(\d{3}\)[ ]?|\d{3}([ .\-]))\d{3}[ .\-]\d{4}(?![\w-]|\.\d)"
)
# National formats with a trunk 0 ("020 7946 0958", "07700 900123", "01 42 68 53 00") and
# bare digit runs: only next to a phone word, they are too easily something else.
_PHONE_NATIONAL = re.compile(r"(?<![\w.+-])0\d{1,4}(?:[ \-]\d{2,4}){1,4}(?![\w-]|\.\d)")
_PHONE_BARE = re.compile(r"(?<![\w.+-])\d{10,11}(?![\w-]|\.\d)")
_NATIONAL_REGIONS = ("GB", "FR", "DE", "AU", "IE", "NL")


def _nanp_ok(digits: str) -> bool:
    if len(digits) == 11 and digits[0] == "1":
        digits = digits[1:]
    return len(digits) == 10 and digits[0] not in "01" and digits[3] not in "01"


def _context_before(text: str, start: int, pattern: re.Pattern[str], width: int = 40) -> bool:
    line_start = text.rfind("\n", 0, start) + 1
    return pattern.search(text, max(line_start, start - width), start) is not None


def find_phones(text: str) -> Iterator[SpanPos]:
    if sum(c.isdigit() for c in text) < 7:
        return
    taken: list[SpanPos] = []
    if "+" in text:
        for m in _PHONE_INTL.finditer(text):
            start, end = m.span()
            if text[end - 1] == ")" and text.count("(", start, end) < text.count(")", start, end):
                end -= 1  # "(phone +49 151 23456789)": the parenthesis is the sentence's
            value = text[start:end]
            try:
                number = phonenumbers.parse(value, None)
            except phonenumbers.NumberParseException:
                continue
            # Possible, not valid: numbers in ranges kept for fiction (+44 7700 900xxx) are
            # written exactly like real ones.
            if phonenumbers.is_possible_number(number):
                taken.append((start, end))
    for m in _PHONE_NANP.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if _nanp_ok(digits):
            taken.append(m.span())
    for m in _PHONE_NATIONAL.finditer(text):
        if not _context_before(text, m.start(), _PHONE_CONTEXT):
            continue
        for region in _NATIONAL_REGIONS:
            try:
                number = phonenumbers.parse(m.group(), region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                taken.append(m.span())
                break
    for m in _PHONE_BARE.finditer(text):
        if _nanp_ok(m.group()) and _context_before(text, m.start(), _PHONE_CONTEXT):
            taken.append(m.span())
    yield from taken


# -------------------------------------------------------------------- credit card

_CARD = re.compile(r"(?<![\w.-])\d{4}(?:[ -]?\d{2,7}){2,4}(?![\w-]|\.\d)")
_CARD_GROUPS = {(4, 4, 4, 4), (4, 6, 5), (4, 6, 4), (4, 4, 4, 4, 3), (4, 4, 4, 1), (4, 4, 5)}


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_prefix_ok(d: str) -> bool:
    n2, n4 = int(d[:2]), int(d[:4])
    return (
        d[0] == "4"  # Visa
        or 51 <= n2 <= 55
        or 2221 <= n4 <= 2720  # Mastercard
        or n2 in (34, 37)  # Amex
        or d.startswith(("6011", "65"))
        or 644 <= int(d[:3]) <= 649  # Discover
        or 3528 <= n4 <= 3589  # JCB
        or n2 in (36, 38, 39)
        or 300 <= int(d[:3]) <= 305  # Diners
        or d.startswith(("62", "81"))  # UnionPay
    )


def find_cards(text: str) -> Iterator[SpanPos]:
    if sum(c.isdigit() for c in text) < 13:
        return
    for m in _CARD.finditer(text):
        value = m.group()
        groups = tuple(len(g) for g in re.split(r"[ -]", value))
        if len(groups) > 1 and groups not in _CARD_GROUPS:
            continue
        if len({sep for sep in value if not sep.isdigit()}) > 1:
            continue  # mixed separators: "1234-5678 9012 3456" is not how cards are written
        digits = value.replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and _card_prefix_ok(digits) and luhn_ok(digits):
            yield m.span()


# ----------------------------------------------------------------------------- IBAN

# Length of the IBAN (without spaces) by country, from the SWIFT IBAN registry.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
_IBAN = re.compile(r"(?<![\w-])([A-Z]{2})(\d{2})((?: ?[A-Z0-9]){11,30})(?![\w-])")


def iban_ok(compact: str) -> bool:
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def find_ibans(text: str) -> Iterator[SpanPos]:
    for m in _IBAN.finditer(text):
        expected = IBAN_LENGTHS.get(m.group(1))
        if expected is None:
            continue
        # The regex may run into a following all-caps word: cut at the country's length.
        seen, end = 0, m.start()
        for end in range(m.start(), m.end()):
            if text[end] != " ":
                seen += 1
                if seen == expected:
                    end += 1
                    break
        else:
            continue
        if end < len(text) and text[end].isalnum() and text[end - 1] != " ":
            continue
        if iban_ok(text[m.start() : end].replace(" ", "")):
            yield m.start(), end


# ------------------------------------------------------------------------ US SSN

_SSN = re.compile(r"(?<![\w.-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\w-]|\.\d)")
_SSN_BARE = re.compile(r"(?<![\w.-])\d{9}(?![\w-]|\.\d)")
_SSN_CONTEXT = re.compile(r"(?i)\b(?:ssn|social\s+security|ss#|ss\s+no|ssa)\b")


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """The SSA's rules: no 000, 666 or 9xx area, no 00 group, no 0000 serial."""
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return len({*area, *group, *serial}) > 1  # 111-11-1111 and friends


def find_ssns(text: str) -> Iterator[SpanPos]:
    for m in _SSN.finditer(text):
        if m.group(2) == " " and not _context_before(text, m.start(), _SSN_CONTEXT):
            continue  # "123 45 6789" only next to "SSN"
        if ssn_ok(m.group(1), m.group(3), m.group(4)):
            yield m.span()
    for m in _SSN_BARE.finditer(text):
        v = m.group()
        if ssn_ok(v[:3], v[3:5], v[5:]) and _context_before(text, m.start(), _SSN_CONTEXT):
            yield m.span()


# ------------------------------------------------------------------ date of birth

_MONTHS = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_DATE = re.compile(
    rf"(?<![\w/.-])(?:"
    rf"(?:\d{{4}}-\d{{1,2}}-\d{{1,2}})"  # 1985-03-12
    rf"|(?:\d{{1,2}}[/.\-]\d{{1,2}}[/.\-](?:\d{{4}}|\d{{2}}))"  # 12/03/1985, 3.12.85
    rf"|(?:{_MONTHS}\s+{_DAY}(?:,?\s+\d{{4}})?)"  # March 12, 1985
    rf"|(?:{_DAY}\s+(?:of\s+)?{_MONTHS}(?:,?\s+\d{{4}})?)"  # 12 March 1985
    rf")(?![\w/-]|\.\d)",
    re.IGNORECASE,
)
_BIRTH_CONTEXT = re.compile(
    r"(?i)(?:\bborn\b|\bd\.?o\.?b\b|\bdate\s+of\s+birth\b|\bbirth\s*date\b|\bbirthday\b|"
    r"\bb-?day\b|\bnée?\b|\bgeburtsdatum\b|\bdate\s+de\s+naissance\b|\bbday\b)"
)


_ALL_NUMERIC = re.compile(r"[\d/.\-]+")


def _numeric_date_ok(value: str) -> bool:
    parts = [int(p) for p in re.split(r"[/.\-]", value)]
    if value[:4].isdigit():
        return 1 <= parts[1] <= 12 and 1 <= parts[2] <= 31
    a, b = parts[0], parts[1]
    return (1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)


def find_birth_dates(text: str) -> Iterator[SpanPos]:
    """Dates with a birth word ("born", "DOB", "date of birth", …) shortly before them."""
    if _BIRTH_CONTEXT.search(text) is None:
        return
    for m in _DATE.finditer(text):
        value = m.group()
        if _ALL_NUMERIC.fullmatch(value) and not _numeric_date_ok(value):
            continue
        if _context_before(text, m.start(), _BIRTH_CONTEXT, width=45):
            yield m.span()


# ------------------------------------------------------------ postal addresses

_STREET_TYPES = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|"
    r"Terrace|Square|Sq|Parkway|Pkwy|Highway|Hwy|Close|Crescent|Circle|Cir|Row|Mews|Gardens)"
)
_STREET = re.compile(
    rf"(?<![\w-])\d{{1,5}}[A-Za-z]?,? +(?:(?:[NSEW]|North|South|East|West)\.? +)?"
    rf"(?:[A-Z][a-z]+\.? +){{1,3}}{_STREET_TYPES}\b"
)
_STRASSE = re.compile(
    r"(?<![\w-])[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|weg|gasse|platz|allee|ring|damm)"
    r" +\d{1,4}[a-z]?(?![\w-])"
)
_RUE = re.compile(
    r"(?<![\w-])\d{1,4}(?: ?(?:bis|ter))?,? +(?:rue|avenue|boulevard|place|chemin|allée|quai)"
    r" +(?:(?:de la|de l'|du|des|de|d') *)?[A-ZÉ][\w'-]+(?: +[A-ZÉ][\w'-]+){0,3}"
)
_US_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|"
    "NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC"
)
_CITY_STATE_ZIP = re.compile(
    rf"(?<![\w-])([A-Z][a-z]+(?:[ -][A-Z][a-z]+){{0,2}}),\s+({_US_STATES})\s+\d{{5}}(?:-\d{{4}})?(?!\w)"
)


def find_addresses(text: str) -> Iterator[SpanPos]:
    """Street lines ("221B Baker Street", "Hauptstraße 5", "12 rue de la Paix") and, in US
    postal addresses, the city and state before a ZIP code ("Springfield, IL 62704")."""
    if any(c.isdigit() for c in text):
        for pattern in (_STREET, _STRASSE, _RUE):
            for m in pattern.finditer(text):
                yield m.span()
        for m in _CITY_STATE_ZIP.finditer(text):
            yield m.span(1)
            yield m.span(2)
