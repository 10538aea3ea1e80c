"""Attestation documents: what a private node says about itself, signed, and how to check it.

Each boot a node makes fresh HPKE key pairs and signs a document with its long-lived
Ed25519 *identity key*::

    {"v": 1, "node": "veil-node", "model": "…", "measurement": "<64 hex>",
     "keys": {"mlkem768-x25519": "<b64>", "x25519": "<b64>"},
     "boot_ms": …, "issued_ms": …, "expires_ms": …, "identity": "<64 hex>"}

as canonical JSON (sorted keys, no spaces). The signature covers
``b"veil/attestation/v1\\x00" + document``.

Who vouches for the document is the *verifier*'s business (``AttestationVerifier``). The
one verifier here, ``SignedDocumentVerifier``, trusts the identity keys the operator
enrolled in the gateway's config: software attestation, with the transparency log as the
check on *what* runs. A hardware quote verifier (TPM, AMD SEV-SNP, Intel TDX) would check
instead that the measurement was taken by the platform, and plugs in behind the same
interface. What it cannot do here, without such hardware, is stop an operator with root
on a node from signing a document that lies about the code it runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veil.attestation.log import b64, unb64

DOCUMENT_CONTEXT = b"veil/attestation/v1\x00"
MAX_DOCUMENT_SIZE = 16 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_X25519_SIZE = 32
_MLKEM768_PUBLIC_SIZE = 1184

#: The HPKE KEMs a node offers, by the name used on the wire and in config.
KEMS: dict[str, hpke.KEM] = {
    "mlkem768-x25519": hpke.KEM.MLKEM768_X25519,
    "x25519": hpke.KEM.X25519,
}
#: KDF and AEAD are fixed: one suite per KEM, nothing to negotiate down.
KDF = hpke.KDF.HKDF_SHA256
AEAD = hpke.AEAD.AES_256_GCM

HpkePrivateKey = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
HpkePublicKey = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey


class Reason(StrEnum):
    """Why a node was refused. Each is named in logs, metrics and ``/admin/nodes``."""

    MALFORMED = "malformed"  # not a document this gateway can read
    WRONG_KEY = "wrong_key"  # signed by an identity key that is not enrolled
    BAD_SIGNATURE = "bad_signature"  # the document was changed after it was signed
    EXPIRED = "expired"  # past its expiry (or issued in the future)
    NOT_IN_LOG = "not_in_log"  # its measurement is not a released one in the log
    FORK = "fork"  # the log showed two different histories
    ROLLBACK = "rollback"  # the log went back to an older, smaller tree
    LOG_BAD_SIGNATURE = "log_bad_signature"  # a tree head not signed by the log's key
    LOG_UNREACHABLE = "log_unreachable"  # the log could not be read: nothing is trusted
    UNREACHABLE = "unreachable"  # the node did not answer its attestation
    KEY_REJECTED = "key_rejected"  # the node could not open what was sealed to its key
    ATTESTATION_CHANGED = "attestation_changed"  # the node no longer holds that document
    CLOCK_SKEW = "clock_skew"  # the node found the request's time outside its window
    REPLAYED = "replayed"  # the node saw this ciphertext before
    BAD_RESPONSE = "bad_response"  # a reply that does not open under the request's key


class Refused(Exception):
    """A node may not be sent anything: ``reason`` says why, ``detail`` in words."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Attestation:
    """A document's content, once its signature has been checked."""

    node: str
    model: str
    measurement: str
    keys: dict[str, bytes]
    boot_ms: int
    issued_ms: int
    expires_ms: int
    identity: str

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "node": self.node,
            "model": self.model,
            "measurement": self.measurement,
            "keys": {name: b64(key) for name, key in sorted(self.keys.items())},
            "boot_ms": self.boot_ms,
            "issued_ms": self.issued_ms,
            "expires_ms": self.expires_ms,
            "identity": self.identity,
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    def public_key(self, kem: str) -> HpkePublicKey:
        """The HPKE public key for ``kem``; ``Refused(MALFORMED)`` if the node offers none."""
        raw = self.keys.get(kem)
        if raw is None:
            raise Refused(Reason.MALFORMED, f"the node offers no {kem} key")
        try:
            if kem == "x25519":
                return x25519.X25519PublicKey.from_public_bytes(raw)
            return hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC_SIZE]),
                x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUBLIC_SIZE:]),
            )
        except ValueError:
            raise Refused(Reason.MALFORMED, f"the node's {kem} key is not valid") from None


