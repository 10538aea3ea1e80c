"""Private compute nodes end to end: ``veil serve`` → ``veil node serve`` → a serving
engine on the node's host, with ``veil log serve`` as the transparency log.

Every byte between gateway and node goes through a TCP tap: the prompt's canary must never
be in it. Each way a node can fail verification is refused with its reason, and the request
falls back per routing without the refused node receiving anything.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.local import free_port
from tests.support.nodes import (
    Node,
    Proc,
    StandInNode,
    TcpTap,
    append,
    document,
    fake_measurement,
    first_sealed_request,
    keygen,
    log_key,
    measure,
    node_args,
    open_for_writing,
    serve_log,
    serve_node,
)
from tests.support.partner import client
from tests.support.server import ADMIN_KEY, VeilServer, start_server, usage_row
from tests.support.upstream import Upstream
from veil.attestation.document import SignedAttestation, sign

CANARY = "CANARY-7f3a9c-PRIVATE-NODE"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def _pool(name: str, nodes: list[str], log_url: str, key: str, ids: list[str], **extra: Any) -> str:
    lines = [
        f"  - name: {name}",
        "    type: private_node",
        f"    nodes: [{', '.join(nodes)}]",
        f"    log: {{url: {log_url}, public_key: {key}}}",
        f"    identity_keys: [{', '.join(ids)}]",
        "    refresh: 0.3",
    ]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def _config(pools: str, models: str) -> str:
    return (
        "providers:\n"
        "  - {name: local, type: fake, tier: device}\n"
        + pools
        + "models:\n"
        + "  - {name: here, deployments: [{provider: local, model: echo}]}\n"
        + models
    )


def _nodes(server: VeilServer) -> dict[str, dict[str, Any]]:
    r = httpx.get(server.url + "/admin/nodes", headers=ADMIN)
    assert r.status_code == 200, r.text
    return {f"{n['provider']} {n['url']}": n for n in r.json()["data"]}


def _by_node(server: VeilServer) -> dict[str | None, int]:
    period = time.strftime("%Y-%m", time.gmtime())
    r = httpx.get(
        server.url + "/admin/usage", params={"by": "served_by", "period": period}, headers=ADMIN
    )
    assert r.status_code == 200, r.text
    rows = {row["group"]: row["requests"] for row in r.json()["data"]}
    return rows if sum(rows.values()) == 2 else {}


def _wait_for(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@pytest.fixture
def engine() -> Iterator[Upstream]:
    """The OpenAI-compatible serving engine on the node's host (answers ``echo: …``)."""
    upstream = Upstream()
    upstream.start()
    yield upstream
    upstream.stop()


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"model weights for the measurement " * 100)
    return path


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def _released_node(
    tmp_path: Path, engine: Upstream, weights: Path, procs: list[Proc], name: str = "node"
) -> tuple[Node, str]:
    identity = tmp_path / f"{name}.key"
    public = keygen(identity)
    node = serve_node(tmp_path, name, identity, node_args(engine.base_url, weights))
    procs.append(node.proc)
    return node, public


