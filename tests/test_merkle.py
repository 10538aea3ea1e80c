"""The transparency log's core: RFC 9162 Merkle hashing, inclusion and consistency proofs and
their verifiers, the in-memory log, signed tree heads, and the monitor's refusals."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from veil.attestation.merkle import (
    EMPTY_ROOT,
    TREE_HEAD_SIZE,
    MerkleLog,
    Monitor,
    Refusal,
    SignedTreeHead,
    TreeHead,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    sign_tree_head,
    tree_root,
    verify_consistency,
    verify_inclusion,
    verify_tree_head,
)

# --- A reference straight from RFC 9162 §2.1, written for these tests only ---------------


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return _sha(b"")
    if n == 1:
        return _sha(b"\x00" + leaves[0])
    k = _k(n)
    return _sha(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:]))


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [ref_mth(leaves)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, leaves[:k], b), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def entries(n: int, salt: bytes = b"") -> list[bytes]:
    return [salt + i.to_bytes(4, "big") for i in range(n)]


def log_of(leaves: list[bytes]) -> MerkleLog:
    log = MerkleLog()
    for leaf in leaves:
        log.append(leaf)
    return log


# --- Known answers ---------------------------------------------------------------------


def test_the_empty_tree_hashes_to_sha256_of_nothing() -> None:
    expected = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert expected == EMPTY_ROOT
    assert tree_root([]) == expected
    assert MerkleLog().root() == expected
    assert MerkleLog().root_at(0) == expected


# The eight-leaf test vector that Certificate Transparency implementations share.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
]  # fmt: skip
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_the_certificate_transparency_vectors(size: int) -> None:
    hashes = [leaf_hash(leaf) for leaf in CT_LEAVES[:size]]
    assert tree_root(hashes).hex() == CT_ROOTS[size - 1]
    assert ref_mth(CT_LEAVES[:size]).hex() == CT_ROOTS[size - 1]


def test_roots_follow_the_rfc_split_not_a_balanced_tree() -> None:
    # Five leaves split 4 + 1 (k = largest power of two < n), not 3 + 2.
    h = [leaf_hash(leaf) for leaf in entries(5)]
    n = lambda a, b: _sha(b"\x01" + a + b)  # noqa: E731
    assert tree_root(h) == n(n(n(h[0], h[1]), n(h[2], h[3])), h[4])


@pytest.mark.parametrize("size", range(1, 65))
def test_roots_proofs_match_the_reference_recursion(size: int) -> None:
    leaves = entries(size)
    hashes = [leaf_hash(leaf) for leaf in leaves]
    log = log_of(leaves)
    assert tree_root(hashes) == ref_mth(leaves)
    assert log.root() == ref_mth(leaves)
    for m in range(size):
        assert inclusion_proof(hashes, m) == ref_path(m, leaves)
        assert log.inclusion(m, size) == ref_path(m, leaves)
    for m in range(1, size):
        assert consistency_proof(hashes, m) == ref_subproof(m, leaves, True)
        assert log.consistency(m, size) == ref_subproof(m, leaves, True)


def test_an_incremental_log_answers_for_every_past_size() -> None:
    leaves = entries(64, b"past")
    log = log_of(leaves)
    for size in range(65):
        assert log.root_at(size) == ref_mth(leaves[:size])


# --- Every honest proof verifies -------------------------------------------------------


def test_every_consistency_proof_up_to_64_leaves_verifies() -> None:
    log = log_of(entries(64))
    roots = [log.root_at(size) for size in range(65)]
    for new in range(65):
        for old in range(new + 1):
            proof = log.consistency(old, new)
            assert verify_consistency(old, new, roots[old], roots[new], proof), (old, new)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 200), salt=st.binary(max_size=8), data=st.data())
def test_random_trees_every_proof_verifies(size: int, salt: bytes, data: st.DataObject) -> None:
    log = log_of(entries(size, salt))
    root = log.root()
    for index in range(size):
        proof = log.inclusion(index, size)
        assert verify_inclusion(log.leaf_hash(index), index, size, proof, root)
    for old in range(size + 1):
        assert verify_consistency(old, size, log.root_at(old), root, log.consistency(old, size))
    # And between two past sizes of the same log.
    new = data.draw(st.integers(0, size), label="new")
    old = data.draw(st.integers(0, new), label="old")
    proof = log.consistency(old, new)
    assert verify_consistency(old, new, log.root_at(old), log.root_at(new), proof)


# --- Anything altered fails ------------------------------------------------------------


def flip(value: bytes, position: int) -> bytes:
    position %= len(value)
    return value[:position] + bytes([value[position] ^ 0x01]) + value[position + 1 :]


tree_and_leaf = st.integers(1, 200).flatmap(
    lambda size: st.tuples(st.just(size), st.integers(0, size - 1))
)


@settings(max_examples=200, deadline=None)
@given(
    tree=tree_and_leaf, position=st.integers(0, 10_000), extra=st.binary(min_size=32, max_size=32)
)
def test_an_altered_inclusion_proof_fails(
    tree: tuple[int, int], position: int, extra: bytes
) -> None:
    size, index = tree
    log = log_of(entries(size))
    leaf, root, proof = log.leaf_hash(index), log.root(), log.inclusion(index, size)
    assert verify_inclusion(leaf, index, size, proof, root)

    assert not verify_inclusion(flip(leaf, position), index, size, proof, root)
    assert not verify_inclusion(leaf, index, size, proof, flip(root, position))
    if proof:
        at = position % len(proof)
        altered = [*proof[:at], flip(proof[at], position // len(proof)), *proof[at + 1 :]]
        assert not verify_inclusion(leaf, index, size, altered, root)
        assert not verify_inclusion(leaf, index, size, proof[:-1], root)
        assert not verify_inclusion(leaf, index, size, proof[1:], root)
    assert not verify_inclusion(leaf, index, size, [*proof, extra], root)
    assert not verify_inclusion(leaf, index, size, [extra, *proof], root)


@settings(max_examples=200, deadline=None)
@given(tree=tree_and_leaf, other=tree_and_leaf)
def test_an_inclusion_proof_holds_only_for_its_own_index_and_size(
    tree: tuple[int, int], other: tuple[int, int]
) -> None:
    # With the true root of the claimed size, a proof verifies only where it *is* the proof.
    # (A proof alone does not pin the size: the signed tree head binds size to root.)
    size, index = tree
    other_size, other_index = other
    log = log_of(entries(max(size, other_size)))
    leaf, proof = log.leaf_hash(index), log.inclusion(index, size)
    claimed_root = log.root_at(other_size)
    expected = other_index == index and log.inclusion(index, other_size) == proof
    assert verify_inclusion(leaf, other_index, other_size, proof, claimed_root) == expected
    assert verify_inclusion(leaf, other_index, size, proof, log.root_at(size)) == (
        other_index == index
    )


tree_and_prefix = st.integers(2, 200).flatmap(
    lambda size: st.tuples(st.just(size), st.integers(1, size - 1))
)


@settings(max_examples=200, deadline=None)
@given(
    tree=tree_and_prefix, position=st.integers(0, 10_000), extra=st.binary(min_size=32, max_size=32)
)
def test_an_altered_consistency_proof_fails(
    tree: tuple[int, int], position: int, extra: bytes
) -> None:
    new, old = tree
    log = log_of(entries(new))
    old_root, new_root, proof = log.root_at(old), log.root(), log.consistency(old, new)
    assert verify_consistency(old, new, old_root, new_root, proof)

    assert not verify_consistency(old, new, flip(old_root, position), new_root, proof)
    assert not verify_consistency(old, new, old_root, flip(new_root, position), proof)
    at = position % len(proof)
    altered = [*proof[:at], flip(proof[at], position // len(proof)), *proof[at + 1 :]]
    assert not verify_consistency(old, new, old_root, new_root, altered)
    assert not verify_consistency(old, new, old_root, new_root, proof[:-1])
    assert not verify_consistency(old, new, old_root, new_root, proof[1:])
    assert not verify_consistency(old, new, old_root, new_root, [*proof, extra])
    assert not verify_consistency(old, new, old_root, new_root, [extra, *proof])
    # A log that rewrote history: same sizes, one old entry changed.
    forged = entries(new)
    forged[position % old] += b"!"
    assert not verify_consistency(old, new, old_root, log_of(forged).root(), proof)
    assert not verify_consistency(
        old, new, old_root, log_of(forged).root(), log_of(forged).consistency(old, new)
    )


@settings(max_examples=200, deadline=None)
@given(tree=tree_and_prefix, other=tree_and_prefix)
def test_a_consistency_proof_holds_only_for_its_own_sizes(
    tree: tuple[int, int], other: tuple[int, int]
) -> None:
    new, old = tree
    other_new, other_old = other
    log = log_of(entries(max(new, other_new)))
    proof = log.consistency(old, new)
    expected = log.consistency(other_old, other_new) == proof
    assert (
        verify_consistency(
            other_old, other_new, log.root_at(other_old), log.root_at(other_new), proof
        )
        == expected
    )


def ref_ranges(m: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """The subtrees holding leaf ``m`` from the whole tree down to the leaf, per the RFC."""
    ranges = [(lo, hi)]
    while hi - lo > 1:
        k = _k(hi - lo)
        lo, hi = (lo, lo + k) if m < lo + k else (lo + k, hi)
        ranges.append((lo, hi))
    return ranges


@settings(max_examples=100, deadline=None)
@given(tree=tree_and_leaf)
def test_a_subtree_root_does_not_pass_for_the_whole_tree(tree: tuple[int, int]) -> None:
    # A truncated path does reach a real node: the root of a subtree holding the leaf. Claimed
    # as the root of the whole tree it must still fail.
    size, index = tree
    log = log_of(entries(size))
    hashes = [log.leaf_hash(i) for i in range(size)]
    proof = log.inclusion(index, size)
    ranges = ref_ranges(index, 0, size)
    for j in range(len(proof)):
        lo, hi = ranges[len(proof) - j]
        subtree_root = tree_root(hashes[lo:hi])
        assert verify_inclusion(hashes[index], index - lo, hi - lo, proof[:j], subtree_root)
        assert not verify_inclusion(hashes[index], index, size, proof[:j], subtree_root)


@settings(max_examples=100, deadline=None)
@given(tree=tree_and_prefix)
def test_a_left_subtree_root_does_not_pass_for_the_new_tree(tree: tuple[int, int]) -> None:
    # For old <= k (k the largest power of two < new) the proof is the one for (old, k) plus
    # the right subtree's hash; without that last hash it proves k's root, not new's.
    new, old = tree
    k = _k(new)
    assume(old < k)
    log = log_of(entries(new))
    proof = log.consistency(old, k)
    assert proof == log.consistency(old, new)[:-1]
    assert verify_consistency(old, k, log.root_at(old), log.root_at(k), proof)
    assert not verify_consistency(old, new, log.root_at(old), log.root_at(k), proof)


padded = st.integers(0, 6).flatmap(
    lambda j: st.tuples(st.just(2**j), st.integers(1, 2**j)).flatmap(
        lambda t: st.tuples(st.just(t[0]), st.integers(1, t[1]), st.just(t[1]))
    )
)


@settings(max_examples=100, deadline=None)
@given(shape=padded, data=st.data())
def test_a_padded_proof_does_not_pass_a_big_trees_root_for_small_sizes(
    shape: tuple[int, int, int], data: st.DataObject
) -> None:
    # In a tree of left + b leaves (left a power of two >= b) the last b leaves form the right
    # subtree, so a proof inside it, padded with the left subtree's hash, reaches the big
    # tree's root. It proves the big tree's sizes, never the small ones it was made for.
    left, a, b = shape
    log = log_of(entries(left + b))
    right = MerkleLog(log.leaf_hash(i) for i in range(left, left + b))
    pad = log.root_at(left)

    index = data.draw(st.integers(0, b - 1), label="index")
    proof = [*right.inclusion(index, b), pad]
    leaf, root = log.leaf_hash(left + index), log.root_at(left + b)
    assert verify_inclusion(leaf, left + index, left + b, proof, root)
    assert not verify_inclusion(leaf, index, b, proof, root)

    if a < b:
        proof = [*right.consistency(a, b), pad]
        old_root, new_root = log.root_at(left + a), log.root_at(left + b)
        # Inside the right subtree an old size that is a power of two is left implicit.
        full = [right.root_at(a), *proof] if a & (a - 1) == 0 else proof
        assert full == log.consistency(left + a, left + b)
        assert verify_consistency(left + a, left + b, old_root, new_root, full)
        assert not verify_consistency(a, b, old_root, new_root, proof)


# --- Malformed input: False, never an exception ----------------------------------------

H = leaf_hash(b"x")
LOG4 = log_of(entries(4))
P4 = LOG4.inclusion(1, 4)
R4 = LOG4.root()


@pytest.mark.parametrize(
    "args",
    [
        (LOG4.leaf_hash(1), 1, 4, P4, R4[:31]),
        (LOG4.leaf_hash(1)[:31], 1, 4, P4, R4),
        (LOG4.leaf_hash(1), 1, 4, [P4[0][:31], P4[1]], R4),
        (LOG4.leaf_hash(1), 1, 4, [P4[0], "x" * 32], R4),
        (LOG4.leaf_hash(1), 1, 4, b"".join(P4), R4),
        (LOG4.leaf_hash(1), 1, 4, None, R4),
        (LOG4.leaf_hash(1), -1, 4, P4, R4),
        (LOG4.leaf_hash(1), 4, 4, P4, R4),
        (LOG4.leaf_hash(1), 1, 0, P4, R4),
        (LOG4.leaf_hash(1), 1, -4, P4, R4),
        (LOG4.leaf_hash(1), 1, 2**64, P4, R4),
        (LOG4.leaf_hash(1), True, 4, P4, R4),
        (LOG4.leaf_hash(1), 1.0, 4, P4, R4),
        (LOG4.leaf_hash(1), "1", 4, P4, R4),
        (bytearray(LOG4.leaf_hash(1)), 1, 4, P4, R4),
        (EMPTY_ROOT, 0, 0, [], EMPTY_ROOT),
    ],
)
def test_malformed_inclusion_input_is_false(args: tuple[Any, ...]) -> None:
    assert verify_inclusion(*args) is False


P_2_4 = LOG4.consistency(2, 4)
R2 = LOG4.root_at(2)


@pytest.mark.parametrize(
    "args",
    [
        (2, 4, R2, R4, []),
        (3, 4, LOG4.root_at(3), R4, []),
        (4, 2, R4, R2, P_2_4),
        (-2, 4, R2, R4, P_2_4),
        (2, 2**64, R2, R4, P_2_4),
        (2, 4, R2[:31], R4, P_2_4),
        (2, 4, R2, R4 + b"\x00", P_2_4),
        (2, 4, R2, R4, [p[:31] for p in P_2_4]),
        (2, 4, R2, R4, b"".join(P_2_4)),
        (2, 4, R2, R4, None),
        (2.0, 4, R2, R4, P_2_4),
        (2, "4", R2, R4, P_2_4),
        (4, 4, R4, R4, [H]),
        (4, 4, R4, R2, []),
        (0, 4, EMPTY_ROOT, R4, [H]),
        (0, 4, R2, R4, []),
        (0, 0, EMPTY_ROOT, R4, []),
    ],
)
def test_malformed_consistency_input_is_false(args: tuple[Any, ...]) -> None:
    assert verify_consistency(*args) is False


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.lists(st.binary(min_size=31, max_size=33), max_size=12),
    st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=3)), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(args=st.tuples(junk, junk, junk, junk, junk))
def test_verifiers_never_raise_on_junk(args: tuple[Any, ...]) -> None:
    assert verify_inclusion(*args) in (True, False)
    assert verify_consistency(*args) in (True, False)


def test_proof_generators_refuse_sizes_the_log_never_had() -> None:
    hashes = [leaf_hash(leaf) for leaf in entries(4)]
    with pytest.raises(ValueError):
        inclusion_proof(hashes, 4)
    with pytest.raises(ValueError):
        consistency_proof(hashes, 5)
    with pytest.raises(ValueError):
        tree_root([b"short"])
    with pytest.raises(ValueError):
        LOG4.root_at(5)
    with pytest.raises(ValueError):
        LOG4.inclusion(2, 2)
    with pytest.raises(ValueError):
        LOG4.consistency(3, 2)
    with pytest.raises(IndexError):
        LOG4.leaf_hash(4)


def test_a_log_restored_from_its_leaf_hashes_is_the_same_log() -> None:
    log = log_of(entries(37))
    restored = MerkleLog(log.leaf_hash(i) for i in range(log.size))
    assert restored.size == 37
    assert restored.root() == log.root()
    assert restored.append(b"next") == 37 == log.append(b"next")
    assert restored.root() == log.root()


# --- Signed tree heads -----------------------------------------------------------------


def test_a_tree_head_has_one_canonical_encoding() -> None:
    head = TreeHead(size=7, root=R4, timestamp_ms=1_700_000_000_123)
    encoded = head.encode()
    assert len(encoded) == TREE_HEAD_SIZE == 66
    assert encoded == (
        b"veil/tree-head/v1\x00"
        + (7).to_bytes(8, "big")
        + (1_700_000_000_123).to_bytes(8, "big")
        + R4
    )
    assert TreeHead.decode(encoded) == head
    with pytest.raises(ValueError):
        TreeHead.decode(encoded[:-1])
    with pytest.raises(ValueError):
        TreeHead.decode(b"X" + encoded[1:])


@pytest.mark.parametrize(
    "fields",
    [
        {"size": -1, "root": R4, "timestamp_ms": 0},
        {"size": 2**64, "root": R4, "timestamp_ms": 0},
        {"size": 1, "root": R4[:31], "timestamp_ms": 0},
        {"size": 1, "root": R4, "timestamp_ms": -5},
    ],
)
def test_an_impossible_tree_head_cannot_be_made(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TreeHead(**fields)


def test_a_signature_covers_every_field_of_the_head() -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign_tree_head(TreeHead(4, R4, 1000), key)
    assert verify_tree_head(signed, key.public_key())
    assert not verify_tree_head(signed, Ed25519PrivateKey.generate().public_key())
    for changed in (
        dataclasses.replace(signed.head, size=5),
        dataclasses.replace(signed.head, root=R2),
        dataclasses.replace(signed.head, timestamp_ms=1001),
    ):
        assert not verify_tree_head(SignedTreeHead(changed, signed.signature), key.public_key())
    assert not verify_tree_head(
        SignedTreeHead(signed.head, flip(signed.signature, 3)), key.public_key()
    )
    for signature in (signed.signature[:63], signed.signature + b"\x00", None, "s" * 64):
        bad = SignedTreeHead(signed.head, signature)  # type: ignore[arg-type]
        assert not verify_tree_head(bad, key.public_key())


# --- The monitor -----------------------------------------------------------------------


class Log:
    """A log with its signing key, as a monitor sees it."""

    def __init__(self, key: Ed25519PrivateKey, leaves: list[bytes]) -> None:
        self.key = key
        self.merkle = log_of(leaves)

    def head(self, size: int | None = None) -> SignedTreeHead:
        size = self.merkle.size if size is None else size
        return sign_tree_head(TreeHead(size, self.merkle.root_at(size), 1000 + size), self.key)


def test_the_monitor_follows_a_growing_log() -> None:
    log = Log(Ed25519PrivateKey.generate(), [])
    monitor = Monitor(log.key.public_key())
    assert monitor.observe(log.head()).accepted
    seen = 0
    for step in (1, 1, 2, 5, 8, 13, 1, 40):
        for _ in range(step):
            log.merkle.append(f"measurement {log.merkle.size}".encode())
        verdict = monitor.observe(log.head(), log.merkle.consistency(seen))
        assert verdict.accepted, verdict.detail
        assert verdict.refusal is None
        seen = log.merkle.size
        # The same head again, or the same size re-signed later, is fine too.
        assert monitor.observe(log.head()).accepted
    assert monitor.latest == log.head()


def test_the_monitor_detects_a_fork() -> None:
    key = Ed25519PrivateKey.generate()
    shared = entries(5, b"shared")
    honest = Log(key, [*shared, *entries(5, b"honest")])
    forked = Log(key, [*shared, *entries(5, b"forked")])

    monitor = Monitor(key.public_key())
    assert monitor.observe(honest.head(5)).accepted
    # The shared prefix is consistent with both, so either may extend it...
    assert monitor.observe(honest.head(8), honest.merkle.consistency(5, 8)).accepted
    # ...but once the honest size 8 is seen, the forked one is refused.
    verdict = monitor.observe(forked.head(8))
    assert (verdict.refusal, verdict.accepted) == (Refusal.FORK, False)
    verdict = monitor.observe(forked.head(10), forked.merkle.consistency(8, 10))
    assert verdict.refusal is Refusal.FORK
    assert verdict.refusal == "fork"
    # A proof from the honest log does not rescue the forked head either.
    assert monitor.observe(forked.head(10), honest.merkle.consistency(8, 10)).refusal == "fork"
    assert monitor.observe(forked.head(10)).refusal == "fork"
    assert monitor.latest == honest.head(8)
    assert monitor.observe(honest.head(10), honest.merkle.consistency(8, 10)).accepted


def test_the_monitor_detects_a_rollback() -> None:
    log = Log(Ed25519PrivateKey.generate(), entries(9))
    monitor = Monitor(log.key.public_key(), trusted=log.head(9))
    for size in (8, 1, 0):
        verdict = monitor.observe(log.head(size))
        assert verdict.refusal is Refusal.ROLLBACK
        assert verdict.refusal == "rollback"
    assert monitor.latest == log.head(9)


def test_the_monitor_refuses_a_head_the_log_did_not_sign() -> None:
    log = Log(Ed25519PrivateKey.generate(), entries(9))
    impostor = Log(Ed25519PrivateKey.generate(), entries(9))
    monitor = Monitor(log.key.public_key(), trusted=log.head(4))
    assert monitor.observe(impostor.head(9), log.merkle.consistency(4, 9)).refusal == (
        "bad_signature"
    )
    tampered = SignedTreeHead(
        dataclasses.replace(log.head(9).head, timestamp_ms=1), log.head(9).signature
    )
    assert monitor.observe(tampered, log.merkle.consistency(4, 9)).refusal is Refusal.BAD_SIGNATURE
    assert monitor.latest == log.head(4)
    with pytest.raises(ValueError):
        Monitor(log.key.public_key(), trusted=impostor.head(4))


# --- Scale -----------------------------------------------------------------------------


def test_a_hundred_thousand_entries_append_and_prove_quickly() -> None:
    log = MerkleLog()
    for i in range(100_000):
        assert log.append(i.to_bytes(4, "big")) == i
    root = log.root()
    roots = [log.root_at(size) for size in range(99_000, 100_001)]
    assert roots[-1] == root
    for index in (0, 1, 65_535, 65_536, 99_999):
        proof = log.inclusion(index, log.size)
        assert verify_inclusion(log.leaf_hash(index), index, log.size, proof, root)
    for old in (1, 4096, 65_536, 99_999):
        proof = log.consistency(old, log.size)
        assert verify_consistency(old, log.size, log.root_at(old), root, proof)
