"""The transparency log's core: RFC 9162 (Certificate Transparency v2) §2.1 Merkle trees.

Hashing, with SHA-256 and ``D[a:b]`` the leaves ``a`` to ``b - 1``::

    MTH({})       = SHA-256()                                   the empty tree
    MTH({d})      = SHA-256(0x00 || d)                          a leaf
    MTH(D[0:n])   = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  k = largest power of 2 < n

The functions here take *leaf hashes* (``leaf_hash(data)``), so a log never has to keep the
leaves themselves. Proofs are lists of 32-byte hashes in the RFC's order: inclusion proofs
are §2.1.3.1 ``PATH``, consistency proofs §2.1.4.1 ``PROOF``, and the verifiers follow
§2.1.3.2 and §2.1.4.2 step by step. Verifiers return False on any malformed input, never
raise. The RFC defines consistency proofs only for ``0 < old < new``; here the two edge cases
are defined too, each with an empty proof: ``old == new`` (the roots must be equal) and
``old == 0`` (the old root must be the empty tree's).

A tree head is ``(size, root, timestamp_ms)``; ``TreeHead.encode()`` is the exact byte
string its Ed25519 signature covers (see there). ``Monitor`` keeps the last tree head it
verified and refuses a new one with a reason: a bad signature, a fork, or a rollback.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

HASH_SIZE = 32
SIGNATURE_SIZE = 64
EMPTY_ROOT = hashlib.sha256(b"").digest()

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
_MAX_SIZE = 2**64 - 1


def leaf_hash(leaf: bytes) -> bytes:
    """``SHA-256(0x00 || leaf)``: the hash of one log entry."""
    return hashlib.sha256(_LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: the hash of an interior node."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The RFC's ``k``: the largest power of two strictly less than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


class _Subtrees:
    """Leaf hashes plus the hash of every complete, aligned power-of-two subtree.

    ``levels[h][i]`` is the hash of leaves ``i * 2**h`` to ``(i + 1) * 2**h - 1``. Appending
    costs O(1) hashes amortised; any range the RFC recursion visits is then either one cached
    subtree or splits into one cached left half and a smaller right part, so a root costs
    O(log n) hashes and a proof O(log² n).
    """

    def __init__(self) -> None:
        self.levels: list[list[bytes]] = [[]]

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, hashed: bytes) -> None:
        if len(hashed) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, got {len(hashed)}")
        self.levels[0].append(hashed)
        height = 0
        while len(self.levels[height]) % 2 == 0:
            row = self.levels[height]
            if height + 1 == len(self.levels):
                self.levels.append([])
            self.levels[height + 1].append(node_hash(row[-2], row[-1]))
            height += 1

    def hash(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for ``0 <= lo <= hi <= size``."""
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and lo % n == 0:
            return self.levels[n.bit_length() - 1][lo // n]
        k = _split(n)
        return node_hash(self.hash(lo, lo + k), self.hash(lo + k, hi))

    def path(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 §2.1.3.1 ``PATH(index, D[0:size])``, leaf's sibling first."""
        siblings: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                siblings.append(self.hash(lo + k, hi))
                hi = lo + k
            else:
                siblings.append(self.hash(lo, lo + k))
                lo += k
        siblings.reverse()
        return siblings

    def proof(self, old: int, new: int) -> list[bytes]:
        """RFC 9162 §2.1.4.1 ``PROOF(old, D[0:new])``; empty when ``old`` is 0 or ``new``."""
        if old in (0, new):
            return []
        nodes: list[bytes] = []
        lo, hi, whole_old_tree = 0, new, True
        while old != hi:
            k = _split(hi - lo)
            if old - lo <= k:
                nodes.append(self.hash(lo + k, hi))
                hi = lo + k
            else:
                nodes.append(self.hash(lo, lo + k))
                lo += k
                whole_old_tree = False
        if not whole_old_tree:
            nodes.append(self.hash(lo, hi))
        nodes.reverse()
        return nodes


def _subtrees(leaf_hashes: Iterable[bytes]) -> _Subtrees:
    tree = _Subtrees()
    for hashed in leaf_hashes:
        tree.append(hashed)
    return tree


def tree_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over ``leaf_hashes``; ``EMPTY_ROOT`` for none."""
    return _subtrees(leaf_hashes).hash(0, len(leaf_hashes))


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """The proof that leaf ``index`` is in the tree of all ``leaf_hashes``."""
    if not 0 <= index < len(leaf_hashes):
        raise ValueError(f"leaf {index} is not in a tree of {len(leaf_hashes)} leaves")
    return _subtrees(leaf_hashes).path(index, len(leaf_hashes))


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """The proof that the tree of the first ``old_size`` leaves is a prefix of this one."""
    if not 0 <= old_size <= len(leaf_hashes):
        raise ValueError(f"no tree of {old_size} leaves inside one of {len(leaf_hashes)}")
    return _subtrees(leaf_hashes).proof(old_size, len(leaf_hashes))


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_SIZE


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_hash_list(proof: object) -> bool:
    return isinstance(proof, list | tuple) and all(_is_hash(node) for node in proof)


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` put ``leaf_hash`` at ``index`` under ``root``?"""
    if not (_is_hash(leaf_hash) and _is_hash(root) and _is_hash_list(proof)):
        return False
    if not (_is_size(index) and _is_size(tree_size) and index < tree_size):
        return False
    fn, sn = index, tree_size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: is the tree ``(old_size, old_root)`` a prefix of the new one?"""
    if not (_is_hash(old_root) and _is_hash(new_root) and _is_hash_list(proof)):
        return False
    if not (_is_size(old_size) and _is_size(new_size) and old_size <= new_size):
        return False
    if old_size == new_size:
        return len(proof) == 0 and old_root == new_root
    if old_size == 0:
        return len(proof) == 0 and old_root == EMPTY_ROOT
    if len(proof) == 0:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class MerkleLog:
    """An append-only log of leaf hashes, in memory, that answers for any past size.

    Not thread-safe: one writer at a time. Give ``leaf_hashes`` to restore a saved log.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._tree = _subtrees(leaf_hashes)

    @property
    def size(self) -> int:
        return self._tree.size

    def append(self, leaf: bytes) -> int:
        """Add one entry (hashed here with ``leaf_hash``) and return its index."""
        return self.append_hash(leaf_hash(leaf))

    def append_hash(self, hashed: bytes) -> int:
        """Add one entry by its leaf hash and return its index."""
        self._tree.append(hashed)
        return self._tree.size - 1

    def leaf_hash(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} is not in a log of {self.size}")
        return self._tree.levels[0][index]

    def root(self) -> bytes:
        return self._tree.hash(0, self.size)

    def root_at(self, size: int) -> bytes:
        """The root the log had when it held ``size`` entries."""
        self._check_size(size)
        return self._tree.hash(0, size)

    def inclusion(self, index: int, size: int | None = None) -> list[bytes]:
        """The proof that leaf ``index`` is in the tree of ``size`` (default: now)."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of {size}")
        return self._tree.path(index, size)

    def consistency(self, old: int, new: int | None = None) -> list[bytes]:
        """The proof that the tree of ``old`` is a prefix of the tree of ``new``."""
        new = self.size if new is None else new
        self._check_size(new)
        if not 0 <= old <= new:
            raise ValueError(f"no tree of {old} inside one of {new}")
        return self._tree.proof(old, new)

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"the log has never had {size} entries (it has {self.size})")


_HEAD_CONTEXT = b"veil/tree-head/v1\x00"
_HEAD_FORMAT = ">QQ"
TREE_HEAD_SIZE = len(_HEAD_CONTEXT) + 8 + 8 + HASH_SIZE


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A log's state: ``size`` entries with Merkle root ``root``, as of ``timestamp_ms``
    (milliseconds since the Unix epoch)."""

    size: int
    root: bytes
    timestamp_ms: int

    def __post_init__(self) -> None:
        if not _is_size(self.size):
            raise ValueError(f"tree size must be in 0..2**64-1, got {self.size!r}")
        if not _is_hash(self.root):
            raise ValueError(f"tree root must be {HASH_SIZE} bytes")
        if not _is_size(self.timestamp_ms):
            raise ValueError(f"timestamp must be in 0..2**64-1 ms, got {self.timestamp_ms!r}")

    def encode(self) -> bytes:
        """The canonical bytes a signature covers, 66 of them::

        b"veil/tree-head/v1\\x00"   18 bytes, binds the signature to this use and version
        size                        8 bytes, unsigned big-endian
        timestamp_ms                8 bytes, unsigned big-endian
        root                        32 bytes
        """
        return _HEAD_CONTEXT + struct.pack(_HEAD_FORMAT, self.size, self.timestamp_ms) + self.root

    @classmethod
    def decode(cls, data: bytes) -> TreeHead:
        if len(data) != TREE_HEAD_SIZE or not data.startswith(_HEAD_CONTEXT):
            raise ValueError("not an encoded Veil tree head")
        size, timestamp_ms = struct.unpack_from(_HEAD_FORMAT, data, len(_HEAD_CONTEXT))
        return cls(size, data[-HASH_SIZE:], timestamp_ms)


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    head: TreeHead
    signature: bytes


def sign_tree_head(head: TreeHead, key: Ed25519PrivateKey) -> SignedTreeHead:
    return SignedTreeHead(head, key.sign(head.encode()))


def verify_tree_head(signed: SignedTreeHead, key: Ed25519PublicKey) -> bool:
    """Whether ``key`` signed exactly this tree head. False, never raises, on a bad one."""
    if not isinstance(signed.signature, bytes) or len(signed.signature) != SIGNATURE_SIZE:
        return False
    try:
        key.verify(signed.signature, signed.head.encode())
    except InvalidSignature:
        return False
    return True


class Refusal(StrEnum):
    BAD_SIGNATURE = "bad_signature"
    FORK = "fork"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``Monitor.observe`` made of a tree head: accepted, or refused with a reason."""

    refusal: Refusal | None
    detail: str

    @property
    def accepted(self) -> bool:
        return self.refusal is None


class Monitor:
    """Watches one log (known by its public key) and remembers the last tree head verified.

    A new tree head is accepted only if the log signed it and it extends what was seen:
    the same size with the same root, or a bigger size with a consistency proof from the
    last one. The first tree head is trusted on its signature alone unless ``trusted``
    is given.
    """

    def __init__(self, key: Ed25519PublicKey, trusted: SignedTreeHead | None = None) -> None:
        if trusted is not None and not verify_tree_head(trusted, key):
            raise ValueError("the trusted tree head's signature does not verify")
        self._key = key
        self._latest = trusted

    @property
    def latest(self) -> SignedTreeHead | None:
        return self._latest

    def observe(self, signed: SignedTreeHead, proof: Sequence[bytes] = ()) -> Verdict:
        """Check ``signed`` against the last tree head; ``proof`` is the consistency proof
        from that one's size to this one's. The tree head is remembered only if accepted."""
        if not verify_tree_head(signed, self._key):
            return Verdict(Refusal.BAD_SIGNATURE, "the tree head is not signed by this log")
        new, last = signed.head, self._latest
        if last is not None:
            old = last.head
            if new.size < old.size:
                return Verdict(
                    Refusal.ROLLBACK, f"size {new.size} is smaller than {old.size} seen before"
                )
            if new.size == old.size and new.root != old.root:
                return Verdict(Refusal.FORK, f"two different roots for size {new.size}")
            if new.size > old.size and not verify_consistency(
                old.size, new.size, old.root, new.root, list(proof)
            ):
                return Verdict(
                    Refusal.FORK,
                    f"size {new.size} is not proven to extend size {old.size} seen before",
                )
        self._latest = signed
        return Verdict(None, f"size {new.size} accepted")
