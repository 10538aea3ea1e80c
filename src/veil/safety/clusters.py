"""Word clusters: what lets the safety classifier read a word it never saw in training.

Its n-grams only know the words of its training data; a request worded otherwise ("end
him" for "kill him", "narcotics" for "drugs") shares none of them. So every word also
counts as its *cluster*: about 21,700 English words from the vocabulary of the embedding
model that ships with Veil (``veil.embeddings.minilm``), each read on its own by that model,
grouped by spherical k-means into ``FINE`` clusters and, coarser, ``COARSE`` — "kill",
"murdering" and "lethal" fall together, as do "poison" and "toxin". The classifier's
features add each word's clusters and each pair of neighbouring coarse clusters
(``veil.safety.classifier.features``).

The table ships as ``word_clusters.tsv`` next to this module (word, fine, coarse), so
judging needs neither the embedding model nor numpy work: one dictionary lookup per word.
``veil safety clusters`` rebuilds it (about a minute; deterministic for the same weights
and numpy).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

CLUSTERS_PATH = Path(__file__).with_name("word_clusters.tsv")
FINE = 1200
COARSE = 300
#: The word vectors are reduced to this many principal components before clustering.
COMPONENTS = 128
ITERATIONS = 20
SEED = 0

#: ``progress(stage, done, total)``.
Progress = Callable[[str, int, int], None]


@cache
def word_clusters(path: Path = CLUSTERS_PATH) -> dict[str, tuple[int, int]]:
    """word → (fine cluster, coarse cluster), read once."""
    table: dict[str, tuple[int, int]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        try:
            word, fine, coarse = line.split("\t")
            table[word] = (int(fine), int(coarse))
        except ValueError:
            raise ValueError(f"{path}:{n}: expected word<TAB>fine<TAB>coarse") from None
    return table


def vocabulary_words(vocab: dict[str, int]) -> list[str]:
    """The whole English words of a WordPiece vocabulary (no pieces, marks or numbers)."""
    words = [w for w in vocab if w.isascii() and w.isalpha() and not w.startswith("##")]
    return sorted(words, key=vocab.__getitem__)


def spherical_kmeans(
    vectors: np.ndarray, k: int, iterations: int = ITERATIONS, seed: int = SEED
) -> np.ndarray:
    """Cluster unit ``vectors`` by cosine similarity; the cluster of each row. Centres start
    by k-means++ (each next one drawn in proportion to its distance from those chosen)."""
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(vectors)))]
    distance = 1.0 - vectors @ vectors[chosen[0]]
    for _ in range(1, k):
        weights = np.maximum(distance, 0.0) ** 2
        total = float(weights.sum())
        pick = int(rng.choice(len(vectors), p=weights / total)) if total > 0 else len(chosen)
        chosen.append(pick)
        np.minimum(distance, 1.0 - vectors @ vectors[pick], out=distance)
    centres = vectors[chosen].copy()
    assigned = np.zeros(len(vectors), dtype=np.intp)
    for _ in range(iterations):
        assigned = np.argmax(vectors @ centres.T, axis=1)
        sums = np.zeros_like(centres)
        np.add.at(sums, assigned, vectors)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        # An empty cluster keeps its centre.
        centres = np.where(norms > 0, sums / np.maximum(norms, 1e-12), centres)
    return np.asarray(assigned)


def build(progress: Progress | None = None) -> list[tuple[str, int, int]]:
    """(word, fine, coarse) for every word of the embedding model's vocabulary."""
    from veil.embeddings.minilm import default_encoder

    encoder = default_encoder()
    words = vocabulary_words(encoder.tokenizer.vocab)
    step = 2048
    parts = []
    for start in range(0, len(words), step):
        parts.append(encoder.word_vectors(words[start : start + step]))
        if progress is not None:
            progress("word vectors", min(start + step, len(words)), len(words))
    vectors = np.concatenate(parts).astype(np.float64)
    vectors -= vectors.mean(axis=0)
    _, _, components = np.linalg.svd(vectors, full_matrices=False)
    reduced = vectors @ components[:COMPONENTS].T
    reduced /= np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)
    reduced = reduced.astype(np.float32)
    if progress is not None:
        progress("clustering", 0, 2)
    fine = spherical_kmeans(reduced, FINE)
    if progress is not None:
        progress("clustering", 1, 2)
    coarse = spherical_kmeans(reduced, COARSE)
    if progress is not None:
        progress("clustering", 2, 2)
    return [(w, int(f), int(c)) for w, f, c in zip(words, fine, coarse, strict=True)]


def save(rows: list[tuple[str, int, int]], path: Path = CLUSTERS_PATH) -> None:
    header = (
        f"# word<TAB>cluster of {FINE}<TAB>cluster of {COARSE}: built by `veil safety clusters`"
        " from all-MiniLM-L6-v2's word vectors (see veil/safety/clusters.py)\n"
    )
    path.write_text(header + "".join(f"{w}\t{f}\t{c}\n" for w, f, c in rows), encoding="utf-8")
    word_clusters.cache_clear()
