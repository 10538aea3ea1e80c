"""The OpenAI-compatible API end to end: the official SDK against a `veil serve` process."""

from __future__ import annotations

import json
import sqlite3

import httpx
import openai
import pytest

from tests.conftest import UPSTREAM_KEY, db_path
from tests.support.server import VeilServer
from tests.support.upstream import Upstream

ROUTE_HEADERS = (
    "x-request-id",
    "x-veil-tier",
    "x-veil-provider",
    "x-veil-model",
    "x-veil-route-reason",
)
HI = [{"role": "user", "content": "Say hello in one short sentence."}]


def assert_route_headers(headers: httpx.Headers | dict[str, str]) -> None:
    for name in ROUTE_HEADERS:
        assert headers.get(name), f"missing {name}"


def test_models_lists_device_auto_and_configured_models(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"smollm2-135m-instruct", "auto", "device", "private-ok", "fake/echo"} <= ids
    assert client.models.retrieve("private").id == "private"


def test_device_chat_non_streamed(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="device", messages=HI, max_tokens=12
    )
    completion = raw.parse()
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.model == "smollm2-135m-instruct"
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 12
    assert completion.usage.prompt_tokens > 5
    assert raw.headers["x-veil-tier"] == "device"
    assert raw.headers["x-veil-provider"] == "device"
    assert completion.id == "chatcmpl-" + raw.headers["x-request-id"]
    assert_route_headers(raw.headers)


