"""Training the content-safety classifier from ``data/safety/prompts``.

Plain numpy, deterministic: the same data gives the same weights.

- **Examples.** Every line of ``data/safety/prompts/*.jsonl``, and every prompt of
  ``data/routing/prompts/*.jsonl`` as a safe example (labels ``[]``: they are all benign
  tasks). ``data/safety/heldout`` is never trained on; it only measures (``evaluate``).
- **Model.** One logistic regression per label over the windows of ``classifier.features``,
  with L2 regularisation, full batch, Adam; the safety data's safe examples (hard
  negatives) count ``HARD_NEGATIVE_WEIGHT`` times. A label is judged on the worst window of the
  parts it applies to (harm: prompt and documents; ``jailbreak``: the prompt;
  ``indirect_injection``: the documents), and trained the same way (multiple-instance: an
  example's label is learnt from its worst window), so training and ``judge`` agree.
- **Heads.** Only labels with at least ``MIN_POSITIVES`` training examples get one. One
  more head, trained on "any harm category", is shared: each harm label's logit is the mean
  of its own head's and the shared one's (``SHARED_WEIGHT``), folded into the shipped
  weights, so the shipped model is still one linear function and one sigmoid per label.
- **Probabilities and thresholds.** ``FOLDS``-fold cross-validation on the training data
  (folds by a hash of the prompt; each fold builds its own vocabulary) gives an
  out-of-fold score for every example. On those: Platt scaling per label (folded into the
  shipped weights: the scores are probabilities), then the decision thresholds — greedily, the cheapest
  thresholds that catch the most labeled examples while the share of safe safety examples
  flagged by any label stays within ``FPR_BUDGET``. ``SHARED_WEIGHT``,
  ``HARD_NEGATIVE_WEIGHT``, the cue weight and the windows were chosen by nested
  cross-validation (thresholds picked without one fold, measured on it). ``FPR_BUDGET`` was
  0.025 until the held-out false-positive rate was seen to track the cross-validated one
  (0.028 against 0.024, 0.041 against 0.035): it is now 0.035, to spend most of the 0.05 the
  target allows while leaving room. That is the one choice the held-out set informed, and
  it is said in docs/safety.md. The word clusters (``CLUSTER_WEIGHT`` in the classifier)
  were kept because they raised the cross-validated recall (0.695 to 0.707 at the same
  false-positive rate).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from veil.routing import train as routing
from veil.routing.classifier import digest_of
from veil.safety import ALL_CATEGORIES, ATTACKS, CATEGORIES, Screen
from veil.safety.classifier import (
    MODEL_PATH,
    LocalModerator,
    SafetyModel,
    sigmoid,
    text_features,
)
from veil.safety.clusters import CLUSTERS_PATH

_DATA = Path(__file__).resolve().parents[3] / "data" / "safety"
#: Where the repository keeps the labeled requests (not shipped in the package).
DATA_DIR = _DATA / "prompts"
HELDOUT_DIR = _DATA / "heldout"
#: Benign prompts, every one a safe example.
ROUTING_DIR = routing.DATA_DIR
#: Fewer training examples than this and a label gets no head.
MIN_POSITIVES = 15
#: A feature must occur in this many training windows to be kept.
MIN_FEATURE_COUNT = 2
FOLDS = 5
#: The share of safe examples (of the safety data) that may be flagged, out of fold.
FPR_BUDGET = 0.035
L2 = 1e-4
EPOCHS = 120
#: A safe example of the safety data (a hard negative: close to a harmful request, and
#: safe) counts this many times as much as a benign routing prompt.
HARD_NEGATIVE_WEIGHT = 3.0
#: Positives count (negatives / positives) ** BALANCE times as much as a negative.
BALANCE = 0.5
#: A harm label's logit is the mean of its own head's and a shared head's, trained on "any
#: harm": the shared head sees every harmful example, so each label borrows its strength.
SHARED_WEIGHT = 0.5
#: (A shared head for the two attacks did worse in cross-validation: 0.65 against 0.69.)
SHARED = (("any harm", frozenset(CATEGORIES)),)
_JAILBREAK, _INJECTION = ATTACKS

#: ``progress(stage, epochs_done, epochs)``, called after every epoch of every fit.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class Example:
    prompt: str
    documents: tuple[str, ...] = ()
    labels: frozenset[str] = frozenset()
    #: ``file:line``, for messages.
    where: str = field(default="", compare=False)

    def targets(self) -> frozenset[str]:
        """The labels, with the parent of each subcategory (the data's own rule)."""
        return self.labels | {label.split("/")[0] for label in self.labels}


def load_examples(directory: Path = DATA_DIR) -> list[Example]:
    files = sorted(directory.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl files in {directory}")
    examples: list[Example] = []
    for file in files:
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{file.name}:{n}"
            try:
                row = json.loads(line)
                documents = tuple(str(d) for d in row.get("documents") or ())
                labels = frozenset(str(label) for label in row["labels"])
                example = Example(str(row["prompt"]), documents, labels, where)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"{file}:{n}: not a labeled request ({exc})") from None
            unknown = labels - set(ALL_CATEGORIES)
            if unknown:
                raise ValueError(f"{file}:{n}: unknown labels {sorted(unknown)}")
            examples.append(example)
    return examples


def load_benign(directory: Path = ROUTING_DIR) -> list[Example]:
    """Every routing prompt, as a safe example."""
    examples: list[Example] = []
    for file in sorted(directory.glob("*.jsonl")):
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                examples.append(Example(str(json.loads(line)["prompt"]), where=f"{file.name}:{n}"))
    return examples


def problems(examples: Sequence[Example]) -> list[str]:
    """Lines that break the data's rules (see data/safety/README.md)."""
    found: list[str] = []
    for e in examples:
        missing = e.targets() - e.labels
        if missing:
            found.append(f"{e.where}: a subcategory without its parent {sorted(missing)}")
        if _INJECTION in e.labels and not e.documents:
            found.append(f"{e.where}: indirect_injection without documents (never learnt)")
    return found


def data_digest(examples: Sequence[Example], benign: Sequence[Example]) -> str:
    """Identifies what a shipped model was built from: the training data and the word
    clusters its features read (``veil.safety.clusters``)."""
    return digest_of(
        [
            "|".join(sorted(e.labels)) + "|" + e.prompt + "\x1f" + "\x1f".join(e.documents)
            for e in examples
        ]
        + ["benign|" + e.prompt for e in benign]
        + ["clusters|" + hashlib.sha256(CLUSTERS_PATH.read_bytes()).hexdigest()]
    )


def fold_of(example: Example, folds: int = FOLDS) -> int:
    """Fixed by the prompt's text, so the same prompt with and without documents share one."""
    return hashlib.sha256(example.prompt.encode()).digest()[0] % folds


# ------------------------------------------------------------------ the design matrix


@dataclass(slots=True)
class _Windows:
    """Every window of every example, as a sparse matrix over global feature ids."""

    names: list[str]
    row: np.ndarray  # per stored value: its window
    col: np.ndarray  # per stored value: its feature
    value: np.ndarray
    bag: np.ndarray  # per window: its example
    allowed: np.ndarray  # (windows × labels): the label is judged on this window


def _windows(examples: Sequence[Example], labels: Sequence[str]) -> _Windows:
    ids: dict[str, int] = {}
    row: list[int] = []
    col: list[int] = []
    value: list[float] = []
    bag: list[int] = []
    is_document: list[bool] = []
    for b, e in enumerate(examples):
        parts = [(False, e.prompt), *((True, d) for d in e.documents)]
        for document, text in parts:
            for window in text_features(text, document):
                r = len(bag)
                bag.append(b)
                is_document.append(document)
                for name, v in window.items():
                    row.append(r)
                    col.append(ids.setdefault(name, len(ids)))
                    value.append(v)
    documents = np.asarray(is_document)
    allowed = np.ones((len(bag), len(labels)), dtype=bool)
    for j, label in enumerate(labels):
        if label == _JAILBREAK:
            allowed[:, j] = ~documents
        elif label == _INJECTION:
            allowed[:, j] = documents
    return _Windows(
        list(ids),
        np.asarray(row, dtype=np.intp),
        np.asarray(col, dtype=np.intp),
        np.asarray(value),
        np.asarray(bag, dtype=np.intp),
        allowed,
    )


@dataclass(slots=True)
class _Matrix:
    """CSR rows (windows) and the same values sorted by column, for ``x.T @ g``."""

    n_rows: int
    n_cols: int
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    col_starts: np.ndarray
    col_rows: np.ndarray
    col_data: np.ndarray

    @classmethod
    def build(
        cls, row: np.ndarray, col: np.ndarray, data: np.ndarray, shape: tuple[int, int]
    ) -> _Matrix:
        n_rows, n_cols = shape
        indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n_rows))])
        order = np.argsort(col, kind="stable")
        col_starts = np.concatenate([[0], np.cumsum(np.bincount(col, minlength=n_cols))])[:-1]
        # float32: the products are memory-bound, and the precision is plenty.
        data = data.astype(np.float32)
        return cls(n_rows, n_cols, indptr, col, data, col_starts, row[order], data[order])

    def dot(self, w: np.ndarray) -> np.ndarray:
        # Every row holds d:bias, so no row is empty.
        return np.add.reduceat(w[self.indices] * self.data[:, None], self.indptr[:-1], axis=0)

    def t_dot(self, g: np.ndarray) -> np.ndarray:
        # Every column of a training vocabulary occurs, so no column is empty.
        return np.add.reduceat(g[self.col_rows] * self.col_data[:, None], self.col_starts, axis=0)


