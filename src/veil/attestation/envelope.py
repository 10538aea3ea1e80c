"""Sealing requests to a node's attested key, and the node's encrypted replies.

A request is one HPKE (RFC 9180) single-shot message to the key in the node's attestation::

    body = version (1 byte, 1) | KEM id (1 byte) | HPKE enc | ciphertext
    info = b"veil/node-request/v1\\x00" + SHA-256(attestation document)
    plaintext = response key (32 bytes) | issued_ms (8 bytes, big-endian) | JSON request

``info`` binds the request to the exact document the gateway verified. The response key is
fresh for each request; the node answers with a stream of frames, each sealed with
AES-256-GCM under it::

    frame = length (4 bytes, big-endian, of what follows) | final (1 byte, 0 or 1) | sealed
    nonce = the frame's number (12 bytes, big-endian), from 0
    aad   = b"veil/node-response/v1\\x00" + final

so a frame cannot be dropped, reordered, replayed from another answer or cut off at the
end without the opener noticing. The node refuses a request it has opened before
(``replayed``) or one issued outside its clock window (``stale``).
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.attestation.document import AEAD, KDF, KEMS, HpkePrivateKey, HpkePublicKey

VERSION = 1
REQUEST_INFO = b"veil/node-request/v1\x00"
RESPONSE_AAD = b"veil/node-response/v1\x00"
KEY_SIZE = 32
MAX_FRAME = 16 * 1024 * 1024
CONTENT_TYPE = "application/vnd.veil.sealed"
_KEM_IDS = {name: i + 1 for i, name in enumerate(KEMS)}
_KEM_NAMES = {i: name for name, i in _KEM_IDS.items()}
_SUITES = {name: hpke.Suite(kem, KDF, AEAD) for name, kem in KEMS.items()}
_HEADER = struct.Struct(">BB")
_ISSUED = struct.Struct(">Q")
_LENGTH = struct.Struct(">I")
_FINAL = (RESPONSE_AAD + b"\x00", RESPONSE_AAD + b"\x01")


class EnvelopeError(Exception):
    """A sealed message that cannot be opened; ``code`` is the reason, for the wire."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def request_info(document: bytes) -> bytes:
    return REQUEST_INFO + hashlib.sha256(document).digest()


def seal_request(
    payload: dict[str, Any], kem: str, public_key: HpkePublicKey, info: bytes
) -> tuple[bytes, ResponseOpener]:
    """The sealed body for ``payload``, and the opener for the node's reply to it."""
    key = os.urandom(KEY_SIZE)
    plaintext = key + _ISSUED.pack(int(time.time() * 1000)) + orjson.dumps(payload)
    sealed = _SUITES[kem].encrypt(plaintext, public_key, info=info)
    return _HEADER.pack(VERSION, _KEM_IDS[kem]) + sealed, ResponseOpener(key)


@dataclass(slots=True)
class OpenedRequest:
    payload: dict[str, Any]
    issued_ms: int
    #: What a replay of this body would repeat: its digest, remembered by the node.
    tag: bytes
    sealer: ResponseSealer


def open_request(body: bytes, keys: dict[str, HpkePrivateKey], info: bytes) -> OpenedRequest:
    """Open a sealed request with the node's boot keys; ``EnvelopeError`` if it does not."""
    if len(body) < _HEADER.size:
        raise EnvelopeError("malformed", "the body is not a sealed request")
    version, kem_id = _HEADER.unpack_from(body)
    kem = _KEM_NAMES.get(kem_id)
    if version != VERSION or kem is None or kem not in keys:
        raise EnvelopeError("malformed", "unknown envelope version or KEM")
    try:
        plaintext = _SUITES[kem].decrypt(body[_HEADER.size :], keys[kem], info=info)
    except (InvalidTag, ValueError):
        # The wrong key, a changed body, or sealed to another attestation document.
        raise EnvelopeError(
            "key_rejected", "the request does not open with this node's key"
        ) from None
    if len(plaintext) < KEY_SIZE + _ISSUED.size:
        raise EnvelopeError("malformed", "the sealed request is too short")
    key = plaintext[:KEY_SIZE]
    (issued_ms,) = _ISSUED.unpack_from(plaintext, KEY_SIZE)
    try:
        payload = orjson.loads(plaintext[KEY_SIZE + _ISSUED.size :])
    except orjson.JSONDecodeError:
        raise EnvelopeError("malformed", "the sealed request is not JSON") from None
    if not isinstance(payload, dict):
        raise EnvelopeError("malformed", "the sealed request is not a JSON object")
    return OpenedRequest(payload, issued_ms, hashlib.sha256(body).digest(), ResponseSealer(key))


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")


class ResponseSealer:
    """The node's side of a reply: frames sealed under the request's response key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._counter = 0
        self._done = False

    def frame(self, message: dict[str, Any], final: bool = False) -> bytes:
        if self._done:
            raise RuntimeError("the reply is already finished")
        sealed = self._aead.encrypt(_nonce(self._counter), orjson.dumps(message), _FINAL[final])
        self._counter += 1
        self._done = final
        return _LENGTH.pack(len(sealed) + 1) + (b"\x01" if final else b"\x00") + sealed


class ResponseOpener:
    """The gateway's side: feed it the reply's bytes as they come, get messages out."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._counter = 0
        self._buffer = bytearray()
        self.finished = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages: list[dict[str, Any]] = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if not 1 < length <= MAX_FRAME:
                raise EnvelopeError("bad_response", "a reply frame has an impossible length")
            if len(self._buffer) < _LENGTH.size + length:
                break
            frame = bytes(self._buffer[_LENGTH.size : _LENGTH.size + length])
            del self._buffer[: _LENGTH.size + length]
            messages.append(self._open(frame))
        return messages

    def _open(self, frame: bytes) -> dict[str, Any]:
        if self.finished:
            raise EnvelopeError("bad_response", "the reply goes on after its final frame")
        final = frame[0]
        if final not in (0, 1):
            raise EnvelopeError("bad_response", "a reply frame has a bad flag")
        try:
            plain = self._aead.decrypt(_nonce(self._counter), frame[1:], _FINAL[final])
        except InvalidTag:
            raise EnvelopeError(
                "bad_response", f"reply frame {self._counter} does not open under this key"
            ) from None
        self._counter += 1
        self.finished = bool(final)
        try:
            message = orjson.loads(plain)
        except orjson.JSONDecodeError:
            raise EnvelopeError("bad_response", "a reply frame is not JSON") from None
        if not isinstance(message, dict):
            raise EnvelopeError("bad_response", "a reply frame is not a JSON object")
        return message

    def end(self) -> None:
        """The reply's bytes have ended: ``EnvelopeError`` unless it ended properly."""
        if not self.finished or self._buffer:
            raise EnvelopeError("bad_response", "the reply was cut off before its final frame")
