"""Real local servers speaking the moderation protocols Veil's remote moderators call.

- ``OpenAIModerationServer``: ``POST /v1/moderations`` as OpenAI documents it: ``model``
  optional, ``input`` a string or a list of strings (or multi-modal parts), a bearer key;
  the answer has one result per input with omni-moderation's 13 categories, their scores
  and ``category_applied_input_types``.
- ``ContentSafetyServer``: Azure AI Content Safety's ``text:analyze`` and
  ``text:shieldPrompt`` (``api-version`` 2024-09-01 or 2023-10-01 for analyze), the key in
  ``Ocp-Apim-Subscription-Key``, its limits enforced (10K characters a text; a prompt of
  10K and at most five documents of 10K in all, counted in UTF-16 units), errors in
  Azure's ``{"error": {"code", "message"}}`` shape.
- ``LlamaGuardServer``: an OpenAI-compatible chat server answering as a Llama Guard 3 model
  would behind vLLM or Ollama: ``safe`` or ``unsafe`` and a line of hazard codes. Like Llama
  Guard 3's chat template it accepts only string contents in alternating user/assistant
  turns.

Answers are keyed on marker words in the text (``MARKERS``); ``zzstatus-<code>`` makes any
of them fail with that HTTP status, quoting the text in the error message so tests can prove
Veil never passes an upstream's message on. ``delay`` slows every answer, and
``max_in_flight`` records how many requests were ever being answered at once.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from tests.support.local import LocalServer, Received
from veil.safety import CATEGORIES

STATUS_MARKER = re.compile(r"zzstatus-(\d{3})")
#: Marker word → OpenAI category scores it raises.
MARKERS: dict[str, dict[str, float]] = {
    "zzviolent": {"violence": 0.97, "violence/graphic": 0.41, "illicit/violent": 0.3},
    "zzhate": {"hate": 0.91, "harassment": 0.32, "hate/threatening": 0.2},
    "zzselfharm": {"self-harm": 0.88, "self-harm/intent": 0.8},
    "zzsexual": {"sexual": 0.93},
    "zzminor": {"sexual": 0.6, "sexual/minors": 0.95},
    "zzcrime": {"illicit": 0.85},
}
#: Marker word → Azure harm category and the severity (of 0–7) it raises.
AZURE_MARKERS: dict[str, tuple[str, int]] = {
    "zzviolent": ("Violence", 7),
    "zzhate": ("Hate", 4),
    "zzselfharm": ("SelfHarm", 6),
    "zzsexual": ("Sexual", 2),
    "zzminor": ("Sexual", 6),
}
JAILBREAK_MARKER = "zzjailbreak"
INJECTION_MARKER = "zzinject"
#: Marker word → Llama Guard 3 hazard code.
LLAMA_GUARD_MARKERS: dict[str, str] = {
    "zzviolent": "S1",
    "zzcrime": "S2",
    "zzminor": "S4",
    "zzprivacy": "S7",
    "zzweapon": "S9",
    "zzhate": "S10",
    "zzselfharm": "S11",
    "zzsexual": "S12",
}
#: The Llama Guard server answers this text with prose instead of a verdict.
RAMBLE_MARKER = "zzramble"
BASELINE = 0.00012
AZURE_TEXT_LIMIT = 10_000
AZURE_VERSIONS = {"analyze": {"2023-10-01", "2024-09-01"}, "shieldPrompt": {"2024-09-01"}}
AZURE_HARM = ("Hate", "SelfHarm", "Sexual", "Violence")


def units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class _Server(LocalServer):
    """What the three servers share: the accepted key, raw bodies, a delay, a fault marker."""

    def __init__(self, key: str, delay: float = 0.0) -> None:
        super().__init__()
        self.key = key
        self.delay = delay
        self.max_in_flight = 0
        self._in_flight = 0

    async def read(self, request: web.Request) -> tuple[Received, Any]:
        """Record the request (``body`` is ``{}`` unless it is a JSON object); return the
        parsed body, or ``...`` when it is not JSON."""
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = ...
        received = Received(
            request.path,
            dict(request.query),
            CIMultiDict(request.headers),
            body if isinstance(body, dict) else {},
        )
        self.received.append(received)
        return received, body

    def track(self, app: web.Application) -> None:
        """Add the delay and the in-flight count to every route of ``app``."""

        @web.middleware
        async def counting(request: web.Request, handler: Handler) -> web.StreamResponse:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            try:
                if self.delay:
                    await asyncio.sleep(self.delay)
                return await handler(request)
            finally:
                self._in_flight -= 1

        app.middlewares.append(counting)


def _status(text: str) -> int | None:
    found = STATUS_MARKER.search(text)
    return int(found.group(1)) if found else None


# ---------------------------------------------------------------------------- OpenAI


def openai_error(
    status: int,
    message: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    err = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    if status == 429:
        err["type"] = "requests"
    elif status >= 500:
        err["type"] = "server_error"
    return web.json_response({"error": err}, status=status, headers=headers or {})


def moderation_result(text: str) -> dict[str, Any]:
    scores = dict.fromkeys(CATEGORIES, BASELINE)
    for marker, raised in MARKERS.items():
        if marker in text:
            for category, score in raised.items():
                scores[category] = max(scores[category], score)
    return {
        "flagged": any(s >= 0.5 for s in scores.values()),
        "categories": {c: s >= 0.5 for c, s in scores.items()},
        "category_scores": scores,
        "category_applied_input_types": {c: ["text"] for c in CATEGORIES},
    }


class OpenAIModerationServer(_Server):
    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def routes(self, app: web.Application) -> None:
        self.track(app)
        app.router.add_post("/v1/moderations", self._moderations)

    async def _moderations(self, request: web.Request) -> web.Response:
        _, body = await self.read(request)
        auth = request.headers.get("authorization", "")
        if not auth:
            return openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                None,
            )
        if auth != f"Bearer {self.key}":
            return openai_error(401, "Incorrect API key provided.", "invalid_api_key")
        if not isinstance(body, dict):
            return openai_error(
                400, "We could not parse the JSON body of your request.", None, None
            )
        texts = _openai_inputs(body.get("input"))
        if texts is None:
            return openai_error(
                400,
                "Invalid value for 'input': expected a string or an array of strings.",
                "invalid_value" if "input" in body else "missing_required_parameter",
                "input",
            )
        model = body.get("model", "omni-moderation-latest")
        if not isinstance(model, str) or not model:
            return openai_error(400, "Invalid value for 'model'.", "invalid_value", "model")
        unknown = sorted(set(body) - {"input", "model"})
        if unknown:
            return openai_error(
                400, f"Unrecognized request argument supplied: {unknown[0]}", None, unknown[0]
            )
        for text in texts:
            status = _status(text)
            if status is not None:
                headers = {"retry-after": "7"} if status == 429 else {}
                return openai_error(
                    status, f"upstream says no; it saw: {text}", f"test_{status}", None, headers
                )
        resolved = "omni-moderation-2024-09-26" if model.startswith("omni") else model
        return web.json_response(
            {
                "id": f"modr-{int(time.time() * 1000)}",
                "model": resolved,
                "results": [moderation_result(t) for t in texts],
            }
        )


def _openai_inputs(value: Any) -> list[str] | None:
    """The texts of an ``input``: a string, a non-empty list of strings, or of multi-modal
    parts (``{"type": "text", "text"}`` and ``{"type": "image_url", ...}``)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, str) for v in value):
        return list(value)
    texts: list[str] = []
    for part in value:
        if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
            return None
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                return None
            texts.append(part["text"])
    # Multi-modal parts are one input: one result for all of them.
    return ["\n".join(texts)]


