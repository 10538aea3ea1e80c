"""The task classifier: what kind of task a prompt is, and whether a small model can do it.

Two linear models (softmax regression) over the same sparse features — words, word pairs,
character n-grams inside words, cue phrases (``cues.py``) and a few shape features (length,
lines, code and math symbols). They are trained by ``veil route train`` from the prompts in
``data/routing/`` and shipped as ``classifier.npz`` next to this module: no network, no
model download, and about half a millisecond per prompt on one core (``bench/routing.py``).

Only the last user message is classified (that is where the task is asked for); its size
and the whole conversation's are estimated separately for the context-window check.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from veil.routing.cues import CUE_PATTERNS
from veil.tasks import CATEGORIES, DIFFICULTIES, Category, Difficulty

MODEL_PATH = Path(__file__).with_name("classifier.npz")
#: The classifier reads the head and the tail of a long prompt: the instruction is almost
#: always there, and the cost stays flat however much text was pasted in between.
HEAD_CHARS = 4000
TAIL_CHARS = 1000
#: Tokens at each end that count fully; pasted text between them counts less.
HEAD_WEIGHTED = 40
TAIL_WEIGHTED = 20
MIDDLE_WEIGHT = 0.3
EDGE_TOKENS = 20
CUE_HEAD_CHARS = 300
CUE_TAIL_CHARS = 200
#: Cue phrases anywhere are looked for in this much of the prompt (regexes cost per byte).
CUE_ANYWHERE_CHARS = 1500
_TOKEN = re.compile(r"\w+|[^\w\s]")
_CODE = re.compile(r"[{};<>=]|\bdef\b|\bfunction\b|\breturn\b|```")
_MATH = re.compile(r"\d\s*[-+*/^=×÷]\s*\d|[∑∫√π]|\\frac|\bx\^")


@dataclass(frozen=True, slots=True)
class Classification:
    category: Category
    difficulty: Difficulty
    #: The probability the model gave each answer.
    category_confidence: float
    difficulty_confidence: float


def features(text: str) -> dict[str, float]:
    """The named features of one prompt and their values.

    Words and word pairs (``w:``, ``b:``) and character 4-grams inside words (``c:``), with
    the first ``HEAD_WEIGHTED`` and last ``TAIL_WEIGHTED`` tokens counting fully and pasted
    text in between at ``MIDDLE_WEIGHT`` — the instruction is almost always at one end; the
    same words again, namespaced, for the instruction's likely place (``h:``/``t:``, the
    first and last ``EDGE_TOKENS``); cue phrases (``k:`` near the ends, ``K:`` in the
    first ``CUE_ANYWHERE_CHARS``);
    and shape (``d:``). Each group is L2-normalised on its own.
    """
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        kept = text[:HEAD_CHARS] + "\n…\n" + text[-TAIL_CHARS:]
        tokens = _TOKEN.findall(kept.lower())
        n_tokens = round(len(tokens) * len(text) / len(kept))
        text = kept
    else:
        tokens = _TOKEN.findall(text.lower())
        n_tokens = len(tokens)
    n = len(tokens)
    counts: dict[str, float] = {}
    previous = "<s>"
    for i, token in enumerate(tokens):
        weight = 1.0 if i < HEAD_WEIGHTED or i >= n - TAIL_WEIGHTED else MIDDLE_WEIGHT
        counts["w:" + token] = counts.get("w:" + token, 0.0) + weight
        pair = "b:" + previous + " " + token
        counts[pair] = counts.get(pair, 0.0) + weight
        previous = token
        if len(token) > 3 and token.isalpha():
            padded = "<" + token + ">"
            for j in range(len(padded) - 3):
                gram = "c:" + padded[j : j + 4]
                counts[gram] = counts.get(gram, 0.0) + 0.5 * weight
    out = _normalised(counts)
    edges: dict[str, float] = {}
    for prefix, part in (("h:", tokens[:EDGE_TOKENS]), ("t:", tokens[-EDGE_TOKENS:])):
        for a, b in itertools.pairwise(part):
            edges[prefix + a] = 1.0
            edges[prefix + a + " " + b] = 1.0
        if part:
            edges[prefix + part[-1]] = 1.0
    out.update(_normalised(edges))
    ends = text[:CUE_HEAD_CHARS] + "\n" + text[-CUE_TAIL_CHARS:]
    short = len(text) <= CUE_ANYWHERE_CHARS
    for name, pattern in CUE_PATTERNS.items():
        anywhere = pattern.search(text, 0, CUE_ANYWHERE_CHARS) is not None
        if anywhere:
            out["K:" + name] = 0.5
        # In a short prompt the ends are inside what was just searched.
        if (anywhere or not short) and pattern.search(ends):
            out["k:" + name] = 1.0
    # Shape: how long, how many lines, how much code or arithmetic it contains.
    out["d:bias"] = 1.0
    out["d:tokens"] = math.log1p(n_tokens) / 8.0
    out["d:lines"] = math.log1p(text.count("\n")) / 5.0
    out["d:code"] = min(len(_CODE.findall(text)), 40) / 40.0
    out["d:math"] = min(len(_MATH.findall(text)), 10) / 10.0
    out["d:question"] = 1.0 if text.rstrip().endswith("?") else 0.0
    out["d:nonascii"] = sum(ord(ch) > 127 for ch in text[:2000]) / max(len(text[:2000]), 1)
    return out


def _normalised(counts: dict[str, float]) -> dict[str, float]:
    norm = math.sqrt(sum(v * v for v in counts.values())) or 1.0
    return {k: v / norm for k, v in counts.items()}


class TaskClassifier:
    """Loaded once per process; ``classify`` is pure and thread-safe."""

    def __init__(self, path: Path = MODEL_PATH) -> None:
        try:
            with np.load(path, allow_pickle=False) as saved:
                vocabulary = [str(v) for v in saved["vocabulary"]]
                self._category_w = saved["category_w"].astype(np.float64)
                self._difficulty_w = saved["difficulty_w"].astype(np.float64)
                self.data_digest = str(saved["data_digest"])
        except (OSError, KeyError, ValueError) as exc:
            raise RuntimeError(
                f"cannot load the task classifier from {path}: {exc}; "
                "rebuild it with 'veil route train'"
            ) from exc
        self._index = {name: i for i, name in enumerate(vocabulary)}

    def _vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        index = self._index
        rows: list[int] = []
        values: list[float] = []
        for name, value in features(text).items():
            i = index.get(name)
            if i is not None:
                rows.append(i)
                values.append(value)
        return np.asarray(rows, dtype=np.intp), np.asarray(values)

    def classify(self, text: str) -> Classification:
        rows, values = self._vector(text)
        category = _softmax(values @ self._category_w[rows])
        difficulty = _softmax(values @ self._difficulty_w[rows])
        c, d = int(category.argmax()), int(difficulty.argmax())
        return Classification(
            CATEGORIES[c], DIFFICULTIES[d], float(category[c]), float(difficulty[d])
        )


def _softmax(scores: np.ndarray) -> np.ndarray:
    exp = np.exp(scores - scores.max())
    return np.asarray(exp / exp.sum())


@cache
def default_classifier() -> TaskClassifier:
    return TaskClassifier()


def digest_of(texts: list[str]) -> str:
    """Identifies the training data a shipped model was built from."""
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()
