"""Restoring streamed answers: content and tool-call arguments, whatever the chunking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from veil.chat import ChatRequest
from veil.gate import Gate, Outbound
from veil.privacy import PiiDetector, Pseudonymizer

EMAIL = "ada.lovelace@example.com"


@pytest.fixture(scope="module")
def pseudonymizer() -> Pseudonymizer:
    pz = Pseudonymizer(PiiDetector(), frozenset({"EMAIL_ADDRESS"}), "pseudonymize")
    assert pz.protect(f"mail {EMAIL}") == "mail <EMAIL_ADDRESS_1>"
    return pz


def run(chunks: list[dict[str, Any]], pz: Pseudonymizer) -> list[dict[str, Any]]:
    async def source() -> AsyncIterator[dict[str, Any]]:
        for chunk in chunks:
            yield chunk

    async def collect() -> list[dict[str, Any]]:
        outbound = Outbound(ChatRequest(model="m", messages=[{"role": "user", "content": "x"}]), pz)
        return [c async for c in Gate.restore_stream(source(), outbound)]

    return asyncio.run(collect())


def content(delta: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": finish}]}


def args(piece: str, finish: str | None = None) -> dict[str, Any]:
    call = {"index": 0, "function": {"arguments": piece}}
    return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": finish}]}


@pytest.mark.parametrize("cut", range(1, len("<EMAIL_ADDRESS_1>")))
def test_content_split_inside_a_placeholder(pseudonymizer: Pseudonymizer, cut: int) -> None:
    text = "write to <EMAIL_ADDRESS_1> today"
    out = run(
        [content(text[: 9 + cut]), content(text[9 + cut :]), content("", "stop")], pseudonymizer
    )
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in out)
        == f"write to {EMAIL} today"
    )


def test_tool_arguments_held_at_the_end_go_back_into_the_arguments(
    pseudonymizer: Pseudonymizer,
) -> None:
    out = run([args('{"to": "<EMAIL_ADD'), args("RESS_1>"), args("", "tool_calls")], pseudonymizer)
    pieces = [
        call["function"]["arguments"]
        for c in out
        for call in c["choices"][0]["delta"].get("tool_calls") or ()
    ]
    assert "".join(pieces) == '{"to": "' + EMAIL
    assert not any(c["choices"][0]["delta"].get("content") for c in out)


def test_a_stream_ending_without_finish_reason_still_flushes(pseudonymizer: Pseudonymizer) -> None:
    out = run([content("bye <EMAIL")], pseudonymizer)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in out) == "bye <EMAIL"


def test_values_restored_into_tool_arguments_keep_the_json_valid() -> None:
    import json

    pz = Pseudonymizer(PiiDetector(), frozenset({"API_KEY"}), "pseudonymize")
    secret = 'p"ss\\word-9f8e7d6c5b4a39281706f5e4d3c2b1a0'
    protected = pz.protect(f"postgres://app:{secret}@db.internal:5432/main")
    assert secret not in protected
    placeholder = protected.split("app:")[1].split("@")[0]
    arguments = json.dumps({"dsn": f"postgres://app:{placeholder}@db.internal:5432/main"})
    out = run([args(arguments[:10]), args(arguments[10:]), args("", "tool_calls")], pz)
    pieces = [
        call["function"]["arguments"]
        for c in out
        for call in c["choices"][0]["delta"].get("tool_calls") or ()
    ]
    assert json.loads("".join(pieces))["dsn"] == f"postgres://app:{secret}@db.internal:5432/main"
