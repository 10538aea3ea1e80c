"""The Anthropic provider end to end: the official OpenAI SDK → `veil serve` → a local
server speaking Anthropic's Messages API. Asserts what Veil sent upstream and what the
caller got back."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import db_path
from tests.support.anthropic_server import TOOL_CALLS, AnthropicServer
from tests.support.local import Received
from tests.support.partner import partner_client
from tests.support.server import ADMIN_KEY, VeilServer, start_server

ANTHROPIC_KEY = "sk-ant-test-secret-0000"
HI = [{"role": "user", "content": "Say hello."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
BEHAVIOURS = [
    "ok",
    "echo",
    "tool",
    "length",
    "stop-seq",
    "cache",
    "no-usage",
    "error-400",
    "error-401",
    "error-429",
    "error-500",
    "error-529",
    "stream-error",
    "early-error",
    "cut",
]


@pytest.fixture(scope="module")
def anthropic() -> Iterator[AnthropicServer]:
    server = AnthropicServer(api_key=ANTHROPIC_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def veil(
    tmp_path_factory: pytest.TempPathFactory, anthropic: AnthropicServer
) -> Iterator[VeilServer]:
    models = "\n".join(
        f"  - {{name: claude-{b}, deployments: [{{provider: claude, model: {b}}}]}}"
        for b in BEHAVIOURS
    )
    # What is under test is the wire translation: personal-data detection (tested on its
    # own) is turned off, so what Veil sends is exactly what the test wrote.
    config = f"""
privacy: {{types: []}}
providers:
  - name: claude
    type: anthropic
    base_url: {anthropic.base_url}
    api_key: env:TEST_ANTHROPIC_KEY
    send_user_pseudonym: true
    timeout: {{connect: 2, read: 10, total: 30}}
  - name: claude-custom
    type: anthropic
    base_url: {anthropic.base_url}/v1
    api_key: env:TEST_ANTHROPIC_KEY
    anthropic_version: "2099-01-01"
    default_max_tokens: 77
    headers:
      X-Api-Key: must-not-be-sent
      Anthropic-Beta: some-beta-2099
      X-Team: env:TEST_ANTHROPIC_KEY
models:
{models}
  - {{name: claude-custom, deployments: [{{provider: claude-custom, model: ok}}]}}