# ---------------------------------------------------------------------------- Azure


def azure_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if status == 400:
        err |= {"target": None, "details": [], "innererror": None}
    return web.json_response({"error": err}, status=status, headers=headers or {})


class ContentSafetyServer(_Server):
    def routes(self, app: web.Application) -> None:
        self.track(app)
        app.router.add_post("/contentsafety/text:analyze", self._analyze)
        app.router.add_post("/contentsafety/text:shieldPrompt", self._shield)

    def analyzed(self) -> list[Received]:
        return [r for r in self.received if r.path.endswith(":analyze")]

    def shielded(self) -> list[Received]:
        return [r for r in self.received if r.path.endswith(":shieldPrompt")]

    def _refused(self, request: web.Request, operation: str) -> web.Response | None:
        """Azure's gateway checks: the key, then the API version."""
        key = request.headers.get("ocp-apim-subscription-key")
        if key is None:
            return azure_error(
                401,
                "401",
                "Access denied due to missing subscription key. Make sure to include "
                "subscription key when making requests to an API.",
            )
        if key != self.key:
            return azure_error(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make "
                "sure to provide a valid key for an active subscription and use a correct "
                "regional API endpoint for your resource.",
            )
        if request.query.get("api-version") not in AZURE_VERSIONS[operation]:
            return azure_error(404, "404", "Resource not found")
        return None

    async def _analyze(self, request: web.Request) -> web.Response:
        _, body = await self.read(request)
        refused = self._refused(request, "analyze")
        if refused is not None:
            return refused
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return azure_error(400, "InvalidRequestBody", "The request body is invalid: text.")
        text: str = body["text"]
        if not text:
            return azure_error(400, "InvalidRequestBody", "The text is empty.")
        if units(text) > AZURE_TEXT_LIMIT:
            return azure_error(
                400,
                "InvalidRequestBody",
                f"The maximum length of text is {AZURE_TEXT_LIMIT}; it saw: {text}",
            )
        categories = body.get("categories") or list(AZURE_HARM)
        if not isinstance(categories, list) or not set(categories) <= set(AZURE_HARM):
            return azure_error(400, "InvalidRequestBody", "The categories are invalid.")
        output = body.get("outputType", "FourSeverityLevels")
        if output not in ("FourSeverityLevels", "EightSeverityLevels"):
            return azure_error(400, "InvalidRequestBody", "The outputType is invalid.")
        fault = self._fault(text)
        if fault is not None:
            return fault
        worst = dict.fromkeys(AZURE_HARM, 0)
        for marker, (category, level) in AZURE_MARKERS.items():
            if marker in text:
                worst[category] = max(worst[category], level)
        if output == "FourSeverityLevels":  # 0-1 → 0, 2-3 → 2, 4-5 → 4, 6-7 → 6
            worst = {c: level - level % 2 for c, level in worst.items()}
        return web.json_response(
            {
                "blocklistsMatch": [],
                "categoriesAnalysis": [
                    {"category": c, "severity": worst[c]} for c in AZURE_HARM if c in categories
                ],
            }
        )

    async def _shield(self, request: web.Request) -> web.Response:
        _, body = await self.read(request)
        refused = self._refused(request, "shieldPrompt")
        if refused is not None:
            return refused
        if not isinstance(body, dict):
            return azure_error(400, "InvalidRequestBody", "The request body is invalid.")
        prompt, documents = body.get("userPrompt"), body.get("documents")
        if not isinstance(prompt, str) or not isinstance(documents, list):
            return azure_error(
                400, "InvalidRequestBody", "userPrompt and documents are both required."
            )
        if not all(isinstance(d, str) for d in documents):
            return azure_error(400, "InvalidRequestBody", "Each document must be a string.")
        if units(prompt) > AZURE_TEXT_LIMIT:
            return azure_error(400, "InvalidRequestBody", "The userPrompt is too long.")
        if len(documents) > 5 or sum(units(d) for d in documents) > AZURE_TEXT_LIMIT:
            return azure_error(
                400, "InvalidRequestBody", "At most 5 documents of 10K characters in all."
            )
        fault = self._fault(prompt + "\n".join(documents))
        if fault is not None:
            return fault
        return web.json_response(
            {
                "userPromptAnalysis": {"attackDetected": JAILBREAK_MARKER in prompt},
                "documentsAnalysis": [{"attackDetected": INJECTION_MARKER in d} for d in documents],
            }
        )

    @staticmethod
    def _fault(text: str) -> web.Response | None:
        status = _status(text)
        if status is None:
            return None
        code = {429: "TooManyRequests", 500: "InternalError", 503: "ServerBusy"}
        headers = {"retry-after": "7"} if status == 429 else {}
        return azure_error(
            status, code.get(status, str(status)), f"upstream says no; it saw: {text}", headers
        )


