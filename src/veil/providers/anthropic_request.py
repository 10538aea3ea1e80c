"""Anthropic Messages API requests, from Veil's OpenAI-shaped ``ChatRequest``.

System and developer messages become the top-level ``system``; tool results become user
messages of ``tool_result`` blocks; consecutive messages of one role are merged, since
Anthropic wants user and assistant to alternate; ``max_tokens`` is required. A field
Anthropic cannot honour is refused with a 400 naming it, never silently dropped.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from veil.chat import ChatRequest, ContentPart, Message
from veil.errors import InvalidRequest

# OpenAI request fields Anthropic has no equivalent for, with the values that mean "unused".
_NO_OP: dict[str, tuple[Any, ...]] = {
    "seed": (None,),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "metadata": (None, {}),
    "store": (None, False),
    "reasoning_effort": (None,),
    "service_tier": (None, "auto", "default"),
    "modalities": (None, ["text"]),
    "verbosity": (None,),
}

# Content part types that carry text (``input_text`` as ``Message.text`` reads it too).
_TEXT_PARTS = ("text", "input_text")

# Message fields beyond role/content/name that each role may carry.
_MESSAGE_EXTRAS = {"assistant": {"tool_calls", "refusal"}, "tool": {"tool_call_id"}}

_DATA_URL = re.compile(r"data:(image/(?:jpeg|jpg|png|gif|webp));base64,([A-Za-z0-9+/=\s]+)")


def messages_body(
    request: ChatRequest, model: str, default_max_tokens: int, *, stream: bool = False
) -> dict[str, Any]:
    """The Messages API body for ``request``; raises ``InvalidRequest`` for what it cannot
    express."""
    _refuse_unsupported(request)
    system, messages = _messages(request.messages)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.token_limit or default_max_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        if request.temperature > 1:
            raise InvalidRequest(
                "temperature must be between 0 and 1 for Anthropic models", param="temperature"
            )
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop_list:
        body["stop_sequences"] = request.stop_list
    if request.user is not None:  # present only if the pipeline let it through
        body["metadata"] = {"user_id": request.user}
    body.update(_tools(request))
    if stream:
        body["stream"] = True
    return body


def _unsupported(what: str, param: str, code: str = "unsupported_parameter") -> InvalidRequest:
    return InvalidRequest(f"Anthropic models do not support {what}", param=param, code=code)


def _refuse_unsupported(request: ChatRequest) -> None:
    for field, unused in _NO_OP.items():
        if getattr(request, field) not in unused:
            raise _unsupported(f"'{field}'", field)
    fmt = request.response_format
    if fmt is not None and fmt.get("type") != "text":
        raise _unsupported("'response_format' other than text", "response_format")


def _messages(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        for key, value in (m.model_extra or {}).items():
            if value is not None and key not in _MESSAGE_EXTRAS.get(m.role, ()):
                raise _unsupported(f"'{key}' in a {m.role} message", f"{where}.{key}")
        if m.role in ("system", "developer"):
            text = _system_text(m, where)
            if text:
                system.append(text)
            continue
        if m.role == "user":
            role, blocks = "user", _user_blocks(m, where)
        elif m.role == "assistant":
            role, blocks = "assistant", _assistant_blocks(m, where)
        elif m.role == "tool":
            role, blocks = "user", [_tool_result(m, where)]
        else:
            raise _unsupported(f"the '{m.role}' role; use tools", f"{where}.role")
        if not blocks:
            raise InvalidRequest(f"{where} has no content", param=f"{where}.content")
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for msg in out:
        blocks = msg["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            msg["content"] = blocks[0]["text"]
    return "\n\n".join(system), out


def _parts(m: Message, where: str) -> list[tuple[str, ContentPart]]:
    """The message's content as parts, each with the parameter path that names it."""
    if m.content is None:
        return []
    if isinstance(m.content, str):
        return [(f"{where}.content", ContentPart(type="text", text=m.content))]
    return [(f"{where}.content[{j}]", part) for j, part in enumerate(m.content)]


def _text(part: ContentPart, where: str) -> str:
    text = getattr(part, "text", None)
    if not isinstance(text, str):
        raise InvalidRequest(f"{where}.text must be a string", param=f"{where}.text")
    return text


