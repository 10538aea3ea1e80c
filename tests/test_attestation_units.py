"""Attestation documents, sealed requests and reply frames, node measurement, and the node's
own app, each checked in-process with real keys and a real (fake) provider."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from starlette.testclient import TestClient

import veil
from veil import errors
from veil.attestation import envelope
from veil.attestation.document import (
    AEAD,
    KDF,
    KEMS,
    MAX_DOCUMENT_SIZE,
    Attestation,
    BootKeys,
    Reason,
    Refused,
    SignedAttestation,
    SignedDocumentVerifier,
    check_time,
    identity_hex,
    parse,
    sign,
)
from veil.attestation.envelope import EnvelopeError, ResponseOpener, ResponseSealer
from veil.chat import ChatRequest, Usage
from veil.config import FakeProviderConfig
from veil.node.measure import Measurement, _manifest, config_digest, measure, model_digest
from veil.node.server import Node, NodeIdentity
from veil.providers.base import Completion
from veil.providers.fake import FakeProvider
from veil.providers.private_node import _node_error, _usage

if TYPE_CHECKING:
    from httpx2 import Response  # what starlette's TestClient is typed against

CANARY = "canary-7f3a9c-veil-plaintext"
MEASUREMENT = "ab" * 32
KEM_NAMES = ("x25519", "mlkem768-x25519")
#: The KEM id byte on the wire, pinned here rather than read from the module under test.
KEM_IDS = {"mlkem768-x25519": 1, "x25519": 2}
NOW = 1_700_000_000_000
#: One boot's keys and one enrolled identity; no test changes them.
KEYS = BootKeys()
PRIVATE: dict[str, Any] = {kem: KEYS.private(kem) for kem in KEYS.public()}
IDENTITY = Ed25519PrivateKey.generate()
ENROLLED = SignedDocumentVerifier([identity_hex(IDENTITY.public_key())])


def _attestation(
    boot: BootKeys = KEYS, signer: Ed25519PrivateKey = IDENTITY, **changes: Any
) -> Attestation:
    fields: dict[str, Any] = {
        "node": "veil-node",
        "model": "echo-1",
        "measurement": MEASUREMENT,
        "keys": boot.public(),
        "boot_ms": NOW - 5_000,
        "issued_ms": NOW,
        "expires_ms": NOW + 3_600_000,
        "identity": identity_hex(signer.public_key()),
    }
    return Attestation(**{**fields, **changes})


def _canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _hand_sealed(plaintext: bytes, kem: str, attestation: Attestation, info: bytes) -> bytes:
    suite = hpke.Suite(KEMS[kem], KDF, AEAD)
    return bytes([1, KEM_IDS[kem]]) + suite.encrypt(plaintext, attestation.public_key(kem), info)


def _refusal(call: Any, *args: Any) -> Reason:
    with pytest.raises(Refused) as refused:
        call(*args)
    return refused.value.reason


# --- documents -------------------------------------------------------------------------


def test_a_signed_document_round_trips_through_json_parse_and_verify() -> None:
    doc = _attestation()
    signed = sign(doc, IDENTITY)
    assert signed.document == _canonical(doc.to_json())
    IDENTITY.public_key().verify(signed.signature, b"veil/attestation/v1\x00" + signed.document)
    wire = SignedAttestation.from_json(json.loads(json.dumps(signed.to_json())))
    assert wire == signed
    assert parse(wire.document) == doc
    assert ENROLLED.verify(wire) == doc


def test_a_changed_document_or_signature_is_a_bad_signature() -> None:
    signed = sign(_attestation(), IDENTITY)
    data = json.loads(signed.document)
    tampered = _canonical({**data, "measurement": "ac" + MEASUREMENT[2:]})
    assert parse(tampered).measurement != MEASUREMENT  # still well formed
    flipped = signed.signature[:-1] + bytes([signed.signature[-1] ^ 1])
    for bad in (
        SignedAttestation(tampered, signed.signature),
        SignedAttestation(_canonical({**data, "expires_ms": NOW + 10**9}), signed.signature),
        SignedAttestation(signed.document, flipped),
        SignedAttestation(json.dumps(data).encode(), signed.signature),  # same content, spaced
    ):
        assert _refusal(ENROLLED.verify, bad) is Reason.BAD_SIGNATURE


def test_a_document_signed_by_an_unenrolled_key_is_the_wrong_key() -> None:
    stranger = Ed25519PrivateKey.generate()
    own = sign(_attestation(signer=stranger), stranger)
    assert _refusal(ENROLLED.verify, own) is Reason.WRONG_KEY
    # Naming the enrolled identity does not help a stranger: its signature does not verify.
    claimed = sign(_attestation(), stranger)
    assert _refusal(ENROLLED.verify, claimed) is Reason.BAD_SIGNATURE


def _document_with(**changes: Any) -> bytes:
    data = {**_attestation().to_json(), **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"[1]", id="not-an-object"),
        pytest.param(_document_with(v=2), id="version-2"),
        pytest.param(_document_with(v="1"), id="version-as-text"),
        pytest.param(_document_with(measurement="AB" * 32), id="uppercase-hex"),
        pytest.param(_document_with(measurement="zz" * 32), id="bad-hex"),
        pytest.param(_document_with(identity="ab" * 31), id="short-hex"),
        pytest.param(_document_with(boot_ms=True), id="bool-as-int"),
        pytest.param(_document_with(issued_ms=1.5), id="float-as-int"),
        pytest.param(_document_with(issued_ms=-1), id="negative-int"),
        pytest.param(_document_with(expires_ms=2**63), id="int-too-large"),
        pytest.param(_document_with(keys={}), id="no-keys"),
        pytest.param(_document_with(keys={"x25519": "not base64!"}), id="bad-base64"),
        pytest.param(_document_with(node=""), id="empty-name"),
        pytest.param(_document_with(node="n" * 257), id="long-name"),
        pytest.param(_document_with(model=5), id="model-not-text"),
        pytest.param(_document_with(identity=...), id="no-identity"),
        # Valid JSON but for its padding: only the size limit refuses it.
        pytest.param(_document_with() + b" " * MAX_DOCUMENT_SIZE, id="too-large"),
        pytest.param(b"[" * 5000, id="deeply-nested"),
        pytest.param(_document_with(v=True), id="version-true"),
        pytest.param(_document_with(v=1.0), id="version-float"),
    ],
)
def test_a_malformed_document_is_refused_as_malformed_and_nothing_else(document: bytes) -> None:
    assert _refusal(parse, document) is Reason.MALFORMED
    signed = SignedAttestation(document, b"\x00" * 64)
    assert _refusal(ENROLLED.verify, signed) is Reason.MALFORMED


@pytest.mark.parametrize("data", [[], {"document": 1, "signature": ""}, {"document": "%%"}])
def test_a_served_attestation_that_is_not_base64_json_is_malformed(data: object) -> None:
    assert _refusal(SignedAttestation.from_json, data) is Reason.MALFORMED


def test_check_time_refuses_an_expired_or_future_document() -> None:
    doc = _attestation()
    check_time(doc, doc.expires_ms - 1, 0)
    check_time(doc, doc.issued_ms - 1_000, 1_000)  # issued ahead, but within the skew
    for now, skew in ((doc.expires_ms, 0), (doc.expires_ms + 1, 60_000), (NOW - 1_001, 1_000)):
        assert _refusal(check_time, doc, now, skew) is Reason.EXPIRED


def test_public_key_reads_both_kems_and_refuses_a_missing_or_broken_one() -> None:
    doc = _attestation()
    x = doc.public_key("x25519")
    assert isinstance(x, x25519.X25519PublicKey)
    assert x.public_bytes_raw() == KEYS.public()["x25519"]
    assert isinstance(doc.public_key("mlkem768-x25519"), hpke.MLKEM768X25519PublicKey)
    assert len(KEYS.public()["mlkem768-x25519"]) == 1184 + 32
    only_x = _attestation(keys={"x25519": KEYS.public()["x25519"]})
    assert _refusal(only_x.public_key, "mlkem768-x25519") is Reason.MALFORMED
    broken = _attestation(keys={kem: raw[:-1] for kem, raw in KEYS.public().items()})
    for kem in KEM_NAMES:
        assert _refusal(broken.public_key, kem) is Reason.MALFORMED


# --- sealed requests -------------------------------------------------------------------


@pytest.mark.parametrize("kem", KEM_NAMES)
def test_a_sealed_request_opens_with_the_boot_key_and_its_reply_with_its_opener(kem: str) -> None:
    doc = _attestation()
    info = envelope.request_info(doc.encode())
    payload = {"model": "m", "messages": [{"role": "user", "content": CANARY}]}
    before = int(time.time() * 1000)
    body, opener = envelope.seal_request(payload, kem, doc.public_key(kem), info)
    assert body[:2] == bytes([1, KEM_IDS[kem]])
    assert CANARY.encode() not in body
    opened = envelope.open_request(body, PRIVATE, info)
    assert opened.payload == payload
    assert before <= opened.issued_ms <= int(time.time() * 1000)
    assert opened.tag == hashlib.sha256(body).digest()
    reply = opened.sealer.frame({"a": 1}) + opened.sealer.frame({"b": 2}, final=True)
    assert opener.feed(reply) == [{"a": 1}, {"b": 2}]
    opener.end()


def test_a_hand_sealed_body_in_the_documented_layout_opens() -> None:
    doc = _attestation()
    info = envelope.request_info(doc.encode())
    assert info == b"veil/node-request/v1\x00" + hashlib.sha256(doc.encode()).digest()
    key = bytes(range(32))
    body = _hand_sealed(key + (1234).to_bytes(8, "big") + b'{"x":1}', "x25519", doc, info)
    opened = envelope.open_request(body, PRIVATE, info)
    assert (opened.payload, opened.issued_ms) == ({"x": 1}, 1234)
    assert ResponseOpener(key).feed(opened.sealer.frame({"ok": 1}, final=True)) == [{"ok": 1}]


def _open_code(body: bytes, info: bytes, keys: dict[str, Any] = PRIVATE) -> str:
    with pytest.raises(EnvelopeError) as err:
        envelope.open_request(body, keys, info)
    return err.value.code


@pytest.mark.parametrize("kem", KEM_NAMES)
def test_a_request_for_another_document_or_node_or_changed_is_key_rejected(kem: str) -> None:
    doc = _attestation()
    info = envelope.request_info(doc.encode())
    reissued = envelope.request_info(_attestation(issued_ms=NOW + 1).encode())
    body, _ = envelope.seal_request({"x": 1}, kem, doc.public_key(kem), info)
    elsewhere = _attestation(BootKeys()).public_key(kem)
    other_node, _ = envelope.seal_request({"x": 1}, kem, elsewhere, info)
    assert _open_code(body, reissued) == "key_rejected"
    assert _open_code(other_node, info) == "key_rejected"
    assert _open_code(body[:-1] + bytes([body[-1] ^ 1]), info) == "key_rejected"
    # Cut short behind a valid header: a changed body, not an unreadable one.
    assert _open_code(body[:40], info) == "key_rejected"


def test_a_body_that_is_not_a_sealed_request_is_malformed() -> None:
    doc = _attestation()
    info = envelope.request_info(doc.encode())
    body, _ = envelope.seal_request(
        {"x": 1}, "mlkem768-x25519", doc.public_key("mlkem768-x25519"), info
    )
    key_and_time = bytes(32) + int(time.time() * 1000).to_bytes(8, "big")
    for bad in (
        b"",
        b"\x01",
        b"\x02" + body[1:],  # an unknown version
        b"\x01\x09" + body[2:],  # an unknown KEM
        _hand_sealed(bytes(39), "x25519", doc, info),  # too short for key and time
        _hand_sealed(key_and_time + b"{nope", "x25519", doc, info),
        _hand_sealed(key_and_time + b"[1,2]", "x25519", doc, info),
    ):
        assert _open_code(bad, info) == "malformed"
    # A KEM this node does not hold.
    assert _open_code(body, info, {"x25519": KEYS.private("x25519")}) == "malformed"


# --- reply frames ----------------------------------------------------------------------


def _reply(n: int = 3, key: bytes = b"k" * 32) -> list[bytes]:
    sealer = ResponseSealer(key)
    return [sealer.frame({"i": i}, final=i == n - 1) for i in range(n)]


def test_reply_frames_round_trip_whole_or_byte_by_byte_and_stop_at_the_final_one() -> None:
    data = b"".join(_reply())
    whole = ResponseOpener(b"k" * 32)
    assert whole.feed(data) == [{"i": 0}, {"i": 1}, {"i": 2}]
    whole.end()
    slow = ResponseOpener(b"k" * 32)
    messages = [m for i in range(len(data)) for m in slow.feed(data[i : i + 1])]
    assert messages == [{"i": 0}, {"i": 1}, {"i": 2}]
    slow.end()
    sealer = ResponseSealer(b"k" * 32)
    sealer.frame({}, final=True)
    with pytest.raises(RuntimeError):
        sealer.frame({})  # the node cannot add to a finished reply either


def _flip(frame: bytes, at: int) -> bytes:
    return frame[:at] + bytes([frame[at] ^ 1]) + frame[at + 1 :]


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(lambda f, o: f[0] + f[2], id="dropped-frame"),
        pytest.param(lambda f, o: f[1] + f[0] + f[2], id="reordered"),
        pytest.param(lambda f, o: o[0] + f[1] + f[2], id="other-answers-frame"),
        pytest.param(lambda f, o: f[0] + _flip(f[1], 9) + f[2], id="flipped-ciphertext-bit"),
        pytest.param(lambda f, o: f[0] + f[1] + _flip(f[2], 4), id="flipped-final-flag"),
        pytest.param(lambda f, o: f[0] + b"\x00\x00\x00\x01\x00", id="impossible-length"),
        pytest.param(lambda f, o: f[0] + f[1][:4] + b"\x02" + f[1][5:], id="bad-flag"),
        # Frame 3 would open in its place, were it not after the final one.
        pytest.param(lambda f, o: b"".join(f) + _reply(5)[3], id="data-after-final"),
    ],
)
def test_a_reply_that_was_tampered_with_is_a_bad_response(stream: Any) -> None:
    opener = ResponseOpener(b"k" * 32)
    with pytest.raises(EnvelopeError) as err:
        opener.feed(stream(_reply(), _reply(key=b"o" * 32)))
    assert err.value.code == "bad_response"


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(lambda f: f[0] + f[1], id="cut-before-final"),
        pytest.param(lambda f: f[0] + f[1] + f[2][:-1], id="cut-inside-final"),
        pytest.param(lambda f: b"".join(f) + b"\x00\x00", id="bytes-after-final"),
    ],
)
def test_a_reply_that_does_not_end_at_its_final_frame_fails_at_end(stream: Any) -> None:
    opener = ResponseOpener(b"k" * 32)
    opener.feed(stream(_reply()))
    with pytest.raises(EnvelopeError) as err:
        opener.end()
    assert err.value.code == "bad_response"


def test_a_frame_that_opens_but_is_not_json_is_a_bad_response() -> None:
    sealed = AESGCM(b"k" * 32).encrypt(bytes(12), b"not json", envelope.RESPONSE_AAD + b"\x01")
    frame = (len(sealed) + 1).to_bytes(4, "big") + b"\x01" + sealed
    with pytest.raises(EnvelopeError) as err:
        ResponseOpener(b"k" * 32).feed(frame)
    assert err.value.code == "bad_response"


# --- measurement -----------------------------------------------------------------------


def test_a_measurement_is_deterministic_and_follows_config_and_model(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"weights" * 1000)
    config = {"model": "echo", "lifetime": 3600}
    first = measure(config, model)
    assert measure(dict(reversed(config.items())), model) == first
    lines = f"veil-node-measurement/v1\ncode {first.code}\nconfig {first.config}\n"
    assert first.value == hashlib.sha256(f"{lines}model {first.model}\n".encode()).hexdigest()
    assert measure({**config, "lifetime": 60}, model).value != first.value
    assert config_digest({"a": 1}) != config_digest({"a": "1"})
    model.write_bytes(b"weights" * 999 + b"weighTs")
    assert measure(config, model).value != first.value
    swapped = {Measurement(*("1" * 64 if i == j else "0" * 64 for j in range(3))) for i in range(3)}
    assert len({m.value for m in swapped}) == 3  # each part counts in its own place


def test_a_model_directorys_digest_follows_its_files_and_their_names(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.safetensors").write_bytes(b"a")
    (tmp_path / "sub" / "b.json").write_bytes(b"b")
    first = model_digest(tmp_path)
    assert model_digest(tmp_path) == first
    (tmp_path / "sub" / "b.json").write_bytes(b"B")
    changed = model_digest(tmp_path)
    assert changed != first
    (tmp_path / "sub" / "b.json").rename(tmp_path / "sub" / "c.json")
    assert model_digest(tmp_path) not in (first, changed)


def test_a_changed_file_in_a_copy_of_the_package_changes_its_manifest(tmp_path: Path) -> None:
    installed = Path(veil.__file__).resolve().parent
    copy = tmp_path / "veil"
    shutil.copytree(installed, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    first = _manifest(copy, skip_caches=True)
    assert first == _manifest(installed, skip_caches=True)
    assert any(line.startswith("node/server.py\0") for line in first)
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"cache")
    assert _manifest(copy, skip_caches=True) == first  # bytecode caches are not code
    with (copy / "node" / "server.py").open("a") as f:
        f.write("\n# changed\n")
    assert _manifest(copy, skip_caches=True) != first


# --- the node's app --------------------------------------------------------------------


class RecordingProvider(FakeProvider):
    """The fake provider, keeping each request it answers."""

    def __init__(self) -> None:
        super().__init__(FakeProviderConfig(type="fake", name="f"))
        self.seen: list[ChatRequest] = []

    async def complete(self, request: ChatRequest, model: str) -> Completion:
        self.seen.append(request)
        return await super().complete(request, model)


@dataclass
class Live:
    client: TestClient
    provider: RecordingProvider
    identity: Ed25519PrivateKey
    headers: dict[str, str]
    info: bytes
    attestation: Attestation

    def seal(self, payload: dict[str, Any], kem: str = "x25519") -> tuple[bytes, ResponseOpener]:
        return envelope.seal_request(payload, kem, self.attestation.public_key(kem), self.info)

    def post(self, body: bytes, **headers: str) -> Response:
        return self.client.post("/node/v1/chat", content=body, headers={**self.headers, **headers})


@contextmanager
def _live(model: str = "echo", **options: Any) -> Iterator[Live]:
    identity, provider = Ed25519PrivateKey.generate(), RecordingProvider()
    who = NodeIdentity("veil-node", "echo-1", MEASUREMENT, identity)
    node = Node(who, provider, model, **options)
    with TestClient(node.app()) as client:
        signed = SignedAttestation.from_json(client.get("/node/v1/attestation").json())
        headers = {
            "content-type": envelope.CONTENT_TYPE,
            "x-veil-attestation": hashlib.sha256(signed.document).hexdigest(),
        }
        info = envelope.request_info(signed.document)
        yield Live(client, provider, identity, headers, info, parse(signed.document))


@pytest.fixture
def live() -> Iterator[Live]:
    with _live() as node:
        yield node


def _ask(**extra: Any) -> dict[str, Any]:
    return {"model": "x", "messages": [{"role": "user", "content": CANARY}], **extra}


def _refused_code(r: Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


def test_the_attestation_verifies_and_carries_the_given_measurement(live: Live) -> None:
    signed = SignedAttestation.from_json(live.client.get("/node/v1/attestation").json())
    doc = SignedDocumentVerifier([identity_hex(live.identity.public_key())]).verify(signed)
    assert (doc.node, doc.model, doc.measurement) == ("veil-node", "echo-1", MEASUREMENT)
    assert doc.identity == identity_hex(live.identity.public_key())
    assert set(doc.keys) == set(KEM_NAMES)
    check_time(doc, int(time.time() * 1000), 0)
    assert live.client.get("/node/v1/health").json()["status"] == "ok"


@pytest.mark.parametrize("kem", KEM_NAMES)
def test_a_sealed_request_is_answered_in_frames_without_plaintext(kem: str, live: Live) -> None:
    body, opener = live.seal(_ask(), kem)
    r = live.post(body)
    assert (r.status_code, r.headers["content-type"]) == (200, envelope.CONTENT_TYPE)
    assert CANARY.encode() not in r.content
    [final] = opener.feed(r.content)
    opener.end()
    assert final["completion"]["choices"][0]["message"]["content"] == CANARY
    assert final["usage"]["completion_tokens"] == 1


def test_a_sealed_stream_is_answered_chunk_by_chunk_inside_frames(live: Live) -> None:
    ask = _ask(stream=True, messages=[{"role": "user", "content": f"a {CANARY}"}])
    body, opener = live.seal(ask)
    r = live.post(body)
    assert r.status_code == 200
    assert CANARY.encode() not in r.content
    messages = opener.feed(r.content)
    opener.end()
    usage = {"prompt_tokens": 2, "completion_tokens": 2, "method": "counted"}
    assert messages[-1] == {"end": True, "usage": usage}
    text = "".join(m["chunk"]["choices"][0]["delta"].get("content", "") for m in messages[:-1])
    assert text == f"a {CANARY}"


def test_the_node_drops_user_and_metadata_before_its_provider_sees_them(live: Live) -> None:
    body, _ = live.seal(_ask(user="alice@example.com", metadata={"team": "x"}))
    assert live.post(body).status_code == 200
    [request] = live.provider.seen
    assert (request.user, request.metadata) == (None, None)
    assert request.messages[0].text() == CANARY


def test_a_replayed_body_is_refused_before_the_provider_sees_it(live: Live) -> None:
    body, _ = live.seal(_ask())
    assert live.post(body).status_code == 200
    assert _refused_code(live.post(body)) == (400, "replayed")
    assert len(live.provider.seen) == 1


@pytest.mark.parametrize("offset_ms", [-61_000, 61_000])
def test_a_request_issued_outside_the_clock_window_is_stale(offset_ms: int, live: Live) -> None:
    issued = int(time.time() * 1000) + offset_ms
    plaintext = bytes(32) + issued.to_bytes(8, "big") + orjson.dumps(_ask())
    r = live.post(_hand_sealed(plaintext, "x25519", live.attestation, live.info))
    assert _refused_code(r) == (400, "stale")
    assert live.provider.seen == []


def test_a_request_naming_no_document_this_boot_holds_is_refused(live: Live) -> None:
    body, _ = live.seal(_ask())
    bare = live.client.post(
        "/node/v1/chat", content=body, headers={"content-type": envelope.CONTENT_TYPE}
    )
    assert _refused_code(bare) == (400, "unknown_attestation")
    unknown = live.post(body, **{"x-veil-attestation": "0" * 64})
    assert _refused_code(unknown) == (400, "unknown_attestation")
    with _live(lifetime=0.001) as short:
        time.sleep(0.01)  # the document it is sealed under has expired
        late, _ = short.seal(_ask())
        assert _refused_code(short.post(late)) == (400, "unknown_attestation")
    assert live.provider.seen == []


def test_a_node_with_a_token_refuses_any_other_bearer() -> None:
    with _live(token="s3cret") as node:
        body, _ = node.seal(_ask())
        for header in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            assert _refused_code(node.post(body, **header)) == (401, "unauthorized")
        assert node.post(body, authorization="Bearer s3cret").status_code == 200


@pytest.mark.parametrize("path", ["/docs", "/admin", "/debug", "/openapi.json", "/v1/models"])
def test_the_node_serves_no_other_route(path: str, live: Live) -> None:
    assert live.client.get(path).status_code == 404
    assert live.client.post(path).status_code == 404


def _final(node: Live, payload: dict[str, Any]) -> dict[str, Any]:
    body, opener = node.seal(payload)
    r = node.post(body)
    assert r.status_code == 200
    [final] = opener.feed(r.content)
    opener.end()
    return final


def test_an_invalid_or_failed_request_is_answered_inside_frames() -> None:
    with _live() as node:
        final = _final(node, {"model": "x", "messages": [], "user": CANARY})
        assert final["error"]["code"] == "invalid_request"
        assert CANARY not in final["error"]["message"]
    with _live("error-429") as node:
        error = _node_error("node 1 of pcc", _final(node, _ask())["error"])
        assert isinstance(error, errors.RateLimited)
        assert error.retry_after == 2.0
    with _live("crash") as node:
        final = _final(node, _ask())
        assert final["error"]["code"] == "node_error"
        assert final["error"]["message"] == "the node failed"  # never the exception's text


# --- the gateway's reading of a node's reply -------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (413, errors.BodyTooLarge),
        (400, errors.InvalidRequest),
        (429, errors.RateLimited),
        (503, errors.UpstreamUnavailable),
        (504, errors.UpstreamTimeout),
        (500, errors.UpstreamError),
        ("429", errors.UpstreamError),  # not a number: a plain failure
    ],
)
def test_a_nodes_sealed_error_becomes_the_same_kind_of_error(status: object, kind: type) -> None:
    sealed = {"status": status, "code": "c", "message": "m" * 1000, "retry_after": 3}
    error = _node_error("node 1 of pcc", sealed)
    assert type(error) is kind
    assert error.message == "node 1 of pcc: " + "m" * 300
    retries = kind in (errors.RateLimited, errors.UpstreamUnavailable)
    assert error.retry_after == (3.0 if retries else None)
    assert type(_node_error("node 1 of pcc", "boom")) is errors.UpstreamError


def test_a_nodes_usage_is_read_leniently() -> None:
    full = {"prompt_tokens": 3, "completion_tokens": 4, "method": "counted"}
    assert _usage(full) == Usage(3, 4, "counted")
    assert _usage({"prompt_tokens": 3}) == Usage(3, 0, "reported")
    bad: list[object] = [
        None,
        [],
        {"prompt_tokens": "many"},
        {"completion_tokens": [1]},
        {"prompt_tokens": -5, "completion_tokens": 2},
    ]
    for data in bad:
        assert _usage(data) == Usage(method="missing")


def test_the_replay_cache_forgets_oldest_first_once_a_replay_would_be_stale() -> None:
    who = NodeIdentity("veil-node", "echo-1", MEASUREMENT, Ed25519PrivateKey.generate())
    node = Node(who, RecordingProvider(), "echo", max_skew=10)
    now = int(time.time() * 1000)
    # Opened 25 s and 15 s ago: with a 10 s window, a replay of the first is stale anyway
    # (it was issued at most 35 s ago), of the second not yet.
    node._seen[b"old"] = now - 25_000
    node._seen[b"recent"] = now - 15_000
    assert node._fresh(now, b"new") is None
    assert list(node._seen) == [b"recent", b"new"]
    assert node._fresh(now, b"recent") == "replayed"
    assert node._fresh(now, b"new") == "replayed"
    assert node._fresh(now - 11_000, b"late") == "stale"
    assert b"late" not in node._seen
