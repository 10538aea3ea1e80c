"""A pool of Veil private compute nodes: verified before use, sent ciphertext only.

Before a node gets a request the gateway has checked, and keeps re-checking every
``refresh`` seconds:

1. the transparency log: its signed tree head, which must extend the last one this gateway
   accepted (a consistency proof; the head is kept in ``$VEIL_HOME/attestation`` so a
   rollback is caught across restarts too). Refusals: ``log_bad_signature``, ``fork``,
   ``rollback``, ``log_unreachable``;
2. the node's attestation document: vouched for by the verifier (``wrong_key``,
   ``bad_signature``, ``malformed``), not expired (``expired``), and its measurement proven
   to be in that tree by an inclusion proof (``not_in_log``).

A request then goes to one of the nodes that passed, chosen at random (never by user),
HPKE-sealed to the key in its document, without ``user`` or ``metadata``; the reply comes
back sealed under a key only that request knows. A node that cannot open the request or
replies with something that does not open is refused too (``key_rejected``, ``replayed``,
``bad_response``) and re-checked. With no node left the call fails with 503, naming each
node's reason, and routing falls back to the next deployment or model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from veil.attestation.document import (
    Attestation,
    HpkePublicKey,
    Reason,
    Refused,
    SignedAttestation,
    SignedDocumentVerifier,
    check_time,
)
from veil.attestation.envelope import (
    CONTENT_TYPE,
    EnvelopeError,
    ResponseOpener,
    request_info,
    seal_request,
)
from veil.attestation.log import sth_from_json, sth_to_json, unb64
from veil.attestation.merkle import Monitor, Refusal, SignedTreeHead, leaf_hash, verify_inclusion
from veil.chat import ChatRequest, Usage
from veil.config import PrivateNodeProviderConfig, TransparencyLogConfig
from veil.errors import (
    BodyTooLarge,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    VeilError,
)
from veil.providers.base import Completion, Provider, StreamState
from veil.providers.http import HttpClient

log = logging.getLogger(__name__)

#: Fields never sent to a node: who the user is, and Veil's own business.
NOT_SENT = {"user", "metadata", "safety_identifier", "stream_options"}
#: What a node answers, before opening anything, about a request it will not serve.
_NODE_REFUSALS = {
    "key_rejected": Reason.KEY_REJECTED,
    "unknown_attestation": Reason.ATTESTATION_CHANGED,
    "replayed": Reason.REPLAYED,
    "stale": Reason.CLOCK_SKEW,
}
_LOG_REFUSALS = {
    Refusal.BAD_SIGNATURE: Reason.LOG_BAD_SIGNATURE,
    Refusal.FORK: Reason.FORK,
    Refusal.ROLLBACK: Reason.ROLLBACK,
}
_ENTRIES_PER_CALL = 1000
#: How a node may say its tokens were known (anything else is read as ``reported``).
_METHODS = frozenset({"reported", "counted", "estimated", "missing"})


def _now_ms() -> int:
    return int(time.time() * 1000)


class TransparencyLog:
    """This gateway's view of the log: the last tree head it accepted (persisted, so a
    rollback is caught across restarts) and where each measurement was seen in it."""

    def __init__(self, config: TransparencyLogConfig, http: HttpClient) -> None:
        from veil.attestation.log import load_public_key

        self._url = config.url
        self._http = http
        self._key = load_public_key(config.public_key)
        self.state_file: Path | None = None
        self.monitor = Monitor(self._key)
        #: measurement → (index, entry bytes) for entries read so far (proven on use).
        self._index: dict[str, tuple[int, bytes]] = {}
        self._read = 0
        self._proven: dict[tuple[str, int], dict[str, Any]] = {}
        #: Why the log is not trusted now, if it is not.
        self.refusal: Refused | None = Refused(Reason.LOG_UNREACHABLE, "not read yet")

    def load_state(self, path: Path) -> None:
        """Start from the tree head accepted before, if this gateway kept one."""
        self.state_file = path
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise UpstreamUnavailable(f"cannot read the log state {path}: {e}") from None
        try:
            self.monitor = Monitor(self._key, trusted=sth_from_json(data))
        except ValueError:
            raise UpstreamUnavailable(
                f"the tree head kept in {path} is not signed by this log's key"
            ) from None

    async def _get(self, path: str, **params: int) -> Any:
        try:
            async with self._http.session.get(self._url + path, params=params) as resp:
                if resp.status != 200:
                    raise Refused(Reason.LOG_UNREACHABLE, f"{path} answered HTTP {resp.status}")
                return await resp.json(loads=orjson.loads, content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            raise Refused(Reason.LOG_UNREACHABLE, f"{path}: {type(e).__name__}") from None

    async def refresh(self) -> None:
        """Read the current tree head; accept it only if it extends the last one."""
        try:
            await self._refresh()
        except Refused as refused:
            if refused.reason is Reason.LOG_UNREACHABLE and self.monitor.latest is not None:
                # The log is down; what it proved before still holds.
                log.warning("transparency log %s unreachable: %s", self._url, refused.detail)
                return
            self.refusal = refused

    async def _refresh(self) -> None:
        try:
            signed = sth_from_json(await self._get("/log/v1/sth"))
        except ValueError as e:
            raise Refused(Reason.LOG_UNREACHABLE, f"malformed tree head: {e}") from None
        last = self.monitor.latest
        proof: list[bytes] = []
        if last is not None and signed.head.size > last.head.size > 0:
            body = await self._get(
                "/log/v1/proof/consistency", first=last.head.size, second=signed.head.size
            )
            try:
                proof = [unb64(h) for h in body["consistency"]]
            except (KeyError, TypeError, ValueError):
                raise Refused(Reason.FORK, "a malformed consistency proof") from None
        verdict = self.monitor.observe(signed, proof)
        if verdict.refusal is not None:
            raise Refused(_LOG_REFUSALS[verdict.refusal], verdict.detail)
        if last is None or last.head != signed.head:
            self._save(signed)
        await self._read_entries(signed.head.size)
        self.refusal = None

    def _save(self, signed: SignedTreeHead) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(sth_to_json(signed)) + "\n")
        tmp.replace(self.state_file)

    async def _read_entries(self, size: int) -> None:
        while self._read < size:
            end = min(size, self._read + _ENTRIES_PER_CALL)
            body = await self._get("/log/v1/entries", start=self._read, end=end)
            try:
                entries = [unb64(e["leaf_input"]) for e in body["entries"]]
            except (KeyError, TypeError, ValueError):
                raise Refused(Reason.LOG_UNREACHABLE, "malformed log entries") from None
            if len(entries) != end - self._read:
                raise Refused(Reason.LOG_UNREACHABLE, "the log returned too few entries")
            for offset, entry in enumerate(entries):
                try:
                    record = json.loads(entry)
                    measurement = record["measurement"]
                except (ValueError, TypeError, KeyError):
                    continue  # not a release record: nothing to find by
                if isinstance(measurement, str):
                    self._index.setdefault(measurement, (self._read + offset, entry))
            self._read = end

    async def prove(self, measurement: str) -> dict[str, Any]:
        """The release record of ``measurement``, proven to be in the accepted tree."""
        if self.refusal is not None:
            raise self.refusal
        signed = self.monitor.latest
        assert signed is not None
        size = signed.head.size
        cached = self._proven.get((measurement, size))
        if cached is not None:
            return cached
        found = self._index.get(measurement)
        if found is None:
            raise Refused(
                Reason.NOT_IN_LOG, f"measurement {measurement[:16]}… is not a released one"
            )
        index, entry = found
        body = await self._get("/log/v1/proof/inclusion", index=index, tree_size=size)
        try:
            path = [unb64(h) for h in body["inclusion_path"]]
        except (KeyError, TypeError, ValueError):
            path = []
        if not verify_inclusion(leaf_hash(entry), index, size, path, signed.head.root):
            raise Refused(
                Reason.NOT_IN_LOG,
                f"entry {index} is not proven to be in the log's tree of size {size}",
            )
        record = json.loads(entry)
        release = {
            "index": index,
            "name": record.get("name"),
            "version": record.get("version"),
            "tree_size": size,
        }
        self._proven = {k: v for k, v in self._proven.items() if k[1] == size}
        self._proven[(measurement, size)] = release
        return release


@dataclass(slots=True)
class NodeState:
    """What the gateway knows about one node right now."""

    url: str
    #: How callers' error messages name it ("node 2"): never its address.
    label: str = ""
    attestation: Attestation | None = None
    release: dict[str, Any] | None = None
    public_key: HpkePublicKey | None = None
    info: bytes = b""
    document_hash: str = ""
    refusal: Refused | None = None
    checked_ms: int = 0

    def usable(self, now_ms: int) -> bool:
        return (
            self.refusal is None
            and self.attestation is not None
            and now_ms < self.attestation.expires_ms
        )

    def status(self) -> dict[str, Any]:
        a = self.attestation
        return {
            "url": self.url,
            "state": "attested" if self.refusal is None and a is not None else "refused",
            "reason": self.refusal.reason.value if self.refusal else None,
            "detail": self.refusal.detail if self.refusal else None,
            "measurement": a.measurement if a else None,
            "model": a.model if a else None,
            "release": self.release,
            "expires_ms": a.expires_ms if a else None,
            "checked_ms": self.checked_ms or None,
        }


class PrivateNodeProvider(Provider):
    def __init__(self, config: PrivateNodeProviderConfig) -> None:
        super().__init__(config)
        self._config = config
        self._kem = config.kem
        self._http = HttpClient(config.name, config.timeout, config.max_connections)
        self.log = TransparencyLog(config.log, self._http)
        self._verifier = SignedDocumentVerifier(config.identity_keys)
        self.nodes = [NodeState(url, f"node {i}") for i, url in enumerate(config.nodes, 1)]
        self._headers = {"content-type": CONTENT_TYPE}
        if config.api_key is not None:
            self._headers["authorization"] = "Bearer " + config.api_key.get_secret_value()
        self._random = random.SystemRandom()
        self._skew_ms = int(config.max_skew * 1000)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Called with (provider, reason) each time a node is refused (metrics).
        self.on_refusal: Callable[[str, str], None] | None = None

    def bind_state(self, directory: Path) -> None:
        """Keep the log's accepted tree head under ``directory`` (the gateway's home)."""
        self.log.load_state(directory / f"{self.name}.sth.json")

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self._http.start()
        await self.refresh()
        self._task = asyncio.create_task(self._refresher(), name=f"veil-attest-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._http.close()

    def ready(self) -> bool:
        # Started, not "some node attested": with every node refused, requests still fall
        # back per routing, and a load balancer should keep this replica (see /admin/nodes).
        return self._task is not None

    async def _refresher(self) -> None:
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.refresh)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception:  # keep refreshing; the nodes stay as they were
                log.exception("refreshing the attestations of %s failed", self.name)

    async def refresh(self) -> None:
        """Re-read the log, then re-check every node's attestation against it."""
        async with self._lock:
            await self.log.refresh()
            await asyncio.gather(*(self._attest(node) for node in self.nodes))

    async def _attest(self, node: NodeState) -> None:
        try:
            signed = await self._fetch(node.url)
            attestation = self._verifier.verify(signed)
            check_time(attestation, _now_ms(), self._skew_ms)
            release = await self.log.prove(attestation.measurement)
            public_key = attestation.public_key(self._kem)
        except Exception as e:  # a bug here must refuse the node, never trust it
            refused = (
                e
                if isinstance(e, Refused)
                else Refused(Reason.MALFORMED, f"cannot check: {type(e).__name__}")
            )
            # What failed is the node's current document: nothing of an earlier one stands.
            node.attestation = node.release = node.public_key = None
            self._refuse(node, refused)
            return
        node.attestation, node.release, node.public_key = attestation, release, public_key
        node.info = request_info(signed.document)
        node.document_hash = hashlib.sha256(signed.document).hexdigest()
        node.checked_ms = _now_ms()
        if node.refusal is not None:
            log.info("node %s of %s is attested again", node.url, self.name)
        node.refusal = None

    async def _fetch(self, url: str) -> SignedAttestation:
        try:
            async with self._http.session.get(url + "/node/v1/attestation") as resp:
                if resp.status != 200:
                    raise Refused(
                        Reason.UNREACHABLE, f"the attestation answered HTTP {resp.status}"
                    )
                return SignedAttestation.from_json(
                    await resp.json(loads=orjson.loads, content_type=None)
                )
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            raise Refused(Reason.UNREACHABLE, f"no attestation: {type(e).__name__}") from None

    def _refuse(self, node: NodeState, refused: Refused) -> None:
        changed = node.refusal is None or node.refusal.reason is not refused.reason
        node.refusal = refused
        node.checked_ms = _now_ms()
        if changed:
            log.warning("node %s of %s refused: %s", node.url, self.name, refused)
            if self.on_refusal is not None:
                self.on_refusal(self.name, refused.reason.value)

    def status(self) -> list[dict[str, Any]]:
        """Each node's state, for ``/admin/nodes``: never anything about requests."""
        now = _now_ms()
        for node in self.nodes:
            if node.refusal is None and node.attestation is not None and not node.usable(now):
                self._refuse(node, Refused(Reason.EXPIRED, "the attestation expired"))
        return [node.status() for node in self.nodes]

    # ------------------------------------------------------------- requests

    def _pick(self, model: str) -> NodeState:
        """A node attested now and serving ``model``, at random: never chosen by who asks."""
        now = _now_ms()
        usable = []
        for node in self.nodes:
            if node.usable(now):
                assert node.attestation is not None
                if node.attestation.model == model:
                    usable.append(node)
            elif node.refusal is None and node.attestation is not None:
                self._refuse(node, Refused(Reason.EXPIRED, "the attestation expired"))
                self._wake.set()
        if not usable:
            reasons = "; ".join(f"{n.label}: {self._why_not(n, model)}" for n in self.nodes)
            if any(n.refusal is not None or n.attestation is None for n in self.nodes):
                self._wake.set()  # check again now: a node may be back
            raise UpstreamUnavailable(
                f"provider {self.name} has no attested node ({reasons})",
                code="node_not_attested",
            )
        return self._random.choice(usable)

    @staticmethod
    def _why_not(node: NodeState, model: str) -> str:
        if node.refusal is not None:
            return node.refusal.reason.value
        if node.attestation is None:
            return "not attested"
        return f"serves {node.attestation.model}, not {model}"

    def _seal(
        self, node: NodeState, request: ChatRequest, model: str
    ) -> tuple[bytes, ResponseOpener]:
        payload = request.model_dump(exclude_none=True, exclude=NOT_SENT)
        payload["model"] = model
        assert node.public_key is not None
        return seal_request(payload, self._kem, node.public_key, node.info)

    @asynccontextmanager
    async def _post(self, node: NodeState, body: bytes) -> AsyncIterator[aiohttp.ClientResponse]:
        headers = {**self._headers, "x-veil-attestation": node.document_hash}
        try:
            async with self._http.session.post(
                node.url + "/node/v1/chat", data=body, headers=headers
            ) as resp:
                if resp.status != 200:
                    raise await self._node_refused(node, resp)
                yield resp
        except VeilError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._http.transport_error(exc) from None

    async def _node_refused(self, node: NodeState, resp: aiohttp.ClientResponse) -> VeilError:
        raw = await resp.read()
        try:
            code = orjson.loads(raw)["error"]["code"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            code = None
        reason = _NODE_REFUSALS.get(code) if isinstance(code, str) else None
        if reason is not None:
            self._refuse(node, Refused(reason, f"the node answered {code}"))
            self._wake.set()
            return UpstreamUnavailable(
                f"{node.label} of {self.name} refused the sealed request ({code})",
                code="node_refused",
            )
        if resp.status == 401:
            return UpstreamError(
                f"{node.label} of {self.name} refused Veil's token (HTTP 401)",
                code="upstream_auth",
            )
        return self._http.status_error(resp.status, resp.headers, b"")

    def _opened(self, node: NodeState, opener: ResponseOpener, data: bytes) -> list[dict[str, Any]]:
        try:
            return opener.feed(data)
        except EnvelopeError as e:
            raise self._bad_reply(node, e) from None

    def _bad_reply(self, node: NodeState, e: EnvelopeError) -> UpstreamError:
        self._refuse(node, Refused(Reason.BAD_RESPONSE, str(e)))
        self._wake.set()
        return UpstreamError(f"{node.label} of {self.name}: {e}", code="bad_response")

    async def complete(self, request: ChatRequest, model: str) -> Completion:
        node = self._pick(model)
        body, opener = self._seal(node, request, model)
        async with self._post(node, body) as resp:
            raw = await resp.read()
        messages = self._opened(node, opener, raw)
        try:
            opener.end()
        except EnvelopeError as e:
            raise self._bad_reply(node, e) from None
        final = messages[-1]
        if "error" in final:
            raise _node_error(f"{node.label} of {self.name}", final["error"])
        completion = final.get("completion")
        if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
            raise UpstreamError(f"{node.label} of {self.name} answered without choices")
        assert node.attestation is not None
        return Completion(completion, _usage(final.get("usage")), node.attestation.measurement)

    async def stream(
        self, request: ChatRequest, model: str, state: StreamState
    ) -> AsyncIterator[dict[str, Any]]:
        node = self._pick(model)
        assert node.attestation is not None
        state.served_by = node.attestation.measurement
        body, opener = self._seal(node, request, model)
        async with self._post(node, body) as resp:
            try:
                async for data in resp.content.iter_any():
                    for message in self._opened(node, opener, data):
                        if "chunk" in message:
                            chunk = message["chunk"]
                            if isinstance(chunk, dict) and chunk.get("choices"):
                                yield chunk
                        elif "error" in message:
                            raise _node_error(f"{node.label} of {self.name}", message["error"])
                        elif message.get("end"):
                            state.usage = _usage(message.get("usage"))
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise self._http.transport_error(exc) from None
        try:
            opener.end()
        except EnvelopeError as e:
            raise self._bad_reply(node, e) from None


def _usage(data: Any) -> Usage:
    if not isinstance(data, dict):
        return Usage(method="missing")
    try:
        prompt = int(data.get("prompt_tokens") or 0)
        completion = int(data.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return Usage(method="missing")
    if prompt < 0 or completion < 0:
        return Usage(method="missing")
    method = data.get("method")
    return Usage(prompt, completion, method if method in _METHODS else "reported")


def _node_error(node: str, error: Any) -> VeilError:
    """The error a node sealed into its reply, as the same kind of error here. Its message
    is the node's own (Veil's, measured code: never content), cut to 300 characters."""
    if not isinstance(error, dict):
        return UpstreamError(f"{node} reported a malformed error")
    status = error.get("status") if isinstance(error.get("status"), int) else 500
    message = f"{node}: " + str(error.get("message") or "failed")[:300]
    code = error.get("code") if isinstance(error.get("code"), str) else None
    retry = error.get("retry_after")
    retry_after = float(retry) if isinstance(retry, int | float) else None
    if status == 413:
        return BodyTooLarge(message, code=code)
    if status in (400, 404, 422):
        return InvalidRequest(message, code=code)
    if status == 429:
        return RateLimited(message, code=code, retry_after=retry_after)
    if status == 503:
        return UpstreamUnavailable(message, retry_after=retry_after)
    if status == 504:
        return UpstreamTimeout(message)
    return UpstreamError(message)