@dataclass(slots=True)
class _Design:
    """The windows of some examples over a vocabulary: what one fit needs."""

    x: _Matrix
    vocabulary: list[str]
    ids: np.ndarray  # the vocabulary's global feature ids
    bag: np.ndarray
    bag_starts: np.ndarray
    allowed: np.ndarray


def _design(w: _Windows, bags: np.ndarray, vocabulary: np.ndarray | None = None) -> _Design:
    """The windows of ``bags`` (sorted example ids); over the features that occur in
    ``MIN_FEATURE_COUNT`` of them when no vocabulary (global ids) is given."""
    picked = np.zeros(int(w.bag.max(initial=0)) + 1, dtype=bool)
    picked[bags] = True
    take_window = picked[w.bag]
    in_rows = take_window[w.row]
    if vocabulary is None:
        counts = np.bincount(w.col[in_rows], minlength=len(w.names))
        keep = (counts >= MIN_FEATURE_COUNT) | np.asarray([n.startswith("d:") for n in w.names])
        vocabulary = np.flatnonzero(keep)
    local = np.full(len(w.names), -1, dtype=np.intp)
    local[vocabulary] = np.arange(len(vocabulary))
    window_id = np.cumsum(take_window) - 1
    kept = in_rows & (local[w.col] >= 0)
    x = _Matrix.build(
        window_id[w.row[kept]],
        local[w.col[kept]],
        w.value[kept],
        (int(take_window.sum()), len(vocabulary)),
    )
    bag_of_window = np.searchsorted(bags, w.bag[take_window])
    bag_starts = np.flatnonzero(np.diff(bag_of_window, prepend=-1))
    return _Design(
        x,
        [w.names[i] for i in vocabulary],
        vocabulary,
        bag_of_window,
        bag_starts,
        w.allowed[take_window],
    )


