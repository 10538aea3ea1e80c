"""The OpenAI provider end to end: the official SDK → `veil serve` → a local OpenAI.

OpenAI is a partner: every request says ``store: false`` (whatever the caller asked) and
carries Veil's key and the configured organization and project, never the caller's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from tests.support.openai_server import TOOL_CALLS, USAGE, OpenAIServer, function_calls
from tests.support.partner import assert_error_mapped, over_upstream_errors, partner_client
from tests.support.server import ADMIN_KEY, VeilServer, start_server
from veil.chat import ChatRequest
from veil.config import OpenAICompatibleProviderConfig, OpenAIProviderConfig
from veil.providers.openai import OpenAIProvider
from veil.providers.openai_compatible import OpenAICompatibleProvider

OPENAI_KEY = "sk-openai-test-key-0123456789"
BEHAVIOURS = ["ok", "echo", "tools", "length", "cut"]
ERRORS = [400, 401, 403, 429, 500, 503]
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIServer]:
    server = OpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def veil(tmp_path_factory: pytest.TempPathFactory, upstream: OpenAIServer) -> Iterator[VeilServer]:
    names = BEHAVIOURS + [f"error-{s}" for s in ERRORS]
    models = "\n".join(
        f"  - {{name: openai-{n}, deployments: [{{provider: oai, model: {n}}}]}}" for n in names
    )
    config = f"""
providers:
  - name: oai
    type: openai
    base_url: "{upstream.openai_url}"
    api_key: env:TEST_OPENAI_KEY
    organization: org-veil-test
    project: proj_veil_test
    timeout: {{connect: 2, read: 5, total: 30}}
  - name: oai-pseudonym
    type: openai
    base_url: "{upstream.openai_url}"
    api_key: env:TEST_OPENAI_KEY
    send_user_pseudonym: true
models:
{models}
  - {{name: openai-pseudonym, deployments: [{{provider: oai-pseudonym, model: ok}}]}}
