"""The Gemini provider end to end: the official OpenAI SDK → `veil serve` → a local Gemini.

Each test asserts both sides: what Veil sent to Gemini (URL, key header, the translated
body) and what the OpenAI client got back (content, finish reason, usage, stream deltas,
tool calls, errors).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any, Literal, cast

import openai
import pytest
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
)

from tests.support.gemini_server import (
    OUTPUT_TOKENS,
    PROMPT_TOKENS,
    SIGNATURE,
    THOUGHT_TOKENS,
    GeminiServer,
)
from tests.support.openai_server import function_calls
from tests.support.partner import assert_error_mapped, over_upstream_errors, partner_client
from tests.support.server import ADMIN_KEY, VeilServer, start_server
from veil.chat import ChatRequest
from veil.config import GeminiProviderConfig
from veil.errors import InvalidRequest
from veil.providers.gemini import SKIP_SIGNATURE, GeminiProvider, gemini_error_code

GEMINI_KEY = "gemini-test-key-0123456789"
BEHAVIOURS = ["ok", "echo", "tools", "max-tokens", "safety", "blocked", "cut"]
ERRORS = [400, 401, 403, 429, 500, 503]
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
TIME_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture(scope="module")
def gemini() -> Iterator[GeminiServer]:
    server = GeminiServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def veil(tmp_path_factory: pytest.TempPathFactory, gemini: GeminiServer) -> Iterator[VeilServer]:
    names = BEHAVIOURS + [f"error-{s}" for s in ERRORS]
    models = "\n".join(
        f"  - {{name: gemini-{n}, deployments: [{{provider: gem, model: {n}}}]}}" for n in names
    )
    config = f"""
providers:
  - name: gem
    type: gemini
    base_url: "{gemini.base_url}"
    api_key: env:TEST_GEMINI_KEY
    timeout: {{connect: 2, read: 5, total: 30}}
