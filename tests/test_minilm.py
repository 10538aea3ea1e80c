"""The numpy MiniLM encoder (``veil.embeddings.minilm``) on the shipped weights, and the word
clusters built from it (``veil.safety.clusters``)."""

from __future__ import annotations

import numpy as np
import pytest

from veil.embeddings import minilm
from veil.embeddings.minilm import DIM, MAX_TOKENS, ModelMissing, basic_tokens, default_encoder
from veil.safety import clusters
from veil.safety.classifier import features


def _ids(text: str) -> list[str]:
    encoder = default_encoder()
    names = {i: t for t, i in encoder.tokenizer.vocab.items()}
    return [names[i] for i in encoder.tokenizer.encode(text)]


def test_the_tokenizer_is_berts_uncased_wordpiece() -> None:
    assert _ids("Hello, World!") == ["[CLS]", "hello", ",", "world", "!", "[SEP]"]
    # Accents stripped, words split into pieces, punctuation on its own.
    assert _ids("Café résumé") == ["[CLS]", "cafe", "resume", "[SEP]"]
    assert _ids("unaffable") == ["[CLS]", "una", "##ffa", "##ble", "[SEP]"]
    assert _ids("don't") == ["[CLS]", "don", "'", "t", "[SEP]"]
    # Each CJK character is a word; a word with no split is one [UNK]; controls vanish.
    # (Expected tokens as Hugging Face's tokenizers library gives them for this vocabulary.)
    assert _ids("东京") == ["[CLS]", "[UNK]", "京", "[SEP]"]
    assert basic_tokens("東京\x00x\u200b") == ["東", "京", "x"]
    assert _ids("x" * 101) == ["[CLS]", "[UNK]", "[SEP]"]
    assert len(default_encoder().tokenizer.encode("word " * 1000)) == MAX_TOKENS


def test_embeddings_are_unit_vectors_that_put_paraphrases_together() -> None:
    encoder = default_encoder()
    texts = [
        "How do I reset my password?",
        "I forgot my password and need to change it.",
        "The recipe needs two cups of flour.",
    ]
    vectors = encoder.embed(texts)
    assert vectors.shape == (3, DIM)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > 0.5
    assert unrelated < 0.2
    # Batched with padding is the same as one at a time.
    alone = np.stack([encoder.embed([t])[0] for t in texts])
    assert np.abs(alone - vectors).max() < 1e-5


def test_word_vectors_know_synonyms() -> None:
    words = ["kill", "murder", "weather", "poison", "toxin", "spreadsheet"]
    v = default_encoder().word_vectors(words)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert v[0] @ v[1] > v[0] @ v[2]
    assert v[3] @ v[4] > v[3] @ v[5]


def test_a_missing_weights_package_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(minilm, "PACKAGE", "veil_no_such_package")
    with pytest.raises(ModelMissing, match=r"requirements/minilm\.txt"):
        minilm.model_dir()


def test_the_shipped_clusters_cover_the_models_words_and_group_synonyms() -> None:
    table = clusters.word_clusters()
    words = clusters.vocabulary_words(default_encoder().tokenizer.vocab)
    assert set(table) == set(words)
    assert all(0 <= f < clusters.FINE and 0 <= c < clusters.COARSE for f, c in table.values())
    assert len({f for f, _ in table.values()}) > clusters.FINE * 0.9
    assert table["kill"][1] == table["murder"][1]
    assert table["bomb"][1] == table["explosion"][1]
    assert table["steal"][1] == table["theft"][1]
    assert table["kill"][1] != table["weather"][1]


def test_spherical_kmeans_finds_separate_groups() -> None:
    rng = np.random.default_rng(1)
    centres = np.eye(4, 16)
    points = np.repeat(centres, 50, axis=0) + rng.normal(0, 0.05, (200, 16))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    found = clusters.spherical_kmeans(points, 4, seed=3)
    for group in range(4):
        assert len(set(found[group * 50 : (group + 1) * 50])) == 1
    assert len(set(found)) == 4


def test_an_unseen_word_reads_as_its_cluster() -> None:
    table = clusters.word_clusters()
    # "murder" and "kill" share a cluster: a window with one shares features with the other.
    a, b = features(["how", "to", "murder"]), features(["how", "to", "kill"])
    assert table["murder"][1] == table["kill"][1]
    assert "w:murder" not in b
    shared = {k for k in a if k.startswith(("S:", "p:"))} & set(b)
    assert f"S:{table['murder'][1]}" in shared
    assert any(k.startswith("p:") for k in shared)
    # A word the model does not know has no cluster; the rest of the window still does.
    unknown = features(["zzqx", "murder"])
    assert f"S:{table['murder'][1]}" in unknown
    assert not any(k.startswith("p:") for k in unknown)