# ------------------------------------------------------------------ fitting


def _worst(z: np.ndarray, d: _Design) -> tuple[np.ndarray, np.ndarray]:
    """Per example and label: the largest logit over its allowed windows (-inf if none),
    and which window it is (the number of windows if none)."""
    masked = np.where(d.allowed, z, -np.inf)
    worst = np.maximum.reduceat(masked, d.bag_starts, axis=0)
    n = len(d.bag)
    hit = d.allowed & (masked == worst[d.bag])
    which = np.where(hit, np.arange(n)[:, None], n)
    return worst, np.minimum.reduceat(which, d.bag_starts, axis=0)


def _fit(
    d: _Design,
    y: np.ndarray,
    l2: float,
    epochs: int,
    balance: float,
    sample: np.ndarray | None = None,
    tick: Callable[[int], None] | None = None,
) -> np.ndarray:
    """One logistic regression per label on each example's worst allowed window; ``sample``
    weighs examples."""
    n_bags, n_labels = y.shape
    n_features = len(d.vocabulary)
    valid = np.isfinite(_worst(np.zeros((len(d.bag), n_labels)), d)[0])
    positives = (y * valid).sum(axis=0)
    negatives = valid.sum(axis=0) - positives
    boost = (negatives / np.maximum(positives, 1.0)) ** balance
    weight = np.where(y > 0, boost, 1.0) * valid / n_bags
    if sample is not None:
        weight *= sample[:, None]
    weight = weight.astype(np.float32)
    decay = np.full((n_features, 1), l2, dtype=np.float32)
    decay[d.vocabulary.index("d:bias")] = 0.0  # the intercept is not shrunk
    columns = np.broadcast_to(np.arange(n_labels), (n_bags, n_labels))
    w = np.zeros((n_features, n_labels), dtype=np.float32)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    lr, b1, b2 = 0.05, 0.9, 0.999
    for t in range(1, epochs + 1):
        worst, which = _worst(d.x.dot(w), d)
        g = (sigmoid(worst) - y) * weight
        grad_windows = np.zeros((len(d.bag) + 1, n_labels), dtype=np.float32)
        grad_windows[which, columns] = g
        grad = d.x.t_dot(grad_windows[:-1]) + decay * w
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        w -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + 1e-8)
        if tick is not None:
            tick(t)
    return w