def test_device_chat_streamed_with_usage(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=HI,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-veil-route-reason"].startswith("auto")
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert 0 < chunks[-1].usage.completion_tokens <= 16
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="device", messages=HI, max_tokens=4, stream=True)
    )
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_max_completion_tokens_is_honoured(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="device", messages=HI, max_completion_tokens=3, temperature=0
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens <= 3
    assert completion.choices[0].finish_reason == "length"


def test_seed_and_sampling_parameters_are_honoured(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str | None:
        return (
            client.chat.completions.create(
                model="device", messages=HI, max_tokens=24, temperature=1.5, top_p=0.95, seed=seed
            )
            .choices[0]
            .message.content
        )

    assert sample(1234) == sample(1234)
    answers = {sample(s) for s in (1, 2, 3, 4)}
    assert len(answers) > 1  # with temperature 1.5 different seeds do differ


def test_stop_sequence_ends_the_answer(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    free = client.chat.completions.create(
        model="device", messages=messages, max_tokens=40, temperature=0
    )
    text = free.choices[0].message.content or ""
    assert "," in text, text
    stopped = client.chat.completions.create(
        model="device", messages=messages, max_tokens=40, temperature=0, stop=[","]
    )
    assert stopped.choices[0].message.content == text.split(",")[0]
    assert stopped.choices[0].finish_reason == "stop"


def test_openai_compatible_upstream_non_streamed(client: openai.OpenAI, upstream: Upstream) -> None:
    before = len(upstream.received)
    raw = client.chat.completions.with_raw_response.create(
        model="private", messages=HI, user="alice@example.com", temperature=0.3
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from upstream."
    assert completion.model == "private-ok"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 16
    assert (
        raw.headers["x-veil-tier"],
        raw.headers["x-veil-provider"],
        raw.headers["x-veil-model"],
    ) == (
        "private",
        "upstream",
        "ok",
    )
    [sent] = upstream.received[before:]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "ok"
    assert sent.body["temperature"] == 0.3
    assert "user" not in sent.body  # the caller's identity is not forwarded
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"  # Veil's key, not the caller's


def test_openai_compatible_stream_is_passed_through_chunk_by_chunk(
    client: openai.OpenAI, upstream: Upstream
) -> None:
    before = len(upstream.received)
    chunks = list(
        client.chat.completions.create(
            model="private-echo",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
        )
    )
    [sent] = upstream.received[before:]
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}  # Veil always meters
    deltas = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert deltas == ["echo:", " one", " two", " three"]
    assert all(c.usage is None for c in chunks)  # the caller did not ask for usage
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_usage_rows_are_written_with_metadata_only(
    server: VeilServer, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(model="private-echo", messages=HI)
    request_id = raw.headers["x-request-id"]
    row = None
    for _ in range(50):
        with sqlite3.connect(db_path(server.home)) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM usage WHERE id = ?", (request_id,)).fetchone()
        if row is not None:
            break
        import time

        time.sleep(0.1)
    assert row is not None
    # A private node is off the device: the request as sent (JSON, identity stripped).
    assert 60 < row["bytes_out"] < 400
    assert dict(row) | {"created_at": None, "latency_ms": None, "bytes_out": None} == {
        "id": request_id,
        "created_at": None,
        "tenant": "admin",
        "user_hash": None,
        "key_id": None,
        "tier": "private",
        "provider": "upstream",
        "model": "private-echo",
        "stream": 0,
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "token_method": "reported",
        "latency_ms": None,
        "status": 200,
        "error_code": None,
        "partner": None,
        "cloud": None,
        "policy": "policy ok",
        "consent": None,
        "redactions": None,
        "category": None,  # a named model: the task classifier did not run
        "difficulty": None,
        "attempts": 1,
        "billed": 0,  # no prices configured: nothing to bill
        "cost": 0,
        "served_by": None,  # not a private node
        "moderation": None,  # safety is off by default
        "bytes_out": None,
    }


def test_health_ready_metrics_and_openapi(server: VeilServer, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="private-ok", messages=HI)
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["status"] == "ready"
    assert ready["checks"]["provider:device"] is True
    metrics = httpx.get(server.url + "/metrics").text
    assert (
        'veil_requests_total{model="private-ok",provider="upstream",status="200",tier="private"}'
        in metrics
    )
    assert "veil_request_duration_seconds_bucket" in metrics
    assert 'veil_queue_depth{provider="device"}' in metrics
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/v1/chat/completions" in spec["paths"]
    assert "ChatRequest" in spec["components"]["schemas"]
    assert spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"][
        "application/json"
    ]


def test_cli_style_raw_http_also_gets_route_headers(
    server: VeilServer, admin_headers: dict[str, str]
) -> None:
    r = httpx.post(
        server.url + "/v1/chat/completions",
        headers=admin_headers,
        content=json.dumps({"model": "fake/echo", "messages": HI}),
    )
    assert r.status_code == 200
    assert_route_headers(r.headers)
    assert r.json()["choices"][0]["message"]["content"] == "Say hello in one short sentence."


@pytest.mark.parametrize("model", ["fake/echo", "private-echo"])
def test_assistant_and_system_messages_and_content_parts(client: openai.OpenAI, model: str) -> None:
    completion = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "first"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second part"}]},
        ],
    )
    assert "second" in (completion.choices[0].message.content or "")


def test_configured_headers_take_env_secrets_and_never_duplicate_auth(
    client: openai.OpenAI, upstream: Upstream
) -> None:
    before = len(upstream.received)
    client.chat.completions.create(model="private-headers", messages=HI)
    [sent] = upstream.received[before:]
    assert sent.headers["X-Team"] == UPSTREAM_KEY
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "must-not-be-sent" not in str(sent.headers)


def test_aliases_and_auto_name_what_they_resolve_to(client: openai.OpenAI) -> None:
    listed = {m.id: m.owned_by for m in client.models.list()}
    assert listed["device"] == "veil (smollm2-135m-instruct)"
    assert listed["auto"] == "veil (routed by task)"
    assert client.models.retrieve("auto").owned_by == listed["auto"]
    assert client.models.retrieve("private").owned_by == "veil (private-ok)"
    assert client.models.retrieve("private-ok").owned_by == "upstream"


def test_device_refuses_parameters_it_cannot_honour(client: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="device", messages=HI, tools=[tool])  # type: ignore[list-item]
    assert info.value.code == "unsupported_parameter"
    assert info.value.param == "tools"


def test_database_is_readable_by_its_owner_only(server: VeilServer) -> None:
    import stat

    assert stat.S_IMODE(db_path(server.home).stat().st_mode) == 0o600