# ---------------------------------------------------------------------------- Llama Guard


def llama_guard_answer(text: str) -> str:
    codes = sorted(
        {code for marker, code in LLAMA_GUARD_MARKERS.items() if marker in text},
        key=lambda c: int(c[1:]),
    )
    return "unsafe\n" + ",".join(codes) if codes else "safe"


class LlamaGuardServer(_Server):
    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def routes(self, app: web.Application) -> None:
        self.track(app)
        app.router.add_post("/v1/chat/completions", self._chat)

    async def _chat(self, request: web.Request) -> web.Response:
        _, body = await self.read(request)
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return openai_error(401, "Incorrect API key provided.", "invalid_api_key")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return openai_error(400, "you must provide a model parameter", None, "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return openai_error(400, "messages must be a non-empty list", None, "messages")
        for i, message in enumerate(messages):
            role = "user" if i % 2 == 0 else "assistant"
            if not isinstance(message, dict) or message.get("role") != role:
                # Llama Guard 3's chat template raises this for any other conversation.
                return openai_error(
                    400,
                    "Conversation roles must alternate user/assistant/user/assistant/...",
                    None,
                    "messages",
                )
            if not isinstance(message.get("content"), str):
                return openai_error(400, "content must be a string", None, "messages")
        text = messages[-1]["content"]  # Llama Guard judges the last turn
        status = _status(text)
        if status is not None:
            headers = {"retry-after": "7"} if status == 429 else {}
            return openai_error(
                status, f"upstream says no; it saw: {text}", f"test_{status}", None, headers
            )
        answer = (
            f"I would rather talk about: {text}"
            if RAMBLE_MARKER in text
            else llama_guard_answer(text)
        )
        return web.json_response(
            {
                "id": "chatcmpl-guard",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 200, "completion_tokens": 4, "total_tokens": 204},
            }
        )
