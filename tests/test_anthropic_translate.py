"""The Anthropic adapter's pure translations: request body, answer, stream events, errors."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from veil.chat import ChatRequest, Usage
from veil.errors import (
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from veil.providers.anthropic import (
    StreamTranslator,
    anthropic_error_code,
    completion_from_message,
    stream_error,
)
from veil.providers.anthropic_request import messages_body
from veil.providers.base import StreamState


def body(**fields: Any) -> dict[str, Any]:
    fields.setdefault("messages", [{"role": "user", "content": "hi"}])
    return messages_body(ChatRequest.model_validate({"model": "x", **fields}), "claude-x", 99)


def refused(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        body(**fields)
    return info.value


def test_minimal_request() -> None:
    assert body() == {
        "model": "claude-x",
        "max_tokens": 99,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_user_goes_to_metadata_only_when_the_request_has_one() -> None:
    assert body(user="veil-abc")["metadata"] == {"user_id": "veil-abc"}
    assert "metadata" not in body()


def test_stream_flag_is_set_by_the_caller_of_messages_body() -> None:
    request = ChatRequest.model_validate(
        {"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    assert messages_body(request, "m", 1, stream=True)["stream"] is True
    assert "stream" not in messages_body(request, "m", 1)


def test_temperature_one_is_allowed_and_above_is_not() -> None:
    assert body(temperature=1)["temperature"] == 1
    assert refused(temperature=1.01).param == "temperature"


def test_no_op_values_of_unsupported_fields_are_accepted() -> None:
    sent = body(
        logprobs=False,
        top_logprobs=0,
        presence_penalty=0,
        frequency_penalty=0.0,
        logit_bias={},
        store=False,
        service_tier="auto",
        modalities=["text"],
        metadata={},
        prompt_cache_key="k",
    )
    assert set(sent) == {"model", "max_tokens", "messages"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"service_tier": "flex"}, "service_tier"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"metadata": {"k": "v"}}, "metadata"),
        ({"verbosity": "low"}, "verbosity"),
    ],
)
def test_unsupported_values_are_refused(fields: dict[str, Any], param: str) -> None:
    err = refused(**fields)
    assert (err.param, err.code) == (param, "unsupported_parameter")


def test_system_parts_and_empty_system_messages() -> None:
    sent = body(
        messages=[
            {"role": "system", "content": ""},
            {
                "role": "system",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "user", "content": "hi"},
        ]
    )
    assert sent["system"] == "ab"
    err = refused(
        messages=[
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "user", "content": "hi"},
        ]
    )
    assert err.param == "messages[0].content[0]"


def test_image_media_types() -> None:
    def image(url: str) -> dict[str, Any]:
        content = [{"type": "image_url", "image_url": {"url": url}}]
        return body(messages=[{"role": "user", "content": content}])["messages"][0]["content"]

    assert image("data:image/jpg;base64,AAAA")[0]["source"] == {
        "type": "base64",
        "media_type": "image/jpeg",
        "data": "AAAA",
    }
    assert image("data:image/webp;base64,QUJD\nREVG")[0]["source"]["data"] == "QUJDREVG"
    for url in ("data:image/tiff;base64,AAAA", "data:image/png,rawbytes", "ftp://x/a.png"):
        err = refused(
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
            ]
        )
        assert (err.param, err.code) == (
            "messages[0].content[0].image_url.url",
            "unsupported_content",
        )


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "user", "content": ""}], "messages[0].content"),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
            "messages[0].content[0]",
        ),
        ([{"role": "function", "name": "f", "content": "x"}], "messages[0].role"),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "assistant", "function_call": {"name": "f"}},
            ],
            "messages[1].function_call",
        ),
        ([{"role": "user", "content": "a", "audio": {"id": "x"}}], "messages[0].audio"),
        ([{"role": "tool", "content": "x"}], "messages[0].tool_call_id"),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "[1]"},
                        }
                    ],
                }
            ],
            "messages[0].tool_calls[0].function.arguments",
        ),
    ],
)
def test_messages_anthropic_cannot_take_are_refused_naming_the_place(
    messages: list[dict[str, Any]], param: str
) -> None:
    assert refused(messages=messages).param == param


def test_assistant_refusals_and_null_extras_are_kept_as_text() -> None:
    sent = body(
        messages=[
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": None, "refusal": "I can't.", "tool_calls": None},
            {"role": "user", "content": "b"},
        ]
    )
    assert sent["messages"][1] == {"role": "assistant", "content": "I can't."}


def test_names_are_dropped() -> None:
    sent = body(messages=[{"role": "user", "name": "bob", "content": "a"}])
    assert sent["messages"] == [{"role": "user", "content": "a"}]


def test_empty_tool_result_has_no_content() -> None:
    sent = body(
        messages=[
            {"role": "user", "content": "a"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": ""},
        ]
    )
    assert sent["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "c"}],
    }


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_parallel_tool_calls_false_without_tool_choice_means_auto() -> None:
    sent = body(tools=[TOOL], parallel_tool_calls=False)
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert "tool_choice" not in body(tools=[TOOL], parallel_tool_calls=True)
    assert body(tools=[TOOL], tool_choice="none", parallel_tool_calls=False)["tool_choice"] == {
        "type": "none"
    }


def test_tool_choice_without_tools() -> None:
    assert "tool_choice" not in body(tool_choice="auto")
    assert "tool_choice" not in body(tool_choice="none", parallel_tool_calls=False)
    assert refused(tool_choice="required").param == "tool_choice"
    assert refused(tool_choice="sometimes").param == "tool_choice"


def test_strict_tools_are_refused() -> None:
    strict = {"type": "function", "function": {"name": "f", "strict": True}}
    assert refused(tools=[TOOL, strict]).param == "tools[1].function.strict"


# --------------------------------------------------------------------------- answers


def test_answer_with_only_tool_calls_has_null_content() -> None:
    completion = completion_from_message(
        {
            "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": [1, "x"]}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": None},
        },
        "claude",
    )
    choice = completion.body["choices"][0]
    assert choice["message"]["content"] is None
    assert orjson.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "a": [1, "x"]
    }
    assert choice["finish_reason"] == "tool_calls"
    assert completion.usage == Usage(3, 4, "reported")


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
        (None, "stop"),
    ],
)
def test_stop_reason_mapping(stop_reason: Any, finish_reason: str) -> None:
    answer = {"content": [{"type": "text", "text": ""}], "stop_reason": stop_reason}
    completion = completion_from_message(answer, "claude")
    assert completion.body["choices"][0]["finish_reason"] == finish_reason
    assert completion.body["choices"][0]["message"]["content"] == ""
    assert completion.usage.method == "missing"


def test_answer_without_content_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        completion_from_message({"type": "message"}, "claude")


# --------------------------------------------------------------------------- streams


def feed(
    events: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], StreamState, StreamTranslator]:
    state = StreamState()
    translator = StreamTranslator("claude", state)
    chunks = [c for e in events if (c := translator.feed(e)) is not None]
    return chunks, state, translator


def test_usage_is_estimated_until_message_delta_reports_it() -> None:
    start = {
        "type": "message_start",
        "message": {
            "usage": {"input_tokens": 5, "cache_read_input_tokens": 10, "output_tokens": 1}
        },
    }
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    delta = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "a"},
    }
    chunks, state, translator = feed([start, block, delta, delta])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert state.usage == Usage(15, 2, "estimated")
    final = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"input_tokens": 6, "output_tokens": 9},
    }
    [chunk] = [c for e in [final, {"type": "message_stop"}] if (c := translator.feed(e))]
    assert chunk["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert state.usage == Usage(6, 9, "reported")
    assert translator.done


def test_tool_calls_are_numbered_among_tool_calls() -> None:
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 1}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "hmm"},
        },
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "text", "text": "Hi"},
        },
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"a"'},
        },
        {"type": "ping"},
    ]
    chunks, _, _ = feed(events)
    deltas = [c["choices"][0]["delta"] for c in chunks[1:]]
    assert deltas == [
        {"content": "Hi"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "t",
                    "type": "function",
                    "function": {"name": "f", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]},
    ]


def test_tool_input_for_an_unknown_block_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        feed(
            [
                {
                    "type": "content_block_delta",
                    "index": 3,
                    "delta": {"type": "input_json_delta", "partial_json": "{"},
                }
            ]
        )


@pytest.mark.parametrize(
    ("kind", "error", "code"),
    [
        ("overloaded_error", UpstreamUnavailable, "upstream_unavailable"),
        ("rate_limit_error", RateLimited, "rate_limit_error"),
        ("timeout_error", UpstreamTimeout, "upstream_timeout"),
        ("invalid_request_error", InvalidRequest, "invalid_request_error"),
        ("authentication_error", UpstreamError, "upstream_auth"),
        ("api_error", UpstreamError, "upstream_error"),
        ("no such thing, said the prompt", UpstreamError, "upstream_error"),
    ],
)
def test_stream_error_events(kind: str, error: type[Exception], code: str) -> None:
    with pytest.raises(error) as info:
        feed([{"type": "error", "error": {"type": kind, "message": "secret prompt text"}}])
    assert type(info.value) is error
    assert getattr(info.value, "code", None) == code
    assert "secret" not in str(info.value)
    assert stream_error("claude", None).code == "upstream_error"


def test_error_code_is_the_type_never_the_message() -> None:
    raw = orjson.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "message": "m"}}
    )
    assert anthropic_error_code(raw) == ("invalid_request_error", None)
    assert anthropic_error_code(b"not json") == (None, None)
    assert anthropic_error_code(b"[1]") == (None, None)
    assert anthropic_error_code(orjson.dumps({"error": {"type": "has spaces, so a message"}})) == (
        None,
        None,
    )
