"""The device model: one generation at a time, a bounded line, 429 when full, never a hang."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.server import ADMIN_KEY, VeilServer, start_server, usage_row

ONE_AT_A_TIME = """
providers:
  - {name: device, type: llama_cpp, model_path: bundled, max_queue: 0}
"""
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
LONG = {
    "model": "device",
    "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
    "max_tokens": 1000,
    "stream": True,
    "temperature": 0.8,
}


@pytest.fixture(scope="module")
def device_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VeilServer]:
    srv = start_server(tmp_path_factory.mktemp("device") / "home", ONE_AT_A_TIME)
    yield srv
    srv.stop()


def quick(server: VeilServer) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/chat/completions",
        headers=ADMIN,
        json={"model": "device", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=60,
    )


def test_full_queue_answers_429_with_retry_after_and_recovers(device_server: VeilServer) -> None:
    with httpx.stream(
        "POST", device_server.url + "/v1/chat/completions", headers=ADMIN, json=LONG, timeout=60
    ) as busy:
        assert busy.status_code == 200
        lines = busy.iter_lines()
        for _ in range(6):  # generation is under way
            next(lines)
        started = time.monotonic()
        r = quick(device_server)
        assert time.monotonic() - started < 2, "a full queue must answer at once, not hang"
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1
        busy_id = busy.headers["x-request-id"]
    # The caller left mid-stream: generation stops at the next token and frees the model.
    deadline = time.monotonic() + 5
    while (r := quick(device_server)).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.status_code == 200
    row = usage_row(device_server, busy_id)
    assert row["status"] == 499
    assert row["error_code"] == "client_closed"
    assert 0 < row["completion_tokens"] < 1000  # billed for what was delivered
    assert row["prompt_tokens"] > 10


def test_queue_depth_is_a_metric(device_server: VeilServer) -> None:
    text = httpx.get(device_server.url + "/metrics").text
    assert 'veil_queue_depth{provider="device"} 0.0' in text


@pytest.mark.parametrize("stream", [False, True])
def test_context_overflow_is_400_streamed_or_not(device_server: VeilServer, stream: bool) -> None:
    r = httpx.post(
        device_server.url + "/v1/chat/completions",
        headers=ADMIN,
        json={
            "model": "device",
            "messages": [{"role": "user", "content": "word " * 5000}],
            "stream": stream,
        },
        timeout=60,
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert quick(device_server).status_code == 200