"""
    home = tmp_path_factory.mktemp("veil-anthropic") / "home"
    server = start_server(home, config, env={"TEST_ANTHROPIC_KEY": ANTHROPIC_KEY})
    yield server
    server.stop()


@pytest.fixture
def client(veil: VeilServer) -> Iterator[openai.OpenAI]:
    with partner_client(veil) as sdk:
        yield sdk


def sent(anthropic: AnthropicServer, before: int) -> Received:
    [received] = anthropic.received[before:]
    return received


# --------------------------------------------------------------------------- request


def test_plain_chat_is_sent_as_a_messages_request_with_veils_key(
    client: openai.OpenAI, anthropic: AnthropicServer
) -> None:
    before = len(anthropic.received)
    raw = client.chat.completions.with_raw_response.create(
        model="claude-ok",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "Say hello."},
        ],
    )
    completion = raw.parse()
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Hello from Claude."
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "claude-ok"
    assert completion.id == "chatcmpl-" + raw.headers["x-request-id"]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (21, 7)
    assert completion.usage.total_tokens == 28
    assert (raw.headers["x-veil-tier"], raw.headers["x-veil-provider"]) == ("partner", "claude")

    request = sent(anthropic, before)
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == ANTHROPIC_KEY
    assert ADMIN_KEY not in str(request.headers)  # the caller's key never goes upstream
    assert "authorization" not in request.headers
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "model": "ok",
        "max_tokens": 4096,  # the provider's default_max_tokens: Anthropic requires one
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [{"role": "user", "content": "Say hello."}],
    }


def test_the_user_reaches_anthropic_only_as_the_pipelines_pseudonym(
    client: openai.OpenAI, anthropic: AnthropicServer
) -> None:
    before = len(anthropic.received)
    client.chat.completions.create(model="claude-ok", messages=HI, user="alice@example.com")
    body = sent(anthropic, before).body
    assert set(body["metadata"]) == {"user_id"}
    assert body["metadata"]["user_id"].startswith("veil-")  # send_user_pseudonym: true
    assert "alice" not in json.dumps(body)

    before = len(anthropic.received)
    client.chat.completions.create(model="claude-custom", messages=HI, user="alice@example.com")
    assert "metadata" not in sent(anthropic, before).body  # no pseudonym configured: no user


def test_without_consent_nothing_is_sent(veil: VeilServer, anthropic: AnthropicServer) -> None:
    before = len(anthropic.received)
    with (
        openai.OpenAI(base_url=veil.url + "/v1", api_key=ADMIN_KEY, max_retries=0) as bare,
        pytest.raises(openai.PermissionDeniedError),
    ):
        bare.chat.completions.create(model="claude-ok", messages=HI)
    assert len(anthropic.received) == before


def test_consecutive_messages_of_one_role_are_merged_to_alternate(
    client: openai.OpenAI, anthropic: AnthropicServer
) -> None:
    before = len(anthropic.received)
    completion = client.chat.completions.create(
        model="claude-echo",
        messages=[
            {"role": "user", "content": "first"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
            {"role": "assistant", "content": "one"},
            {"role": "system", "content": "Mid-conversation system note."},
            {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
            {"role": "user", "content": "third"},
        ],
    )
    assert completion.choices[0].message.content == "echo: third"
    assert sent(anthropic, before).body["system"] == "Mid-conversation system note."
    assert sent(anthropic, before).body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {"role": "user", "content": "third"},
    ]


def test_sampling_parameters_map_to_anthropics_names(
    client: openai.OpenAI, anthropic: AnthropicServer
) -> None:
    before = len(anthropic.received)
    client.chat.completions.create(
        model="claude-ok",
        messages=HI,
        temperature=0.5,
        top_p=0.9,
        stop=["END", "STOP"],
        max_tokens=50,
        max_completion_tokens=40,
        n=1,
        presence_penalty=0,
        logprobs=False,
        response_format={"type": "text"},
    )
    body = sent(anthropic, before).body
    assert body["max_tokens"] == 40  # max_completion_tokens wins over the legacy max_tokens
    assert (body["temperature"], body["top_p"]) == (0.5, 0.9)
    assert body["stop_sequences"] == ["END", "STOP"]
    assert "stop" not in body
    assert "n" not in body
    assert "presence_penalty" not in body
    assert "stream" not in body

    before = len(anthropic.received)
    client.chat.completions.create(model="claude-ok", messages=HI, stop="END")
    assert sent(anthropic, before).body["stop_sequences"] == ["END"]


def test_temperature_above_one_is_refused_naming_it(
    client: openai.OpenAI, anthropic: AnthropicServer
) -> None:
    before = len(anthropic.received)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude-ok", messages=HI, temperature=1.5)
    assert info.value.param == "temperature"
    assert "between 0 and 1" in info.value.message
    assert len(anthropic.received) == before  # refused before anything left


@pytest.mark.parametrize(
    ("param", "kwargs"),
    [
        ("logprobs", {"logprobs": True}),
        ("top_logprobs", {"top_logprobs": 3}),
        ("logit_bias", {"logit_bias": {"50256": -100}}),
        ("seed", {"seed": 7}),
        ("presence_penalty", {"presence_penalty": 0.5}),
        ("frequency_penalty", {"frequency_penalty": 0.5}),
        ("response_format", {"response_format": {"type": "json_object"}}),
        (
            "response_format",
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                }
            },
        ),
        ("reasoning_effort", {"reasoning_effort": "high"}),
        ("tools[0].type", {"tools": [{"type": "custom", "custom": {"name": "x"}}]}),
    ],
)
def test_parameters_anthropic_cannot_honour_are_refused(
    client: openai.OpenAI, anthropic: AnthropicServer, param: str, kwargs: dict[str, Any]
) -> None:
    before = len(anthropic.received)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude-ok", messages=HI, **kwargs)
    assert info.value.code == "unsupported_parameter"
    assert info.value.param == param
    assert len(anthropic.received) == before


def test_inline_images_become_base64_blocks_and_urls_are_refused(
    client: openai.OpenAI, anthropic: AnthropicServer
) -> None:
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    before = len(anthropic.received)
    client.chat.completions.create(
        model="claude-ok",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:image/png;base64,{png}", "detail": "low"},
                    },
                ],
            }
        ],
    )
    assert sent(anthropic, before).body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
    ]

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="claude-ok",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                }
            ],
        )
    assert info.value.param == "messages[0].content[1].image_url.url"
    assert len(anthropic.received) == before + 1


# --------------------------------------------------------------------------- tools


def test_tools_and_tool_choice_are_translated(
    client: openai.OpenAI, anthropic: AnthropicServer
) -> None:
    before = len(anthropic.received)
    completion = client.chat.completions.create(
        model="claude-tool",
        messages=[{"role": "user", "content": "Weather and time in Paris?"}],
        tools=[WEATHER_TOOL, {"type": "function", "function": {"name": "get_time"}}],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    body = sent(anthropic, before).body
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        },
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    calls = choice.message.tool_calls or []
    assert [(c.id, c.type, c.function.name) for c in calls] == [
        (id_, "function", name) for id_, name, _ in TOOL_CALLS
    ]
    assert [json.loads(c.function.arguments) for c in calls] == [args for _, _, args in TOOL_CALLS]


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_tool_choice_mapping(
    client: openai.OpenAI,
    anthropic: AnthropicServer,
    tool_choice: Any,
    expected: dict[str, Any],
) -> None:
    before = len(anthropic.received)
    client.chat.completions.create(
        model="claude-ok",
        messages=HI,
        tools=[WEATHER_TOOL],
        tool_choice=tool_choice,
    )
    assert sent(anthropic, before).body["tool_choice"] == expected


def test_tool_calls_and_results_in_the_history_become_tool_use_and_tool_result(
    client: openai.OpenAI, anthropic: AnthropicServer
) -> None:
    before = len(anthropic.received)
    client.chat.completions.create(
        model="claude-ok",
        messages=[
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": ""},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "14:05"}],
            },
            {"role": "user", "content": "Thanks! Summarise."},
        ],
        tools=[WEATHER_TOOL],
    )
    assert sent(anthropic, before).body["messages"] == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18 C, sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "14:05"}],
                },
                {"type": "text", "text": "Thanks! Summarise."},
            ],
        },
    ]


def test_tool_call_arguments_that_are_not_json_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="claude-ok",
            messages=[
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c", "content": "x"},
            ],
        )
    assert info.value.param == "messages[1].tool_calls[0].function.arguments"


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("model", "finish_reason"),
    [("claude-ok", "stop"), ("claude-stop-seq", "stop"), ("claude-length", "length")],
)
def test_stop_reasons_map_to_finish_reasons(
    client: openai.OpenAI, model: str, finish_reason: str
) -> None:
    completion = client.chat.completions.create(model=model, messages=HI)
    assert completion.choices[0].finish_reason == finish_reason
    chunks = list(client.chat.completions.create(model=model, messages=HI, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [
        finish_reason
    ]


def test_cache_tokens_count_as_prompt_tokens(client: openai.OpenAI) -> None:
    usage = client.chat.completions.create(model="claude-cache", messages=HI).usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (21 + 100 + 1000, 7)


def test_answer_without_usage_has_none(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="claude-no-usage", messages=HI)
    assert completion.choices[0].message.content == "Hello from Claude."
    assert completion.usage is None


# --------------------------------------------------------------------------- streaming


def test_stream_deltas_arrive_in_order(client: openai.OpenAI, anthropic: AnthropicServer) -> None:
    before = len(anthropic.received)
    raw = client.chat.completions.with_raw_response.create(
        model="claude-echo",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert sent(anthropic, before).body["stream"] is True
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert deltas == ["echo:", " one", " two", " three"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # not asked for
    assert {c.id for c in chunks} == {"chatcmpl-" + raw.headers["x-request-id"]}
    assert {c.model for c in chunks} == {"claude-echo"}


def test_stream_with_include_usage_ends_with_the_reported_usage(
    veil: VeilServer, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude-ok", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (21, 7)
    row = usage_row(veil.home, raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (21, 7)
    assert (row["token_method"], row["stream"], row["status"]) == ("reported", 1, 200)


def test_streamed_tool_calls_reassemble_by_index(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="claude-tool",
            messages=[{"role": "user", "content": "Weather and time in Paris?"}],
            tools=[WEATHER_TOOL],
            stream=True,
        )
    )
    text = ""
    calls: dict[int, dict[str, str]] = {}
    fragments = 0
    for chunk in chunks:
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            if call.id:
                assert not entry["id"], "the id comes once, in the first fragment"
                entry["id"] = call.id
                assert call.type == "function"
            if call.function and call.function.name:
                entry["name"] += call.function.name
            if call.function and call.function.arguments:
                entry["arguments"] += call.function.arguments
                fragments += 1
    assert text == "Let me check."
    assert sorted(calls) == [0, 1]  # numbered among tool calls, not among content blocks
    assert [(calls[i]["id"], calls[i]["name"]) for i in (0, 1)] == [
        (id_, name) for id_, name, _ in TOOL_CALLS
    ]
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [a for _, _, a in TOOL_CALLS]
    assert fragments > 2  # the arguments did arrive in pieces
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


# --------------------------------------------------------------------------- errors


def test_upstream_400_is_a_400_without_the_upstreams_message(client: openai.OpenAI) -> None:
    secret = "my card is 4111 1111 1111 1111"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="claude-error-400", messages=[{"role": "user", "content": secret}]
        )
    assert info.value.code == "invalid_request_error"
    assert "upstream says no" not in info.value.message
    assert secret not in json.dumps(info.value.body)


def test_upstream_401_is_a_502_upstream_auth(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="claude-error-401", messages=HI)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_auth"


def test_upstream_429_is_a_429_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="claude-error-429", messages=HI)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.code == "rate_limit_error"
    with pytest.raises(openai.RateLimitError) as info:  # also when streaming
        client.chat.completions.create(model="claude-error-429", messages=HI, stream=True)
    assert info.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    ("model", "status"), [("claude-error-529", 503), ("claude-error-500", 502)]
)
def test_overloaded_529_is_a_503_and_500_a_502(
    client: openai.OpenAI, model: str, status: int
) -> None:
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model=model, messages=HI, stream=stream)
        assert info.value.status_code == status
        assert "upstream says no" not in info.value.message


def test_error_event_before_any_content_is_an_http_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="claude-early-error", messages=HI, stream=True)
    assert info.value.status_code == 503
    assert info.value.code == "upstream_unavailable"


def test_error_event_mid_stream_raises_in_the_sdk(veil: VeilServer, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude-stream-error", messages=HI, stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in raw.parse():
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello from"
    assert "overloaded_error" in info.value.message
    row = usage_row(veil.home, raw.headers["x-request-id"])
    assert (row["status"], row["error_code"]) == (503, "upstream_unavailable")
    assert row["prompt_tokens"] == 21  # billed for what was produced
    assert row["completion_tokens"] >= 1


def test_stream_cut_before_message_stop_raises_in_the_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="claude-cut", messages=HI, stream=True)
    with pytest.raises(openai.APIError) as info:
        list(stream)
    assert "closed the stream before it ended" in info.value.message


# --------------------------------------------------------------------------- config


def test_configured_headers_version_base_url_and_default_max_tokens(
    client: openai.OpenAI, anthropic: AnthropicServer
) -> None:
    before = len(anthropic.received)
    client.chat.completions.create(model="claude-custom", messages=HI)
    request = sent(anthropic, before)
    assert request.path == "/v1/messages"  # a base_url ending in /v1 is not doubled
    assert request.headers.getall("x-api-key") == [ANTHROPIC_KEY]  # api_key wins over headers
    assert request.headers["anthropic-version"] == "2099-01-01"
    assert request.headers["anthropic-beta"] == "some-beta-2099"
    assert request.headers["x-team"] == ANTHROPIC_KEY  # env: secrets work in headers
    assert "must-not-be-sent" not in str(request.headers)
    assert request.body["max_tokens"] == 77


def usage_row(home: Path, request_id: str) -> sqlite3.Row:
    for _ in range(100):
        with sqlite3.connect(db_path(home)) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM usage WHERE id = ?", (request_id,)).fetchone()
        if row is not None:
            return row
        time.sleep(0.05)
    raise AssertionError(f"no usage row for {request_id}")
