"""The chat request every front builds, and the usage every provider reports.

The request is OpenAI's Chat Completions shape, validated once. Providers receive it
unchanged and translate it into their own wire format; answers travel as OpenAI-shaped
dicts (a ``chat.completion`` or ``chat.completion.chunk``), which is what callers get.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from veil.errors import InvalidRequest

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Open(BaseModel):
    # Message parts and tools carry provider-specific fields; keep what the caller sent.
    model_config = ConfigDict(extra="allow", strict=True)


class ContentPart(_Open):
    type: str


class Message(_Open):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text parts joined (images and audio are not text)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(
            str(getattr(p, "text", "")) for p in self.content if p.type in ("text", "input_text")
        )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions`` as OpenAI documents it; unknown fields are rejected.

    Strict: ``"stream": "yes"`` or ``"temperature": "0.5"`` are errors, as they are at OpenAI.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(None, max_length=256)
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    verbosity: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def parse_chat_request(body: bytes) -> ChatRequest:
    """Validate a JSON body; errors name the field, never echo the value."""
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request(exc) from None


def invalid_request(exc: ValidationError) -> InvalidRequest:
    return invalid_from_error(exc.errors(include_input=False, include_url=False)[0])


def invalid_from_error(err: Mapping[str, Any]) -> InvalidRequest:
    """One pydantic error (the first) as a 400 naming the field; never with its value."""
    if err["type"] == "json_invalid":
        return InvalidRequest("the request body is not valid JSON", code="invalid_json", param=None)
    if err["type"] == "model_type" and not err["loc"]:
        return InvalidRequest("the request body must be a JSON object", code="invalid_json")
    param = _param(err["loc"])
    if err["type"] == "extra_forbidden":
        return InvalidRequest(f"unrecognized request argument: {param}", param=param)
    if err["type"] == "missing":
        return InvalidRequest(f"missing required parameter: {param}", param=param)
    msg = str(err["msg"]).removeprefix("Value error, ")
    return InvalidRequest(f"invalid value for {param}: {msg}", param=param)


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or not part.isidentifier():
            continue  # pydantic's union-member tags ("str", "list[str]") are not field names
        else:
            out += f".{part}" if out else part
    return out


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: ``reported`` by the upstream, or ``counted`` by Veil.
    method: str = "counted"

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    @classmethod
    def from_openai(cls, data: Any) -> Usage | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                int(data.get("prompt_tokens") or 0),
                int(data.get("completion_tokens") or 0),
                "reported",
            )
        except (TypeError, ValueError):
            return None