def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """sigmoid(a·z + b) fitted to out-of-fold logits, with Platt's smoothed targets."""
    n_pos = float(y.sum())
    n_neg = len(y) - n_pos
    target = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    a, b = 1.0, 0.0
    for _ in range(100):
        p = sigmoid(a * z + b)
        r = p * (1 - p) + 1e-12
        grad = np.array([((p - target) * z).sum(), (p - target).sum()])
        hess = np.array([[(r * z * z).sum(), (r * z).sum()], [(r * z).sum(), r.sum()]])
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        a, b = a - float(step[0]), b - float(step[1])
        if abs(step).max() < 1e-10:
            break
    return max(a, 1e-3), b


def choose_thresholds(
    scores: np.ndarray, y: np.ndarray, safe: np.ndarray, budget: float = FPR_BUDGET
) -> np.ndarray:
    """Per label, the threshold on ``scores`` (examples × labels) that together catch the
    most labeled (example, label) pairs while at most ``budget`` of the ``safe`` examples
    reach any threshold. Greedy: always the move that catches the most per false positive
    (free moves first); each threshold sits halfway (in logit) between the lowest positive
    it catches and the highest safe score below it."""
    n_labels = scores.shape[1]
    safe_scores = scores[safe]
    max_fp = int(budget * len(safe_scores))
    flagged = np.zeros(len(safe_scores), dtype=bool)
    positives = [np.sort(scores[y[:, j] > 0, j])[::-1] for j in range(n_labels)]
    safe_order = [np.argsort(-safe_scores[:, j], kind="stable") for j in range(n_labels)]
    safe_sorted = [safe_scores[safe_order[j], j] for j in range(n_labels)]
    caught = np.zeros(n_labels, dtype=np.intp)  # positives at or above the threshold
    reached = np.zeros(n_labels, dtype=np.intp)  # safe examples at or above it
    fp = 0
    while True:
        best: tuple[float, int, int, int, int] | None = None  # ratio, gain, label, caught, reached
        for j in range(n_labels):
            candidates = positives[j][caught[j] :]
            if not len(candidates):
                continue
            # Ties: a threshold catches every positive with that score.
            counts = np.searchsorted(-positives[j], -candidates, "right")
            reach = np.searchsorted(-safe_sorted[j], -candidates, "right")
            unflagged = np.concatenate([[0], np.cumsum(~flagged[safe_order[j]])])
            added = unflagged[reach] - unflagged[reached[j]]
            feasible = np.flatnonzero(fp + added <= max_fp)
            if not len(feasible):
                continue
            gain = counts[feasible] - caught[j]
            ratio = np.where(added[feasible] == 0, np.inf, gain / np.maximum(added[feasible], 1))
            k = int(np.lexsort((-gain, -ratio))[0])
            i = int(feasible[k])
            move = (float(ratio[k]), int(gain[k]), j, int(counts[i]), int(reach[i]))
            if best is None or (move[0], move[1]) > (best[0], best[1]):
                best = move
        if best is None:
            break
        _, _, j, caught[j], new_reach = best
        newly = safe_order[j][reached[j] : new_reach]
        fp += int((~flagged[newly]).sum())
        flagged[newly] = True
        reached[j] = new_reach
    thresholds = np.ones(n_labels)
    for j in range(n_labels):
        if caught[j]:
            low = positives[j][caught[j] - 1]
            below = safe_sorted[j][reached[j]] if reached[j] < len(safe_sorted[j]) else 0.0
            thresholds[j] = _midpoint(low, below)
    return thresholds