models:
{models}
"""
    home = tmp_path_factory.mktemp("veil-gemini") / "home"
    server = start_server(home, config, env={"TEST_GEMINI_KEY": GEMINI_KEY})
    yield server
    server.stop()


@pytest.fixture
def client(veil: VeilServer) -> Iterator[openai.OpenAI]:
    with partner_client(veil) as sdk:
        yield sdk


# --------------------------------------------------------------------------- answers


def test_chat_is_translated_to_generate_content(
    client: openai.OpenAI, gemini: GeminiServer
) -> None:
    got, raw = gemini.capture(
        lambda: client.chat.completions.with_raw_response.create(
            model="gemini-ok",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Be kind."}]},
                {"role": "user", "content": "first"},
                {"role": "user", "content": [{"type": "text", "text": "second"}]},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "third"},
            ],
            temperature=0.4,
            top_p=0.9,
            max_completion_tokens=50,
            stop=["END"],
            seed=7,
            presence_penalty=0.5,
            user="alice@example.com",
            store=True,
            metadata={"k": "v"},
        ),
    )
    completion = raw.parse()
    assert got.path == "/v1beta/models/ok:generateContent"
    assert got.query == {}
    assert got.headers["x-goog-api-key"] == GEMINI_KEY  # Veil's configured key
    assert "authorization" not in got.headers
    assert ADMIN_KEY not in str(got.headers)  # never the caller's bearer
    assert got.body == {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Be kind."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "first"}, {"text": "second"}]},
            {"role": "model", "parts": [{"text": "an answer"}]},
            {"role": "user", "parts": [{"text": "third"}]},
        ],
        "generationConfig": {
            "temperature": 0.4,
            "topP": 0.9,
            "maxOutputTokens": 50,
            "stopSequences": ["END"],
            "seed": 7,
            "presencePenalty": 0.5,
        },
    }  # no user, store or metadata: Gemini has no such fields
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Hello from Gemini, friend."  # no thoughts
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gemini-ok"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    # Thinking tokens are billed as output, so they are counted as completion tokens.
    assert completion.usage.completion_tokens == OUTPUT_TOKENS + THOUGHT_TOKENS
    assert raw.headers["x-veil-provider"] == "gem"
    assert raw.headers["x-veil-tier"] == "partner"


def test_stream_deltas_in_order_with_usage(client: openai.OpenAI, gemini: GeminiServer) -> None:
    got, stream = gemini.capture(
        lambda: list(
            client.chat.completions.create(
                model="gemini-echo",
                messages=[{"role": "user", "content": "one two three"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        ),
    )
    assert got.path == "/v1beta/models/echo:streamGenerateContent"
    assert got.query == {"alt": "sse"}
    assert got.headers["x-goog-api-key"] == GEMINI_KEY
    assert "stream" not in got.body
    assert "stream_options" not in got.body
    content = [c for c in stream if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in content if c.choices[0].delta.content]
    assert deltas == ["echo:", " one", " two", " three"]
    assert [c.choices[0].finish_reason for c in content][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    assert stream[-1].choices == []
    assert stream[-1].usage is not None
    assert stream[-1].usage.prompt_tokens == PROMPT_TOKENS
    assert stream[-1].usage.completion_tokens == OUTPUT_TOKENS + THOUGHT_TOKENS
    assert len({c.id for c in stream}) == 1


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="gemini-ok", messages=HI, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "Hello from Gemini, friend."


@pytest.mark.parametrize(
    ("model", "finish_reason"),
    [("gemini-max-tokens", "length"), ("gemini-safety", "content_filter")],
)
@pytest.mark.parametrize("stream", [False, True])
def test_finish_reasons_are_mapped(
    client: openai.OpenAI, model: str, finish_reason: str, stream: bool
) -> None:
    if stream:
        chunks = list(client.chat.completions.create(model=model, messages=HI, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices[0].finish_reason == finish_reason
    else:
        completion = client.chat.completions.create(model=model, messages=HI)
        assert completion.choices[0].finish_reason == finish_reason
        if finish_reason == "content_filter":
            assert not completion.choices[0].message.content


# --------------------------------------------------------------------------- tools


def test_tools_and_tool_choice_are_declared(client: openai.OpenAI, gemini: GeminiServer) -> None:
    got, completion = gemini.capture(
        lambda: client.chat.completions.create(
            model="gemini-tools",
            messages=[{"role": "user", "content": "What is the weather?"}],
            tools=[WEATHER_TOOL, TIME_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        ),
    )
    assert got.body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parametersJsonSchema": WEATHER_TOOL["function"].get("parameters"),
                },
                {"name": "get_time", "parametersJsonSchema": {"type": "object", "properties": {}}},
            ]
        }
    ]
    assert got.body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    calls = function_calls(choice.message)
    assert [c.id for c in calls] == ["call_0", "call_1"]
    assert [c.type for c in calls] == ["function", "function"]
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"unit": "celsius", "days": 2}
    assert json.loads(calls[1].function.arguments) == {"zone": "utc"}
    # Gemini 3 needs the signature back: it travels with the call, as Google's own
    # OpenAI-compatible endpoint does it.
    assert (calls[0].model_extra or {})["extra_content"] == {
        "google": {"thought_signature": SIGNATURE}
    }
    assert "extra_content" not in (calls[1].model_extra or {})


@pytest.mark.parametrize(
    ("tool_choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
    ],
)
def test_tool_choice_modes(
    client: openai.OpenAI,
    gemini: GeminiServer,
    tool_choice: Literal["auto", "none", "required"],
    config: dict[str, Any],
) -> None:
    got, _ = gemini.capture(
        lambda: client.chat.completions.create(
            model="gemini-ok",
            messages=HI,
            tools=[WEATHER_TOOL],
            tool_choice=tool_choice,
        ),
    )
    assert got.body["toolConfig"] == {"functionCallingConfig": config}


def test_tool_results_go_back_as_function_responses(
    client: openai.OpenAI, gemini: GeminiServer
) -> None:
    first = client.chat.completions.create(
        model="gemini-tools", messages=[{"role": "user", "content": "Weather?"}]
    )
    assistant = cast(
        "ChatCompletionAssistantMessageParam",
        first.choices[0].message.model_dump(exclude_none=True),
    )
    got, second = gemini.capture(
        lambda: client.chat.completions.create(
            model="gemini-tools",
            messages=[
                {"role": "user", "content": "Weather?"},
                assistant,
                {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 21}'},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "other",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": ""},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "other", "content": "[1, 2]"},
                {"role": "user", "content": "Thanks; and tomorrow?"},
            ],
            tools=[WEATHER_TOOL, TIME_TOOL],
        ),
    )
    assert got.body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Let me check."},
                {
                    "functionCall": {
                        "name": "get_weather",
                        "args": {"unit": "celsius", "days": 2},
                    },
                    "thoughtSignature": SIGNATURE,  # as Gemini sent it
                },
                {"functionCall": {"name": "get_time", "args": {"zone": "utc"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "get_time", "response": {"content": "sunny"}}},
            ],
        },
        {
            "role": "model",
            "parts": [
                # A call Gemini never signed gets Google's documented placeholder.
                {
                    "functionCall": {"name": "get_time", "args": {}},
                    "thoughtSignature": SKIP_SIGNATURE,
                }
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_time", "response": {"content": [1, 2]}}},
                {"text": "Thanks; and tomorrow?"},
            ],
        },
    ]
    # New call ids continue after those already in the conversation: they stay unique.
    assert [c.id for c in function_calls(second.choices[0].message)] == ["call_3", "call_4"]


def test_streamed_tool_calls_reassemble(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gemini-tools",
            messages=[{"role": "user", "content": "Weather?"}],
            tools=[WEATHER_TOOL, TIME_TOOL],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in content) == "Let me check."
    calls: dict[int, dict[str, str]] = {}
    for chunk in content:
        for call in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.id or ""
            entry["name"] += (call.function and call.function.name) or ""
            entry["arguments"] += (call.function and call.function.arguments) or ""
    assert calls == {
        0: {
            "id": "call_0",
            "name": "get_weather",
            "arguments": json.dumps({"unit": "celsius", "days": 2}, separators=(",", ":")),
        },
        1: {
            "id": "call_1",
            "name": "get_time",
            "arguments": json.dumps({"zone": "utc"}, separators=(",", ":")),
        },
    }
    assert content[-1].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 9 + THOUGHT_TOKENS


def test_data_url_images_are_sent_inline(client: openai.OpenAI, gemini: GeminiServer) -> None:
    got, _ = gemini.capture(
        lambda: client.chat.completions.create(
            model="gemini-ok",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0K"},
                        },
                    ],
                }
            ],
        ),
    )
    assert got.body["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "What is this?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
            ],
        }
    ]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"reasoning_effort": "low"}, "reasoning_effort"),
        ({"parallel_tool_calls": False, "tools": [WEATHER_TOOL]}, "parallel_tool_calls"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                        ],
                    }
                ]
            },
            "messages[0].content[1]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "x": 1}]}]},
            "messages[0].content[0]",
        ),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
        ),
    ],
)
def test_what_gemini_cannot_do_is_refused_naming_the_field(
    client: openai.OpenAI, gemini: GeminiServer, kwargs: dict[str, Any], param: str
) -> None:
    before = len(gemini.received)
    args: dict[str, Any] = {"model": "gemini-ok", "messages": HI} | kwargs
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**args)
    assert info.value.code == "unsupported_parameter"
    assert info.value.param == param
    assert gemini.since(before) == []  # refused before anything was sent


def test_tool_result_for_an_unknown_call_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gemini-ok",
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "call_9", "content": "x"},
            ],
        )
    assert info.value.param == "messages[1].tool_call_id"


def test_json_response_formats(client: openai.OpenAI, gemini: GeminiServer) -> None:
    schema: dict[str, object] = {"type": "object", "properties": {"a": {"type": "integer"}}}
    got, _ = gemini.capture(
        lambda: client.chat.completions.create(
            model="gemini-ok",
            messages=HI,
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
        ),
    )
    assert got.body["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }
    got, _ = gemini.capture(
        lambda: client.chat.completions.create(
            model="gemini-ok", messages=HI, response_format={"type": "json_object"}
        ),
    )
    assert got.body["generationConfig"] == {"responseMimeType": "application/json"}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("stream", [False, True])
def test_blocked_prompt_is_a_content_filter_400(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        result = client.chat.completions.create(model="gemini-blocked", messages=HI, stream=stream)
        list(result)
    assert info.value.status_code == 400
    assert info.value.code == "content_filter"


@over_upstream_errors("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED")
def test_upstream_errors_are_mapped_without_their_message(
    client: openai.OpenAI, status: int, error: type[openai.APIStatusError], code: str, stream: bool
) -> None:
    err = assert_error_mapped(
        client, f"gemini-error-{status}", status, error, code, stream, "Gemini says no"
    )
    if status == 429:
        assert int(err.response.headers["retry-after"]) >= 1


def test_truncated_stream_is_an_error(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="gemini-cut", messages=HI, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello from"  # what arrived before the cut was delivered


# --------------------------------------------------------------------------- units


def test_error_code_is_the_status_never_the_message() -> None:
    body = {"error": {"code": 400, "message": "prompt text here", "status": "INVALID_ARGUMENT"}}
    assert gemini_error_code(json.dumps(body).encode()) == ("INVALID_ARGUMENT", None)
    assert gemini_error_code(json.dumps([body]).encode()) == ("INVALID_ARGUMENT", None)
    bad = {"error": {"status": "not an identifier: prompt text"}}
    assert gemini_error_code(json.dumps(bad).encode()) == (None, None)
    assert gemini_error_code(b"<html>") == (None, None)


def test_function_role_and_user_are_handled_without_a_network(gemini: GeminiServer) -> None:
    provider = GeminiProvider(
        GeminiProviderConfig(type="gemini", name="g", base_url=gemini.base_url, api_key="k")
    )
    request = ChatRequest.model_validate(
        {
            "model": "m",
            "user": "alice",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "function", "name": "lookup", "content": '{"ok": true}'},
            ],
        }
    )
    body = provider._prepare(request).body
    assert body == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "hi"},
                    {"functionResponse": {"name": "lookup", "response": {"ok": True}}},
                ],
            }
        ]
    }
    bad_args = ChatRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "a",
                            "type": "function",
                            "function": {"name": "f", "arguments": "[1"},
                        }
                    ],
                }
            ],
        }
    )
    with pytest.raises(InvalidRequest) as info:
        provider._prepare(bad_args)
    assert info.value.param == "messages[0].tool_calls[0].function.arguments"


def test_provider_speaks_to_gemini_directly(gemini: GeminiServer) -> None:
    provider = GeminiProvider(
        GeminiProviderConfig(type="gemini", name="g", base_url=gemini.base_url, api_key="k")
    )
    request = ChatRequest.model_validate({"model": "m", "messages": HI})

    async def run() -> Any:
        await provider.start()
        try:
            return await provider.complete(request, "models/ok")
        finally:
            await provider.close()

    completion = asyncio.run(run())
    assert gemini.received[-1].path == "/v1beta/models/ok:generateContent"
    assert completion.usage.method == "reported"
    assert completion.body["choices"][0]["message"]["content"] == "Hello from Gemini, friend."
