"""Training the task classifier from the labeled prompts in ``data/routing/prompts``.

Plain numpy: softmax regression with L2 regularisation, trained full-batch with Adam on a
sparse matrix kept as CSR arrays. Deterministic: the same data gives the same weights. One
prompt in five (chosen by a hash of its text) is held out and never trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veil.routing.classifier import MODEL_PATH, TaskClassifier, digest_of, features
from veil.tasks import CATEGORIES, DIFFICULTIES

#: Where the repository keeps the prompts (not shipped in the package).
DATA_DIR = Path(__file__).resolve().parents[3] / "data" / "routing" / "prompts"
MIN_FEATURE_COUNT = 2


@dataclass(frozen=True, slots=True)
class Example:
    prompt: str
    category: str
    difficulty: str


def held_out(prompt: str) -> bool:
    """One prompt in five, fixed by its text: adding prompts never moves old ones."""
    return hashlib.sha256(prompt.encode()).digest()[0] % 5 == 0


def load_examples(directory: Path = DATA_DIR) -> list[Example]:
    files = sorted(directory.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl files in {directory}")
    examples: list[Example] = []
    for file in files:
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                example = Example(str(row["prompt"]), row["category"], row["difficulty"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{file}:{n}: not a labeled prompt ({exc})") from None
            if example.category not in CATEGORIES or example.difficulty not in DIFFICULTIES:
                raise ValueError(f"{file}:{n}: unknown category or difficulty")
            examples.append(example)
    return examples


def split(examples: Iterable[Example]) -> tuple[list[Example], list[Example]]:
    train: list[Example] = []
    test: list[Example] = []
    for e in examples:
        (test if held_out(e.prompt) else train).append(e)
    return train, test


@dataclass(slots=True)
class _Sparse:
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    rows: np.ndarray  # the row of every stored value

    def dot(self, w: np.ndarray) -> np.ndarray:
        products = w[self.indices] * self.data[:, None]
        return np.add.reduceat(products, self.indptr[:-1], axis=0)

    def t_dot(self, g: np.ndarray, n_features: int) -> np.ndarray:
        weighted = self.data[:, None] * g[self.rows]
        return np.stack(
            [
                np.bincount(self.indices, weights=weighted[:, k], minlength=n_features)
                for k in range(g.shape[1])
            ],
            axis=1,
        )


def _matrix(docs: Sequence[dict[str, float]], index: dict[str, int]) -> _Sparse:
    indptr = [0]
    indices: list[int] = []
    data: list[float] = []
    rows: list[int] = []
    for r, doc in enumerate(docs):
        for name, value in doc.items():
            i = index.get(name)
            if i is not None:
                indices.append(i)
                data.append(value)
                rows.append(r)
        indptr.append(len(indices))
    return _Sparse(
        np.asarray(indptr), np.asarray(indices), np.asarray(data), np.asarray(rows, dtype=np.intp)
    )


def _fit(
    x: _Sparse, labels: np.ndarray, n_classes: int, n_features: int, l2: float, epochs: int
) -> np.ndarray:
    """Softmax regression, full batch, Adam. The bias is the ``d:bias`` feature."""
    n = len(labels)
    y = np.zeros((n, n_classes))
    y[np.arange(n), labels] = 1.0
    # Classes weighted so a rare one counts as much as a common one.
    weights = n / (n_classes * np.maximum(y.sum(axis=0), 1.0))
    sample = weights[labels][:, None]
    w = np.zeros((n_features, n_classes))
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    lr, b1, b2 = 0.05, 0.9, 0.999
    for t in range(1, epochs + 1):
        scores = x.dot(w)
        scores -= scores.max(axis=1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=1, keepdims=True)
        grad = x.t_dot((p - y) * sample / n, n_features) + l2 * w
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        w -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + 1e-8)
    return w


@dataclass(frozen=True, slots=True)
class TrainedModel:
    vocabulary: list[str]
    category_w: np.ndarray
    difficulty_w: np.ndarray
    data_digest: str

    def save(self, path: Path = MODEL_PATH) -> None:
        with path.open("wb") as f:
            np.savez_compressed(
                f,
                vocabulary=np.asarray(self.vocabulary),
                category_w=self.category_w.astype(np.float32),
                difficulty_w=self.difficulty_w.astype(np.float32),
                data_digest=np.asarray(self.data_digest),
            )


def train(
    examples: Sequence[Example],
    category_l2: float = 3e-6,
    difficulty_l2: float = 1e-4,
    epochs: int = 300,
) -> TrainedModel:
    """Fit both heads. The L2 strengths were chosen by 4-fold cross-validation on the
    training split only (the held-out fifth never informs a choice)."""
    docs = [features(e.prompt) for e in examples]
    counts: dict[str, int] = {}
    for doc in docs:
        for name in doc:
            counts[name] = counts.get(name, 0) + 1
    vocabulary = sorted(
        n for n, c in counts.items() if c >= MIN_FEATURE_COUNT or n.startswith("d:")
    )
    index = {name: i for i, name in enumerate(vocabulary)}
    x = _matrix(docs, index)
    categories = np.asarray([CATEGORIES.index(e.category) for e in examples])
    difficulties = np.asarray([DIFFICULTIES.index(e.difficulty) for e in examples])
    category_w = _fit(x, categories, len(CATEGORIES), len(vocabulary), category_l2, epochs)
    difficulty_w = _fit(x, difficulties, len(DIFFICULTIES), len(vocabulary), difficulty_l2, epochs)
    digest = digest_of([f"{e.category}|{e.difficulty}|{e.prompt}" for e in examples])
    return TrainedModel(vocabulary, category_w, difficulty_w, digest)


@dataclass(frozen=True, slots=True)
class Scores:
    category: float
    difficulty: float
    n: int


def evaluate(classifier: TaskClassifier, examples: Sequence[Example]) -> Scores:
    if not examples:
        return Scores(0.0, 0.0, 0)
    category = difficulty = 0
    for e in examples:
        c = classifier.classify(e.prompt)
        category += c.category == e.category
        difficulty += c.difficulty == e.difficulty
    n = len(examples)
    return Scores(category / n, difficulty / n, n)
