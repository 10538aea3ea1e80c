"""Attestation for the private tier: the transparency log of released node measurements.

``merkle`` holds the log's core: RFC 9162 Merkle tree hashing, inclusion and consistency
proofs and their verifiers, an in-memory append-only ``MerkleLog``, Ed25519-signed tree
heads and a ``Monitor`` that detects forks and rollbacks between the tree heads it has seen.
"""