def _system_text(m: Message, where: str) -> str:
    texts = []
    for at, part in _parts(m, where):
        if part.type not in _TEXT_PARTS:
            raise _unsupported(f"'{part.type}' parts in system messages", at, "unsupported_content")
        texts.append(_text(part, at))
    return "".join(texts)


def _user_blocks(m: Message, where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for at, part in _parts(m, where):
        if part.type in _TEXT_PARTS:
            text = _text(part, at)
            if text:  # Anthropic rejects empty text blocks
                blocks.append({"type": "text", "text": text})
        elif part.type == "image_url":
            blocks.append(_image(getattr(part, "image_url", None), at))
        else:
            raise _unsupported(f"'{part.type}' content parts", at, "unsupported_content")
    return blocks


def _image(image_url: Any, where: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else None
    param = f"{where}.image_url.url"
    if not isinstance(url, str):
        raise InvalidRequest(f"{param} must be a string", param=param)
    match = _DATA_URL.fullmatch(url)
    if match is None:
        # A URL would make Anthropic fetch the image itself; Veil sends images inline only.
        raise _unsupported(
            "images by URL here: send a base64 data: URL of a JPEG, PNG, GIF or WebP image",
            param,
            "unsupported_content",
        )
    media_type = "image/jpeg" if match[1] == "image/jpg" else match[1]
    data = "".join(match[2].split())
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _assistant_blocks(m: Message, where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for at, part in _parts(m, where):
        if part.type in _TEXT_PARTS:
            text = _text(part, at)
        elif part.type == "refusal":
            text = str(getattr(part, "refusal", "") or "")
        else:
            raise _unsupported(f"'{part.type}' parts in assistant messages", at)
        if text:
            blocks.append({"type": "text", "text": text})
    extra = m.model_extra or {}
    if isinstance(extra.get("refusal"), str) and extra["refusal"]:
        blocks.append({"type": "text", "text": extra["refusal"]})
    calls = extra.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
    for k, call in enumerate(calls):
        blocks.append(_tool_use(call, f"{where}.tool_calls[{k}]"))
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise _unsupported("tool calls other than functions", f"{where}.type")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise InvalidRequest(f"{where}.id must be a non-empty string", param=f"{where}.id")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"{where}.function.name is required", param=f"{where}.function.name")
    raw = fn.get("arguments") or "{}"
    param = f"{where}.function.arguments"
    try:
        arguments = orjson.loads(raw) if isinstance(raw, str) else None
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"{param} must be a JSON object in a string", param=param)
    return {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": arguments}


def _tool_result(m: Message, where: str) -> dict[str, Any]:
    tool_call_id = (m.model_extra or {}).get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise InvalidRequest(f"{where}.tool_call_id is required", param=f"{where}.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_call_id}
    texts = []
    for at, part in _parts(m, where):
        if part.type not in _TEXT_PARTS:
            raise _unsupported(f"'{part.type}' parts in tool messages", at, "unsupported_content")
        if text := _text(part, at):
            texts.append({"type": "text", "text": text})
    if texts:  # a string stays a string; parts stay text blocks
        block["content"] = m.content if isinstance(m.content, str) else texts
    return block


def _tools(request: ChatRequest) -> dict[str, Any]:
    tools = [_tool(t, f"tools[{i}]") for i, t in enumerate(request.tools or [])]
    choice = _tool_choice(request.tool_choice)
    if request.parallel_tool_calls is False and (choice is None or choice["type"] != "none"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if not tools:
        if choice is not None and choice["type"] in ("any", "tool"):
            raise InvalidRequest("tool_choice needs tools to choose from", param="tool_choice")
        return {}  # "auto" or "none" among no tools changes nothing
    out: dict[str, Any] = {"tools": tools}
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise _unsupported("tools other than functions", f"{where}.type")
    fn = tool.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"{where}.function.name is required", param=f"{where}.function.name")
    if fn.get("strict"):
        raise _unsupported("strict function schemas", f"{where}.function.strict")
    schema = fn.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise InvalidRequest(
            f"{where}.function.parameters must be a JSON schema object",
            param=f"{where}.function.parameters",
        )
    out: dict[str, Any] = {"name": fn["name"], "input_schema": schema}
    if isinstance(fn.get("description"), str):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return {"type": "tool", "name": fn["name"]}
    raise InvalidRequest(
        "tool_choice must be auto, none, required or a function", param="tool_choice"
    )
