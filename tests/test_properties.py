"""Properties over generated input: the config loader never fails with anything but a
``ConfigError`` naming file and key; stream translation loses and invents no text; Veil's
own SSE framing round-trips every chunk."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.api.chat import _sse
from veil.config import Config, parse_config
from veil.errors import ConfigError, VeilError
from veil.providers import StreamState
from veil.providers.anthropic import StreamTranslator

FILE = "fuzz.yaml"
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["env:NOPE_NOT_SET", "https://x.test/v1", "bundled", "partner", "device"]),
)
keys = st.sampled_from(
    [
        "server",
        "providers",
        "models",
        "tenants",
        "policy",
        "privacy",
        "limits",
        "metering",
        "safety",
        "tracing",
        "routing",
        "contracts",
        "redis",
        "database",
        "name",
        "type",
        "tier",
        "base_url",
        "api_key",
        "deployments",
        "provider",
        "model",
        "host",
        "port",
        "auth",
        "enabled",
        "endpoint",
        "partner",
        "cloud",
        "price",
        "input",
        "output",
        "mode",
    ]
) | st.text(min_size=1, max_size=12)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


def _check(text: str) -> None:
    try:
        config = parse_config(text, FILE)
    except ConfigError as exc:  # either outcome is right; anything else is a bug
        assert exc.problems  # noqa: PT017
        for problem in exc.problems:
            assert problem.file == FILE
            assert problem.message
            assert str(problem).startswith(FILE)
            assert "NOPE" not in problem.message or "NOPE_NOT_SET" in problem.message
    else:
        assert isinstance(config, Config)


@SETTINGS
@given(documents)
def test_any_yaml_document_is_a_config_or_a_config_error(document: Any) -> None:
    _check(yaml.safe_dump(document))


@SETTINGS
@given(st.text(max_size=300))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    _check(text)


VALID = """
providers:
  - {name: device, type: llama_cpp, model_path: bundled}
  - {name: oa, type: openai, api_key: sk-test}
models:
  - {name: gpt, deployments: [{provider: oa, model: gpt-4o}], price: {input: 1, output: 2}}
tenants:
  - {name: acme, partners: [openai]}
"""


@SETTINGS
@given(st.data())
def test_a_changed_value_in_a_valid_config_is_named_by_its_key(data: st.DataObject) -> None:
    tree = yaml.safe_load(VALID)
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(value, (dict, list)):
                walk(value, (*path, key))
            else:
                paths.append((*path, key))

    walk(tree, ())
    path = data.draw(st.sampled_from(paths))
    target = tree
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(scalars)
    try:
        parse_config(yaml.safe_dump(tree), FILE)
    except ConfigError as exc:  # or it was still valid: the value may have been acceptable
        # Every problem names a key: the changed one, or one that depends on it (a renamed
        # provider leaves its deployment dangling).
        assert all(p.key for p in exc.problems)  # noqa: PT017
        assert all(p.line is None or p.line >= 1 for p in exc.problems)  # noqa: PT017


# ------------------------------------------------------------------------ stream translation

texts = st.lists(st.text(min_size=0, max_size=30), max_size=30)


@SETTINGS
@given(texts, st.sampled_from(["end_turn", "max_tokens", "stop_sequence"]))
def test_anthropic_stream_translation_keeps_every_piece_of_text(
    pieces: list[str], stop: str
) -> None:
    state = StreamState()
    translator = StreamTranslator("claude", state)
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 7}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
            for p in pieces
        ),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 3}},
        {"type": "message_stop"},
    ]
    chunks = [c for c in (translator.feed(e) for e in events) if c is not None]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "".join(pieces)
    finishes = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]
    ]
    assert finishes == [{"end_turn": "stop", "max_tokens": "length", "stop_sequence": "stop"}[stop]]
    assert translator.done
    assert (state.usage.prompt_tokens, state.usage.completion_tokens) == (7, 3)


junk = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
events = st.one_of(
    st.dictionaries(
        st.sampled_from(["type", "index", "delta", "content_block", "message", "usage", "error"]),
        junk,
        max_size=5,
    ),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "message_delta",
                    "message_stop",
                    "error",
                    "ping",
                ]
            )
        },
        optional={
            "index": junk,
            "delta": junk,
            "content_block": junk,
            "message": junk,
            "usage": junk,
            "error": junk,
        },
    ),
)


@SETTINGS
@given(st.lists(events, max_size=20))
def test_anthropic_stream_translation_of_junk_is_chunks_or_a_veil_error(
    stream: list[dict[str, Any]],
) -> None:
    translator = StreamTranslator("claude", StreamState())
    try:
        for event in stream:
            chunk = translator.feed(event)
            if chunk is not None:
                orjson.dumps(chunk)  # whatever comes out can be sent on
    except VeilError as exc:  # a clean refusal is fine; any other exception is a bug
        assert exc.message.startswith("provider claude")  # noqa: PT017


# ------------------------------------------------------------------------ Veil's SSE

chunks = st.lists(
    st.fixed_dictionaries(
        {
            "choices": st.lists(
                st.fixed_dictionaries(
                    {
                        "index": st.integers(0, 3),
                        "delta": st.fixed_dictionaries({"content": st.text(max_size=40)}),
                    }
                ),
                max_size=2,
            )
        }
    ),
    max_size=15,
)


@SETTINGS
@given(chunks)
def test_veil_sse_frames_round_trip_every_chunk(items: list[dict[str, Any]]) -> None:
    async def source() -> Any:
        for item in items:
            yield item

    async def collect() -> bytes:
        out = b""
        async for frame in _sse(source(), "req"):
            out += frame
        return out

    raw = asyncio.run(collect())
    frames = raw.split(b"\n\n")
    assert frames[-1] == b""
    payloads = [f.removeprefix(b"data: ") for f in frames[:-1]]
    assert all(f.startswith(b"data: ") for f in frames[:-1])
    assert payloads[-1] == b"[DONE]"
    assert [orjson.loads(p) for p in payloads[:-1]] == items
    assert all(b"\n" not in p for p in payloads)  # a newline in text never breaks a frame


@pytest.mark.parametrize("text", ["", "providers: [", "\t- x", "a: b: c", "- 1\n- 2", "{{{"])
def test_broken_yaml_names_the_file(text: str) -> None:
    _check(text)