"""
    home = tmp_path_factory.mktemp("veil-openai") / "home"
    server = start_server(home, config, env={"TEST_OPENAI_KEY": OPENAI_KEY})
    yield server
    server.stop()


@pytest.fixture
def client(veil: VeilServer) -> Iterator[openai.OpenAI]:
    with partner_client(veil) as sdk:
        yield sdk


def test_request_says_store_false_and_carries_veils_credentials(
    client: openai.OpenAI, upstream: OpenAIServer
) -> None:
    got, raw = upstream.capture(
        lambda: client.chat.completions.with_raw_response.create(
            model="openai-ok",
            messages=HI,
            temperature=0.3,
            store=True,  # the caller asks; Veil never lets a partner keep a conversation
            metadata={"team": "search"},
            user="someone",
        )
    )
    completion = raw.parse()
    assert got.path == "/v1/chat/completions"
    assert got.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert got.headers["openai-organization"] == "org-veil-test"
    assert got.headers["openai-project"] == "proj_veil_test"
    assert ADMIN_KEY not in str(got.headers)
    assert got.body["store"] is False
    assert "metadata" not in got.body  # OpenAI refuses metadata without store
    assert "user" not in got.body  # no pseudonym configured: no user at all
    assert got.body["model"] == "ok"
    assert got.body["temperature"] == 0.3
    assert got.body["messages"] == HI
    assert completion.choices[0].message.content == "Hello from upstream."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "openai-ok"
    assert completion.usage is not None
    assert completion.usage.total_tokens == USAGE["total_tokens"]
    assert (raw.headers["x-veil-tier"], raw.headers["x-veil-provider"]) == ("partner", "oai")


def test_a_user_pseudonym_is_forwarded_when_the_provider_wants_one(
    client: openai.OpenAI, upstream: OpenAIServer
) -> None:
    got, _ = upstream.capture(
        lambda: client.chat.completions.create(
            model="openai-pseudonym", messages=HI, user="alice@example.com"
        )
    )
    assert isinstance(got.body["user"], str)
    assert got.body["user"]
    assert "alice" not in got.body["user"]
    assert "openai-organization" not in got.headers  # not configured for this provider


def test_stream_with_usage(client: openai.OpenAI, upstream: OpenAIServer) -> None:
    got, chunks = upstream.capture(
        lambda: list(
            client.chat.completions.create(
                model="openai-echo",
                messages=[{"role": "user", "content": "one two three"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    )
    assert got.body["stream"] is True
    assert got.body["stream_options"] == {"include_usage": True}
    assert got.body["store"] is False
    content = [c for c in chunks if c.choices]
    deltas = [c.choices[0].delta.content for c in content if c.choices[0].delta.content]
    assert deltas == ["echo:", " one", " two", " three"]
    assert content[0].choices[0].delta.role == "assistant"
    assert content[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == USAGE["prompt_tokens"]
    assert chunks[-1].usage.completion_tokens == USAGE["completion_tokens"]


def test_stream_without_include_usage_still_meters(
    client: openai.OpenAI, upstream: OpenAIServer
) -> None:
    got, chunks = upstream.capture(
        lambda: list(client.chat.completions.create(model="openai-ok", messages=HI, stream=True))
    )
    assert got.body["stream_options"] == {"include_usage": True}  # Veil always meters
    assert all(c.choices and c.usage is None for c in chunks)


def test_tool_calls_pass_through(client: openai.OpenAI, upstream: OpenAIServer) -> None:
    tool: ChatCompletionFunctionToolParam = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {}},
    }
    got, completion = upstream.capture(
        lambda: client.chat.completions.create(
            model="openai-tools",
            messages=HI,
            tools=[tool],
            tool_choice="required",
        )
    )
    assert got.body["tools"] == [tool]
    assert got.body["tool_choice"] == "required"
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [
        (c.id, c.function.name, c.function.arguments) for c in function_calls(choice.message)
    ] == (TOOL_CALLS)


def test_streamed_tool_calls_reassemble(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="openai-tools", messages=HI, stream=True))
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        for call in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(call.index, ["", "", ""])
            entry[0] += call.id or ""
            entry[1] += (call.function and call.function.name) or ""
            entry[2] += (call.function and call.function.arguments) or ""
    assert [tuple(calls[i]) for i in sorted(calls)] == TOOL_CALLS
    assert json.loads(calls[0][2]) == {"unit": "celsius", "days": 2}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_length_finish_reason(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="openai-length", messages=HI, max_tokens=3)
    assert completion.choices[0].finish_reason == "length"


@over_upstream_errors("test_error", "test_429")
def test_upstream_errors_are_mapped_without_their_message(
    client: openai.OpenAI, status: int, error: type[openai.APIStatusError], code: str, stream: bool
) -> None:
    err = assert_error_mapped(
        client, f"openai-error-{status}", status, error, code, stream, "upstream says no"
    )
    if status == 429:
        assert err.response.headers["retry-after"] == "7"


def test_truncated_stream_is_an_error(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="openai-cut", messages=HI, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


# --------------------------------------------------------------------------- units


def _request(**fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "m", "messages": HI} | fields)


def test_openai_body_policy() -> None:
    provider = OpenAIProvider(
        OpenAIProviderConfig(type="openai", name="o", api_key="k", organization="org")
    )
    body = provider._body(
        _request(store=True, metadata={"a": "b"}, user="veil-x", safety_identifier="s"), "gpt"
    )
    assert body["store"] is False
    assert "metadata" not in body
    assert "safety_identifier" not in body
    assert body["user"] == "veil-x"  # the pipeline decided it may go
    assert "user" not in provider._body(_request(), "gpt")
    assert provider._headers["openai-organization"] == "org"
    assert "openai-project" not in provider._headers


def test_openai_compatible_keeps_its_behaviour() -> None:
    provider = OpenAICompatibleProvider(
        OpenAICompatibleProviderConfig(
            type="openai_compatible", name="c", base_url="http://127.0.0.1:1/v1", api_key="k"
        )
    )
    body = provider._body(
        _request(
            stream=True,
            stream_options={"include_usage": False},
            user="veil-x",
            safety_identifier="s",
            store=True,
            metadata={"a": "b"},
        ),
        "llama",
    )
    assert body["stream_options"] == {"include_usage": True}
    assert "safety_identifier" not in body
    assert body["user"] == "veil-x"
    assert body["store"] is True  # not a partner: no store policy of its own
    assert body["metadata"] == {"a": "b"}
    assert provider._headers["authorization"] == "Bearer k"