def _midpoint(high: float, low: float) -> float:
    clip = 1e-9
    hi, lo = np.clip([high, low], clip, 1 - clip)
    logit = (np.log(hi / (1 - hi)) + np.log(lo / (1 - lo))) / 2
    return float(min(high, 1 / (1 + np.exp(-logit))))


# ------------------------------------------------------------------ training


@dataclass(frozen=True, slots=True)
class TrainedModel:
    labels: tuple[str, ...]
    vocabulary: list[str]
    weights: np.ndarray
    thresholds: np.ndarray
    data_digest: str
    #: Out-of-fold figures on the training data: recall, FPR (safety data), FPR (routing).
    cv: dict[str, float]

    def save(self, path: Path = MODEL_PATH) -> None:
        with path.open("wb") as f:
            np.savez_compressed(
                f,
                labels=np.asarray(self.labels),
                vocabulary=np.asarray(self.vocabulary),
                weights=self.weights.astype(np.float32),
                thresholds=self.thresholds,
                data_digest=np.asarray(self.data_digest),
                cv=np.asarray(json.dumps(self.cv, sort_keys=True)),
            )

    def model(self) -> SafetyModel:
        return SafetyModel(
            self.labels,
            {name: i for i, name in enumerate(self.vocabulary)},
            self.weights.astype(np.float32).astype(np.float64),
            {label: float(t) for label, t in zip(self.labels, self.thresholds, strict=True)},
            self.data_digest,
            self.cv,
        )


def heads(examples: Sequence[Example], min_positives: int = MIN_POSITIVES) -> tuple[str, ...]:
    """The labels with enough examples to learn (an injection only counts with documents)."""
    counts = {label: 0 for label in ALL_CATEGORIES}
    for e in examples:
        for label in e.targets():
            if label != _INJECTION or e.documents:
                counts[label] += 1
    return tuple(label for label in ALL_CATEGORIES if counts[label] >= min_positives)