def test_a_private_request_crosses_the_wire_sealed_and_leaves_nothing_on_the_node(
    tmp_path: Path, engine: Upstream, weights: Path, procs: list[Proc]
) -> None:
    node, public = _released_node(tmp_path, engine, weights, procs)
    released = measure(engine.base_url, weights)
    assert released == node.measurement  # the release build and the running node agree
    logdir = tmp_path / "log"
    append(logdir, fake_measurement("an older release"))
    append(logdir, released, "2.0")
    log = serve_log(logdir)
    procs.append(log)
    tap = TcpTap(node.proc.port)
    pools = _pool("pcc", [tap.url], log.url, log_key(logdir), [public])
    models = "  - {name: big, deployments: [{provider: pcc, model: echo}], fallbacks: [here]}\n"
    server = start_server(tmp_path / "gw", _config(pools, models))
    try:
        sdk = client(server)
        raw = sdk.chat.completions.with_raw_response.create(
            model="big",
            messages=[{"role": "user", "content": f"remember {CANARY}"}],
            user="alice@example.com",
            metadata={"ticket": "T-1"},
        )
        answer = raw.parse()
        assert answer.choices[0].message.content == f"echo: remember {CANARY}"
        assert raw.headers["x-veil-tier"] == "private"
        assert raw.headers["x-veil-node-measurement"] == released

        stream = sdk.chat.completions.create(
            model="big",
            messages=[{"role": "user", "content": f"stream {CANARY}"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == f"echo: stream {CANARY}"
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens > 0

        row = usage_row(server, raw.headers["x-request-id"])
        assert (row["tier"], row["provider"], row["served_by"]) == ("private", "pcc", released)
        assert row["status"] == 200

        # What the gateway saw of the node: attested, proven at entry 1 of a tree of 2.
        [status] = _nodes(server).values()
        assert status["state"] == "attested"
        assert status["measurement"] == released
        assert status["release"]["index"] == 1
        assert status["release"]["version"] == "2.0"
        # Usage reports group by the measurement that served each request.
        report = _wait_for(lambda: _by_node(server))
        assert report == {released: 2}, report
    finally:
        server.stop()

    # The engine on the node's host got the prompt — without who asked.
    assert len(engine.received) == 2
    for received in engine.received:
        assert CANARY in str(received.body["messages"])
        assert "user" not in received.body
        assert "metadata" not in received.body
    # Between gateway and node: ciphertext only, in both directions.
    wire = tap.wire()
    assert tap.posts() == 2
    assert len(wire) > 2000
    assert CANARY.encode() not in wire
    assert b"alice" not in wire
    assert b"remember" not in wire
    assert b"echo:" not in wire
    # The node wrote nothing and logged nothing of it.
    assert open_for_writing(node.proc.process.pid) == []
    assert list(node.root.iterdir()) == []
    assert CANARY not in node.proc.output
    tap.close()


def test_each_bad_node_is_refused_with_its_reason_and_routing_falls_back(
    tmp_path: Path, procs: list[Proc]
) -> None:
    enrolled, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    good, other = fake_measurement("release 1"), fake_measurement("release 2")
    logdir = tmp_path / "log"
    append(logdir, good)
    append(logdir, other)
    log = serve_log(logdir)
    procs.append(log)

    def tampered() -> SignedAttestation:
        # Signed for one released measurement, then edited to claim another released one.
        s = sign(document(good, enrolled), enrolled)
        return SignedAttestation(s.document.replace(good.encode(), other.encode()), s.signature)

    past = int(time.time() * 1000) - 7_200_000
    cases = {
        "bad_signature": tampered,
        "wrong_key": lambda: sign(document(good, stranger), stranger),
        "expired": lambda: sign(document(good, enrolled, issued_ms=past), enrolled),
        "not_in_log": lambda: sign(
            document(fake_measurement("never released"), enrolled), enrolled
        ),
    }
    stand_ins = {}
    for reason, make in cases.items():
        stand_ins[reason] = StandInNode(document=make)
        stand_ins[reason].start()
    key, ident = log_key(logdir), enrolled.public_key().public_bytes_raw().hex()
    pools = "".join(
        _pool(f"pool-{r.replace('_', '-')}", [n.origin], log.url, key, [ident])
        for r, n in stand_ins.items()
    )
    models = "".join(
        f"  - {{name: m-{r.replace('_', '-')}, deployments: [{{provider: pool-{r.replace('_', '-')}, "
        "model: echo}], fallbacks: [here]}\n"
        for r in cases
    )
    server = start_server(tmp_path / "gw", _config(pools, models))
    try:
        nodes = _nodes(server)
        sdk = client(server)
        for reason, stand_in in stand_ins.items():
            name = reason.replace("_", "-")
            status = nodes[f"pool-{name} {stand_in.origin}"]
            assert (status["state"], status["reason"]) == ("refused", reason), status
            raw = sdk.chat.completions.with_raw_response.create(
                model=f"m-{name}", messages=[{"role": "user", "content": CANARY}]
            )
            assert raw.parse().choices[0].message.content == CANARY  # the fallback echoes
            assert raw.headers["x-veil-tier"] == "device"
            assert raw.headers["x-veil-provider"] == "local"
            assert "failed over" in raw.headers["x-veil-route-reason"]
            assert "x-veil-node-measurement" not in raw.headers
            assert stand_in.chats == 0, f"{reason}: a refused node was sent a request"
        metrics = httpx.get(server.url + "/metrics").text
        for reason in cases:
            pool = f"pool-{reason.replace('_', '-')}"
            assert f'veil_node_refusals_total{{provider="{pool}",reason="{reason}"}}' in metrics
    finally:
        server.stop()
        for stand_in in stand_ins.values():
            stand_in.stop()


def test_no_fallback_means_a_503_naming_each_nodes_reason(
    tmp_path: Path, procs: list[Proc]
) -> None:
    enrolled = Ed25519PrivateKey.generate()
    logdir = tmp_path / "log"
    append(logdir, fake_measurement("release"))
    log = serve_log(logdir)
    procs.append(log)
    stand_in = StandInNode(
        document=lambda: sign(document(fake_measurement("unreleased"), enrolled), enrolled)
    )
    stand_in.start()
    ident = enrolled.public_key().public_bytes_raw().hex()
    pools = _pool("pcc", [stand_in.origin, "http://127.0.0.1:9"], log.url, log_key(logdir), [ident])
    models = "  - {name: big, deployments: [{provider: pcc, model: echo}]}\n"
    server = start_server(tmp_path / "gw", _config(pools, models))
    try:
        r = httpx.post(
            server.url + "/v1/chat/completions",
            headers=ADMIN,
            json={"model": "big", "messages": [{"role": "user", "content": CANARY}]},
        )
        assert r.status_code == 503, r.text
        message = r.json()["error"]["message"]
        assert "provider pcc has no attested node (node 1: not_in_log; node 2: unreachable)" in (
            message
        )
        assert "127.0.0.1" not in message  # callers are not told where the nodes are
        assert CANARY not in message
        assert stand_in.chats == 0
    finally:
        server.stop()
        stand_in.stop()


def test_a_forked_or_rolled_back_log_refuses_every_node_until_it_is_consistent_again(
    tmp_path: Path, engine: Upstream, weights: Path, procs: list[Proc]
) -> None:
    node, public = _released_node(tmp_path, engine, weights, procs)
    logdir = tmp_path / "log"
    append(logdir, node.measurement)
    append(logdir, fake_measurement("release 2"))
    append(logdir, fake_measurement("release 3"))
    # An older copy of the same log (size 1), and a fork: same key, same first entry,
    # different history after it.
    older, fork = tmp_path / "older", tmp_path / "fork"
    for copy in (older, fork):
        copy.mkdir()
        for name in ("log_key", "log_key.pub"):
            shutil.copy2(logdir / name, copy / name)
        append(copy, node.measurement)
    for i in range(2):
        append(fork, fake_measurement(f"forked release {i}"))

    port = free_port()
    log = serve_log(logdir, port)
    pools = _pool("pcc", [node.proc.url], log.url, log_key(logdir), [public])
    models = "  - {name: big, deployments: [{provider: pcc, model: echo}], fallbacks: [here]}\n"
    server = start_server(tmp_path / "gw", _config(pools, models))
    sdk = client(server)

    def served_by() -> str:
        raw = sdk.chat.completions.with_raw_response.create(
            model="big", messages=[{"role": "user", "content": "hi"}]
        )
        return str(raw.headers["x-veil-tier"])

    def reason() -> str | None:
        [status] = _nodes(server).values()
        return status["reason"]  # type: ignore[no-any-return]

    try:
        assert served_by() == "private"
        state = tmp_path / "gw" / "attestation" / "pcc.sth.json"
        assert '"tree_size": 3' in state.read_text()
        for directory, refusal in ((older, "rollback"), (fork, "fork")):
            log.stop()
            log = serve_log(directory, port)
            assert _wait_for(lambda refusal=refusal: reason() == refusal), reason()
            assert served_by() == "device"  # fell back; the node got nothing
            assert '"tree_size": 3' in state.read_text()  # the refused head is not kept
        # The honest log, grown by one more release: consistent again, the node is back.
        log.stop()
        append(logdir, fake_measurement("release 4"))
        log = serve_log(logdir, port)
        assert _wait_for(lambda: reason() is None), reason()
        assert served_by() == "private"
        assert '"tree_size": 4' in state.read_text()
    finally:
        server.stop()
        log.stop()

    # The accepted head outlives the gateway: a restart against the older copy is refused.
    log = serve_log(older, port)
    procs.append(log)
    server = start_server(tmp_path / "gw", _config(pools, models))
    try:
        [status] = _nodes(server).values()
        assert status["reason"] == "rollback"
    finally:
        server.stop()


def test_a_replayed_ciphertext_is_refused_by_the_node(
    tmp_path: Path, engine: Upstream, weights: Path, procs: list[Proc]
) -> None:
    node, public = _released_node(tmp_path, engine, weights, procs)
    logdir = tmp_path / "log"
    append(logdir, node.measurement)
    log = serve_log(logdir)
    procs.append(log)
    tap = TcpTap(node.proc.port)
    pools = _pool("pcc", [tap.url], log.url, log_key(logdir), [public])
    models = "  - {name: big, deployments: [{provider: pcc, model: echo}]}\n"
    server = start_server(tmp_path / "gw", _config(pools, models))
    try:
        answer = client(server).chat.completions.create(
            model="big", messages=[{"role": "user", "content": CANARY}]
        )
        assert answer.choices[0].message.content == f"echo: {CANARY}"
    finally:
        server.stop()
    headers, body = first_sealed_request(bytes(tap.up))
    tap.close()
    assert CANARY.encode() not in body
    before = len(engine.received)
    replay = httpx.post(
        node.proc.url + "/node/v1/chat",
        content=body,
        headers={k: headers[k] for k in ("content-type", "x-veil-attestation")},
    )
    assert replay.status_code == 400
    assert replay.json()["error"]["code"] == "replayed"
    assert len(engine.received) == before  # the engine never saw the replay

    # A changed byte does not open at all.
    tampered = body[:-1] + bytes([body[-1] ^ 1])
    r = httpx.post(
        node.proc.url + "/node/v1/chat",
        content=tampered,
        headers={k: headers[k] for k in ("content-type", "x-veil-attestation")},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "key_rejected")


def test_nodes_are_chosen_at_random_and_a_rebooted_node_is_re_attested(
    tmp_path: Path, engine: Upstream, weights: Path, procs: list[Proc]
) -> None:
    first, public_1 = _released_node(tmp_path, engine, weights, procs, "one")
    second, public_2 = _released_node(tmp_path, engine, weights, procs, "two")
    assert first.measurement == second.measurement  # one release, two hosts
    logdir = tmp_path / "log"
    append(logdir, first.measurement)
    log = serve_log(logdir)
    procs.append(log)
    taps = [TcpTap(first.proc.port), TcpTap(second.proc.port)]
    pools = _pool("pcc", [t.url for t in taps], log.url, log_key(logdir), [public_1, public_2])
    models = "  - {name: big, deployments: [{provider: pcc, model: echo}]}\n"
    server = start_server(tmp_path / "gw", _config(pools, models))
    try:
        sdk = client(server)
        for i in range(30):
            answer = sdk.chat.completions.create(
                model="big", messages=[{"role": "user", "content": f"n{i}"}], user="same-user"
            )
            assert answer.choices[0].message.content == f"echo: n{i}"
        counts = [t.posts() for t in taps]
        assert sum(counts) == 30
        assert min(counts) >= 5, counts  # P(fewer than 5 of 30 at random) < 0.0002

        # The first node reboots: new boot keys, a new document. A request sealed to the
        # old key is refused by the node, the gateway re-attests it, and carries on.
        first.proc.stop()
        identity = tmp_path / "one.key"
        rebooted = serve_node(
            tmp_path,
            "one-again",
            identity,
            node_args(engine.base_url, weights),
            port=first.proc.port,
        )
        procs.append(rebooted.proc)
        for i in range(20):
            answer = sdk.chat.completions.create(
                model="big", messages=[{"role": "user", "content": f"r{i}"}]
            )
            assert answer.choices[0].message.content == f"echo: r{i}"
        assert _wait_for(lambda: all(n["state"] == "attested" for n in _nodes(server).values())), (
            _nodes(server)
        )
    finally:
        server.stop()
        for tap in taps:
            tap.close()


def test_node_serve_refuses_unsafe_setups(tmp_path: Path, weights: Path) -> None:
    from tests.support.cli import run

    identity = tmp_path / "id.key"
    keygen(identity)
    remote = run(
        tmp_path,
        "node",
        "serve",
        "--identity",
        str(identity),
        "--upstream",
        "http://10.1.2.3:8000/v1",
        "--upstream-model",
        "m",
        "--model",
        str(weights),
    )
    assert remote.returncode == 2
    assert "not loopback" in remote.stderr
    open_bind = run(tmp_path, "node", "serve", "--identity", str(identity), "--host", "0.0.0.0")
    assert open_bind.returncode == 2
    assert "VEIL_NODE_TOKEN" in open_bind.stderr
    identity.chmod(0o644)
    loose = run(tmp_path, "node", "serve", "--identity", str(identity))
    assert loose.returncode == 2
    assert "chmod 600" in loose.stderr
    again = run(tmp_path, "node", "keygen", "--identity", str(identity))
    assert again.returncode == 2
    assert "exists" in again.stderr


def test_a_node_token_is_required_when_set(
    tmp_path: Path, engine: Upstream, weights: Path, procs: list[Proc]
) -> None:
    identity = tmp_path / "node.key"
    public = keygen(identity)
    node = serve_node(
        tmp_path,
        "node",
        identity,
        node_args(engine.base_url, weights),
        VEIL_NODE_TOKEN="node-secret-token-1234",
    )
    procs.append(node.proc)
    logdir = tmp_path / "log"
    append(logdir, node.measurement)
    log = serve_log(logdir)
    procs.append(log)
    key = log_key(logdir)
    models = "  - {name: big, deployments: [{provider: with-token, model: echo}]}\n"
    models += "  - {name: bare, deployments: [{provider: without, model: echo}]}\n"
    pools = _pool("with-token", [node.proc.url], log.url, key, [public], api_key="env:NODE_TOKEN")
    pools += _pool("without", [node.proc.url], log.url, key, [public])
    server = start_server(
        tmp_path / "gw", _config(pools, models), env={"NODE_TOKEN": "node-secret-token-1234"}
    )
    try:
        ok = httpx.post(
            server.url + "/v1/chat/completions",
            headers=ADMIN,
            json={"model": "big", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert ok.status_code == 200, ok.text
        refused = httpx.post(
            server.url + "/v1/chat/completions",
            headers=ADMIN,
            json={"model": "bare", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert refused.status_code == 502
        assert refused.json()["error"]["code"] == "upstream_auth"
    finally:
        server.stop()


def test_a_node_runs_the_bundled_model_in_process(tmp_path: Path, procs: list[Proc]) -> None:
    identity = tmp_path / "node.key"
    public = keygen(identity)
    node = serve_node(tmp_path, "node", identity, ["--model", "bundled", "--n-ctx", "512"])
    procs.append(node.proc)
    logdir = tmp_path / "log"
    append(logdir, node.measurement)
    log = serve_log(logdir)
    procs.append(log)
    pools = _pool("pcc", [node.proc.url], log.url, log_key(logdir), [public])
    models = "  - {name: big, deployments: [{provider: pcc, model: smollm2-135m-instruct}]}\n"
    models += "  - {name: huge, deployments: [{provider: pcc, model: llama-70b}]}\n"
    server = start_server(tmp_path / "gw", _config(pools, models))
    try:
        sdk = client(server)
        raw = sdk.chat.completions.with_raw_response.create(
            model="big", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=8
        )
        answer = raw.parse()
        assert answer.choices[0].message.content
        assert answer.usage is not None
        assert answer.usage.completion_tokens == 8
        assert raw.headers["x-veil-node-measurement"] == node.measurement
        chunks = list(
            sdk.chat.completions.create(
                model="big",
                messages=[{"role": "user", "content": "Name a fruit."}],
                max_tokens=6,
                stream=True,
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        [status] = _nodes(server).values()
        assert status["model"] == "smollm2-135m-instruct"
        # A deployment naming a model the node does not attest is never sent to it.
        wrong = httpx.post(
            server.url + "/v1/chat/completions",
            headers=ADMIN,
            json={"model": "huge", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert wrong.status_code == 503
        assert (
            "node 1: serves smollm2-135m-instruct, not llama-70b"
            in wrong.json()["error"]["message"]
        )
    finally:
        server.stop()
    assert list(node.root.iterdir()) == []