@dataclass(frozen=True, slots=True)
class SignedAttestation:
    """A document exactly as signed, and its signature: what a node serves."""

    document: bytes
    signature: bytes

    def to_json(self) -> dict[str, str]:
        return {"document": b64(self.document), "signature": b64(self.signature)}

    @classmethod
    def from_json(cls, data: object) -> SignedAttestation:
        if not isinstance(data, dict):
            raise Refused(Reason.MALFORMED, "an attestation is a JSON object")
        try:
            return cls(unb64(data.get("document")), unb64(data.get("signature")))
        except ValueError as e:
            raise Refused(Reason.MALFORMED, f"attestation: {e}") from None


class BootKeys:
    """The HPKE key pairs a node makes at boot. They live in memory only, for one boot."""

    def __init__(self) -> None:
        self._x25519 = x25519.X25519PrivateKey.generate()
        pq, classic = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
        self._hybrid = hpke.MLKEM768X25519PrivateKey(pq, classic)
        # The hybrid public key on the wire: ML-KEM-768's (1184 bytes), then X25519's (32).
        self._hybrid_public = (
            pq.public_key().public_bytes_raw() + classic.public_key().public_bytes_raw()
        )

    def private(self, kem: str) -> HpkePrivateKey:
        return self._x25519 if kem == "x25519" else self._hybrid

    def public(self) -> dict[str, bytes]:
        return {
            "x25519": self._x25519.public_key().public_bytes_raw(),
            "mlkem768-x25519": self._hybrid_public,
        }


def sign(attestation: Attestation, key: Ed25519PrivateKey) -> SignedAttestation:
    document = attestation.encode()
    return SignedAttestation(document, key.sign(DOCUMENT_CONTEXT + document))


def identity_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes_raw().hex()


def parse(document: bytes) -> Attestation:
    """The document's content; ``Refused(MALFORMED)`` unless it is a well-formed v1 one."""
    if len(document) > MAX_DOCUMENT_SIZE:
        raise Refused(Reason.MALFORMED, "the document is too large")
    try:
        data = json.loads(document)
    except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested past the limit
        raise Refused(Reason.MALFORMED, "the document is not JSON") from None
    if not isinstance(data, dict) or type(data.get("v")) is not int or data["v"] != 1:
        raise Refused(Reason.MALFORMED, "not a version 1 attestation document")
    try:
        keys_in = data["keys"]
        if not isinstance(keys_in, dict) or not keys_in:
            raise ValueError("keys must be a non-empty object")
        keys = {str(name): unb64(value) for name, value in keys_in.items()}
        attestation = Attestation(
            node=_text(data, "node"),
            model=_text(data, "model"),
            measurement=_hex64(data, "measurement"),
            keys=keys,
            boot_ms=_int(data, "boot_ms"),
            issued_ms=_int(data, "issued_ms"),
            expires_ms=_int(data, "expires_ms"),
            identity=_hex64(data, "identity"),
        )
    except (KeyError, ValueError) as e:
        raise Refused(Reason.MALFORMED, f"attestation document: {e}") from None
    return attestation


def _text(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise ValueError(f"{name} must be a string of 1 to 256 characters")
    return value


def _hex64(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError(f"{name} must be 64 lowercase hex digits")
    return value


def _int(data: dict[str, Any], name: str) -> int:
    value = data[name]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


class AttestationVerifier(Protocol):
    """Decides whether a signed document is vouched for; returns its content or raises
    ``Refused``. Expiry and the transparency log are checked by the caller, for every
    verifier alike."""

    name: str

    def verify(self, signed: SignedAttestation) -> Attestation: ...


class SignedDocumentVerifier:
    """Software attestation: the document must be signed by an enrolled identity key.

    ``wrong_key`` when the signer is not enrolled; ``bad_signature`` when an enrolled key's
    signature does not cover these exact bytes (a changed measurement, key or expiry)."""

    name = "signed"

    def __init__(self, identity_keys: Iterable[str]) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for hex_key in identity_keys:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key))
            self._keys[identity_hex(key)] = key

    def verify(self, signed: SignedAttestation) -> Attestation:
        attestation = parse(signed.document)
        key = self._keys.get(attestation.identity)
        if key is None:
            raise Refused(
                Reason.WRONG_KEY,
                f"signed by identity key {attestation.identity[:16]}…, which is not enrolled",
            )
        try:
            key.verify(signed.signature, DOCUMENT_CONTEXT + signed.document)
        except InvalidSignature:
            raise Refused(
                Reason.BAD_SIGNATURE, "the document does not match its signature"
            ) from None
        return attestation


def check_time(attestation: Attestation, now_ms: int, skew_ms: int) -> None:
    """``Refused(EXPIRED)`` if the document is past its expiry or not yet issued."""
    if now_ms >= attestation.expires_ms:
        ago = (now_ms - attestation.expires_ms) / 1000
        raise Refused(Reason.EXPIRED, f"the attestation expired {ago:.0f} s ago")
    if attestation.issued_ms > now_ms + skew_ms:
        raise Refused(Reason.EXPIRED, "the attestation is issued in the future")
