"""``POST /v1/moderations``: OpenAI's moderation endpoint, answered by Veil's own classifier.

The request and the response are OpenAI's, so the official SDKs work unchanged
(``client.moderations.create(input=...)``):

- ``input`` is a string, an array of strings (one result each, in order), or an array of
  content parts ``{"type": "text", "text": ...}``, which — as at OpenAI — are one input
  together and get one result. Image parts are refused (400 ``unsupported_parameter``):
  the classifier reads text only. At most ``MAX_INPUTS`` strings or parts; the body is held
  to the same size limit as chat by ``RequestMiddleware``.
- ``model`` is one of ``MODELS`` (default ``veil-moderation``); whichever is asked for,
  ``veil-moderation`` — the local classifier — answers, and the response says so.
- Each result has OpenAI's 13 ``categories`` and ``category_scores``. A category the
  classifier has no trained head for is reported ``false`` with score ``0.0``: not judged,
  which is not the same as judged safe. A category is ``true`` when its score reaches the
  classifier's own threshold for it, and ``flagged`` when any of the 13 is ``true`` —
  prompt attacks do not set it, so that ``flagged`` means what it means at OpenAI.
- Each result also carries a ``veil`` object, which OpenAI's SDKs ignore and keep::

      "veil": {"attacks": {"jailbreak": 0.97, "indirect_injection": 0.01},
               "flagged_attacks": ["jailbreak"],
               "severity": {"Hate": 0, "SelfHarm": 0, "Sexual": 0, "Violence": 2}}

  ``attacks`` scores the prompt attacks (``0.0`` when not judged), ``flagged_attacks``
  lists those that reach their threshold, and ``severity`` is Azure AI Content Safety's
  four harm categories at severities 0, 2, 4 or 6 (``Verdict.azure()``). Every input is
  the user's own words (OpenAI's request has no documents), so ``indirect_injection``,
  which the classifier looks for in documents only, is always ``0.0`` here; ``veil
  moderate`` takes documents.

Any valid key may call it, a tenant's key included. The input is never logged, and no
usage row is written: moderation is not metered. Requests are counted in
``veil_moderation_api_requests`` (by whether anything was flagged), from the first on.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

import orjson
from fastapi import APIRouter, Request
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.responses import Response

from veil.api.deps import authenticate, gateway
from veil.chat import invalid_request
from veil.errors import InvalidRequest, VeilError
from veil.safety import ATTACKS, CATEGORIES, Screen, Verdict

if TYPE_CHECKING:  # imported on first use: it loads numpy and the weights
    from veil.safety.classifier import LocalModerator

router = APIRouter(prefix="/v1", tags=["openai"])
log = logging.getLogger("veil.api")

MODEL: Final = "veil-moderation"
#: The names a caller may ask for; all are served by the local classifier.
MODELS: Final = frozenset({MODEL, "omni-moderation-latest", "text-moderation-latest"})
MAX_INPUTS: Final = 32
#: Inputs longer than this in total are judged in a worker thread, so that one large
#: request does not hold up the event loop; shorter ones cost less than the hand-off.
THREAD_ABOVE_CHARS: Final = 2_000

_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["input"],
                    "properties": {
                        "input": {
                            "oneOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "string"}},
                                {"type": "array", "items": {"type": "object"}},
                            ]
                        },
                        "model": {"type": "string", "enum": sorted(MODELS)},
                    },
                }
            }
        },
    }
}


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    # Checked by hand (``_texts``): its errors say which of the three shapes was meant.
    input: Any
    model: str = MODEL


class _Moderations:
    """What the route keeps per application: the classifier, loaded on first use, and its
    request counter."""

    def __init__(self, request: Request) -> None:
        self._moderator: LocalModerator | None = None
        self._loading = asyncio.Lock()
        self.requests = Counter(
            "veil_moderation_api_requests",
            "POST /v1/moderations requests answered, by whether any input was flagged",
            ("flagged",),
            registry=gateway(request).metrics.registry,
        )

    async def moderator(self) -> LocalModerator:
        if self._moderator is None:
            async with self._loading:
                if self._moderator is None:
                    from veil.safety.classifier import default_moderator

                    try:
                        self._moderator = await asyncio.to_thread(default_moderator)
                    except RuntimeError as exc:  # its weights are missing or unreadable
                        log.error("%s", exc)  # names the file, nothing of any request
                        raise VeilError(
                            "moderation is unavailable: the safety classifier cannot be loaded",
                            code="moderation_unavailable",
                        ) from None
        return self._moderator


def _state(request: Request) -> _Moderations:
    state = request.app.state
    moderations: _Moderations | None = getattr(state, "moderations", None)
    if moderations is None:
        moderations = state.moderations = _Moderations(request)
    return moderations


@router.post("/moderations", openapi_extra=_OPENAPI, summary="Classify text as safe or not")
async def create_moderation(request: Request) -> Response:
    await authenticate(request)
    texts = parse_moderation_request(await request.body())
    moderations = _state(request)
    moderator = await moderations.moderator()
    screens = [Screen(text) for text in texts]
    if sum(len(t) for t in texts) > THREAD_ABOVE_CHARS:
        verdicts = await asyncio.to_thread(_judge, moderator, screens)
    else:
        verdicts = _judge(moderator, screens)
    results = [moderation_result(moderator, v) for v in verdicts]
    flagged = any(r["flagged"] or r["veil"]["flagged_attacks"] for r in results)
    moderations.requests.labels("true" if flagged else "false").inc()
    body = {
        "id": "modr-" + request.scope["state"]["request_id"],
        "model": MODEL,
        "results": results,
    }
    return Response(orjson.dumps(body), media_type="application/json")


def parse_moderation_request(body: bytes) -> list[str]:
    """The texts to judge, one per result. Errors name the field, never its value."""
    try:
        request = ModerationRequest.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    if request.model not in MODELS:
        raise InvalidRequest(
            f"unknown moderation model {request.model[:64]!r}; use one of: "
            + ", ".join(sorted(MODELS)),
            param="model",
            code="model_not_found",
        )
    return _texts(request.input)


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    shapes = "a string, an array of strings or an array of content parts"
    if not isinstance(value, list):
        raise InvalidRequest(f"invalid value for input: expected {shapes}", param="input")
    if not value:
        raise InvalidRequest("invalid value for input: the array is empty", param="input")
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(
            f"invalid value for input: at most {MAX_INPUTS} items, got {len(value)}",
            param="input",
        )
    if isinstance(value[0], str):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise InvalidRequest(
                    f"invalid value for input[{i}]: expected a string, as the items before it",
                    param=f"input[{i}]",
                )
        return list(value)
    parts: list[str] = []
    for i, part in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(part, dict):
            expected = "a content part, as the items before it" if i else "a string or an object"
            raise InvalidRequest(f"invalid value for {param}: expected {expected}", param=param)
        kind = part.get("type")
        if kind == "image_url":
            raise InvalidRequest(
                "image inputs are not supported: Veil's moderation model reads text only",
                param=param,
                code="unsupported_parameter",
            )
        if kind != "text":
            raise InvalidRequest(
                f"invalid value for {param}.type: expected 'text'", param=f"{param}.type"
            )
        if set(part) - {"type", "text"}:
            extra = f"{param}.{sorted(set(part) - {'type', 'text'})[0][:64]}"
            raise InvalidRequest(f"unrecognized request argument: {extra}", param=extra)
        if not isinstance(part.get("text"), str):
            raise InvalidRequest(
                f"invalid value for {param}.text: expected a string", param=f"{param}.text"
            )
        parts.append(part["text"])
    return ["\n".join(parts)]


def _judge(moderator: LocalModerator, screens: list[Screen]) -> list[Verdict]:
    return [moderator.judge(screen) for screen in screens]


def moderation_result(moderator: LocalModerator, verdict: Verdict) -> dict[str, Any]:
    """One OpenAI moderation result, with Veil's ``veil`` object beside it."""
    crossed = set(moderator.flagged(verdict))
    categories = {c: c in crossed for c in CATEGORIES}
    return {
        "flagged": any(categories.values()),
        "categories": categories,
        "category_scores": {c: verdict.scores.get(c, 0.0) for c in CATEGORIES},
        "category_applied_input_types": {c: ["text"] for c in CATEGORIES},
        "veil": {
            "attacks": {a: verdict.scores.get(a, 0.0) for a in ATTACKS},
            "flagged_attacks": [a for a in ATTACKS if a in crossed],
            "severity": verdict.azure(),
        },
    }