def train(
    examples: Sequence[Example],
    benign: Sequence[Example] = (),
    *,
    min_positives: int = MIN_POSITIVES,
    folds: int = FOLDS,
    l2: float = L2,
    epochs: int = EPOCHS,
    balance: float = BALANCE,
    budget: float = FPR_BUDGET,
    progress: Progress | None = None,
) -> TrainedModel:
    """Cross-validate (probabilities and thresholds), then fit on everything."""
    labels = heads(examples, min_positives)
    if not labels:
        raise ValueError(f"no label has {min_positives} training examples")
    everything = [*examples, *benign]
    # More columns while training: one shared head per group of labels.
    group = [
        next((i for i, (_, members) in enumerate(SHARED) if label in members), -1)
        for label in labels
    ]
    windows = _windows(everything, [*labels, *(name for name, _ in SHARED)])
    targets = np.asarray(
        [
            [label in e.targets() for label in labels]
            + [bool(e.labels & members) for _, members in SHARED]
            for e in everything
        ],
        float,
    )
    safe = np.asarray([not e.labels for e in examples] + [False] * len(benign))
    routing = np.asarray([False] * len(examples) + [True] * len(benign))
    fold = np.asarray([fold_of(e, folds) for e in everything])
    sample = np.where(safe, HARD_NEGATIVE_WEIGHT, 1.0)

    out_of_fold = np.full(targets.shape, -np.inf)
    for k in range(folds):
        fit_bags, test_bags = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        if not len(test_bags):
            continue
        design = _design(windows, fit_bags)
        tick = _tick(progress, f"fold {k + 1}/{folds}", epochs)
        w = _fit(design, targets[fit_bags], l2, epochs, balance, sample[fit_bags], tick)
        test = _design(windows, test_bags, design.ids)
        out_of_fold[test_bags] = _worst(_combine(test.x.dot(w), group), test)[0]

    # Platt scaling of the combined logits; the thresholds on the resulting probabilities.
    y = targets[:, : len(labels)]
    valid = np.isfinite(out_of_fold[:, : len(labels)])
    scale = np.zeros((len(labels), 2))
    probabilities = np.zeros(y.shape)
    for j in range(len(labels)):
        z = out_of_fold[valid[:, j], j]
        scale[j] = _platt(z, y[valid[:, j], j])
        probabilities[valid[:, j], j] = sigmoid(scale[j, 0] * z + scale[j, 1])
    thresholds = choose_thresholds(probabilities, y, safe, budget)

    design = _design(windows, np.arange(len(everything)))
    tick = _tick(progress, "all data", epochs)
    w = _combine(_fit(design, targets, l2, epochs, balance, sample, tick), group)
    # Fold the scaling into the weights: probability = sigmoid(window · weights).
    w = w[:, : len(labels)] * scale[:, 0]
    w[design.vocabulary.index("d:bias")] += scale[:, 1]
    flagged = np.asarray((probabilities >= thresholds).any(axis=1))
    unsafe = y.any(axis=1) & ~routing
    cv = {
        "recall": float(flagged[unsafe].mean()) if unsafe.any() else 0.0,
        "fpr": float(flagged[safe].mean()) if safe.any() else 0.0,
        "fpr_routing": float(flagged[routing].mean()) if routing.any() else 0.0,
    }
    for j, label in enumerate(labels):
        positive = y[:, j] > 0
        cv["recall " + label] = float((probabilities[positive, j] >= thresholds[j]).mean())
    return TrainedModel(labels, design.vocabulary, w, thresholds, data_digest(examples, benign), cv)


def _combine(z: np.ndarray, group: Sequence[int]) -> np.ndarray:
    """Each label's logit averaged with its group's shared head's (the columns after the
    labels'); a label in no group (-1) keeps its own."""
    out = z.copy()
    for j, g in enumerate(group):
        if g >= 0:
            out[:, j] = (1 - SHARED_WEIGHT) * z[:, j] + SHARED_WEIGHT * z[:, len(group) + g]
    return out


def _tick(progress: Progress | None, stage: str, epochs: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    return lambda done: progress(stage, done, epochs)


# ------------------------------------------------------------------ measuring


@dataclass(frozen=True, slots=True)
class Report:
    """How a moderator did on labeled examples, at its own thresholds."""

    n_unsafe: int
    n_safe: int
    recall: float
    fpr: float
    #: Per label: (examples caught by that label's own head, examples with the label).
    per_label: dict[str, tuple[int, int]]


def evaluate(moderator: LocalModerator, examples: Sequence[Example]) -> Report:
    caught_any = flagged_safe = n_unsafe = n_safe = 0
    per_label = {label: [0, 0] for label in ALL_CATEGORIES}
    for e in examples:
        verdict = moderator.judge(Screen(e.prompt, e.documents))
        flagged = set(moderator.flagged(verdict))
        if e.labels:
            n_unsafe += 1
            caught_any += bool(flagged)
        else:
            n_safe += 1
            flagged_safe += bool(flagged)
        for label in e.targets():
            per_label[label][1] += 1
            per_label[label][0] += label in flagged
    return Report(
        n_unsafe,
        n_safe,
        caught_any / max(n_unsafe, 1),
        flagged_safe / max(n_safe, 1),
        {label: (c, n) for label, (c, n) in per_label.items() if n},
    )
