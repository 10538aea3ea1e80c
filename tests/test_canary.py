"""No content at rest: canary strings sent through every path are never written anywhere.

Each canary is unique to this run. After the requests, the gateway is stopped (so every
buffer is flushed) and its whole ``$VEIL_HOME`` — the database with its WAL, the admin key,
anything else — and everything the server printed are searched for them.
"""

from __future__ import annotations

import socket
import sqlite3
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import UPSTREAM_KEY, main_config
from tests.support.server import ADMIN_KEY, VeilServer, start_server
from tests.support.upstream import Upstream


def canary(tag: str) -> str:
    return f"CANARY-{tag}-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def canary_server(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[VeilServer]:
    home = tmp_path_factory.mktemp("canary") / "home"
    srv = start_server(home, main_config(upstream), env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    yield srv
    srv.stop()


def everything_written(server: VeilServer) -> bytes:
    blobs = [server.log_path.read_bytes()]
    for path in server.home.rglob("*"):
        if path.is_file():
            blobs.append(path.read_bytes())
    return b"\n".join(blobs)


def test_canaries_never_reach_disk_db_or_logs(
    canary_server: VeilServer, request: pytest.FixtureRequest
) -> None:
    url = canary_server.url
    client = openai.OpenAI(base_url=url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=60)
    request.addfinalizer(client.close)
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    sent: list[str] = []

    def say(tag: str) -> list[dict[str, str]]:
        c = canary(tag)
        sent.append(c)
        return [
            {"role": "system", "content": f"system {c}"},
            {"role": "user", "content": f"{c} tell me"},
        ]

    # Success: on the device (streamed and not), upstream, and the fake provider.
    client.chat.completions.create(model="device", messages=say("device"), max_tokens=8)
    list(
        client.chat.completions.create(
            model="device", messages=say("device-stream"), max_tokens=8, stream=True
        )
    )
    answer = client.chat.completions.create(model="private-echo", messages=say("upstream"))
    assert sent[-1] in (answer.choices[0].message.content or "")  # the echo did carry it
    client.chat.completions.create(
        model="fake/echo", messages=say("fake"), user=canary("user-field")
    )

    # Upstream errors — the test upstream quotes the prompt back in its error message.
    for model in ("private-400", "private-500", "unreachable", "fake/error-500"):
        with pytest.raises(openai.APIError) as info:
            client.chat.completions.create(model=model, messages=say(model))
        assert "CANARY" not in str(info.value)
    with pytest.raises(openai.APIError) as info:
        list(client.chat.completions.create(model="private-cut", messages=say("cut"), stream=True))
    assert "CANARY" not in str(info.value)

    # A bug whose exception message quotes the prompt: 500 with a request id, nothing logged.
    r = httpx.post(
        url + "/v1/chat/completions",
        headers=admin,
        json={"model": "fake/crash", "messages": say("crash")},
    )
    assert r.status_code == 500
    assert "CANARY" not in r.text
    assert r.headers["x-request-id"] in r.json()["error"]["message"]
    r = httpx.post(
        url + "/v1/chat/completions",
        headers=admin,
        json={"model": "fake/crash", "messages": say("crash-stream"), "stream": True},
    )
    assert r.status_code == 200  # the stream had started; it ends without [DONE]
    assert "[DONE]" not in r.text

    # Invalid requests: the canary is in a bad value, a bad field name, or broken JSON.
    bad_bodies = [
        {"model": "device", "messages": say("bad-temp"), "temperature": canary("temp-value")},
        {
            "model": "device",
            "messages": [*say("bad-role"), {"role": canary("role"), "content": "x"}],
        },
        {"model": "device", "messages": say("extra"), canary("field-name"): 1},
    ]
    for body in bad_bodies:
        r = httpx.post(url + "/v1/chat/completions", headers=admin, json=body)
        assert r.status_code in (400, 404)
        assert "CANARY" not in r.text  # errors name fields, never echo values
    # An unknown model's name is echoed back (it is an identifier the caller chose, and the
    # error is useless without it) — but like everything else it is not stored.
    name = canary("model-name")
    sent.append(name)
    r = httpx.post(
        url + "/v1/chat/completions", headers=admin, json={"model": name, "messages": say("m")}
    )
    assert r.status_code == 404
    assert name in r.json()["error"]["message"]
    broken = canary("broken-json")
    sent.append(broken)
    r = httpx.post(
        url + "/v1/chat/completions",
        headers=admin,
        content=f'{{"model": "{broken}", "mess'.encode(),
    )
    assert r.status_code == 400
    assert broken not in r.text

    # Client disconnects mid-stream (device and a slow fake stream).
    for model in ("device", "fake/slow"):
        words = say(f"disconnect-{model}")
        with httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            headers=admin,
            json={"model": model, "messages": words, "stream": True, "max_tokens": 200},
            timeout=30,
        ) as resp:
            assert resp.status_code == 200
            for i, _line in enumerate(resp.iter_lines()):
                if i >= 3:
                    break  # leave with the answer half-sent

    # A raw socket that sends half a body and hangs up.
    half = canary("half-body")
    sent.append(half)
    with socket.create_connection(("127.0.0.1", canary_server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {ADMIN_KEY}\r\ncontent-length: 500\r\n\r\n".encode()
            + f'{{"model": "device", "messages": [{{"role": "user", "content": "{half}'.encode()
        )

    assert httpx.get(url + "/healthz").status_code == 200
    canary_server.stop()

    assert "unhandled RuntimeError" in canary_server.log  # the bugs were logged, as metadata
    written = everything_written(canary_server)
    assert b"CANARY" not in written, [c for c in sent if c.encode() in written] or "a canary"
    rows = (
        sqlite3.connect(canary_server.home / "veil.db")
        .execute("SELECT count(*) FROM usage")
        .fetchone()[0]
    )
    assert rows >= 15  # the requests were metered, as metadata


def test_usage_table_has_no_text_columns_for_content() -> None:
    from veil.store.models import Usage

    assert not {"prompt", "completion", "content", "messages", "text"} & set(
        Usage.__table__.columns.keys()
    )
