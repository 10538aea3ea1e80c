"""A real local server speaking Google Gemini's ``generateContent`` API, for tests.

``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``
(one ``GenerateContentResponse`` per SSE event, no ``[DONE]``: the stream ends when the
connection does). Like Gemini, it refuses a body with fields its schema does not have
(``INVALID_ARGUMENT``), and it records every request (path, query, headers, body).

Behaviour is picked by the model name: ``ok`` (text, with thinking tokens in the usage),
``echo``, ``tools`` (some text, then two function calls, the first with a
``thoughtSignature``), ``max-tokens``, ``safety`` (the answer is withheld),
``blocked`` (the prompt is: ``promptFeedback.blockReason``, no candidates),
``error-<status>`` (Google's error shape; the message quotes the prompt), ``cut`` (the
stream stops before a ``finishReason``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.support.openai_server import LocalServer, sse

PROMPT_TOKENS, OUTPUT_TOKENS, THOUGHT_TOKENS = 12, 4, 3
SIGNATURE = "c2lnbmF0dXJlLW9mLWEtdGhvdWdodA=="
FUNCTION_CALLS = [
    {"name": "get_weather", "args": {"unit": "celsius", "days": 2}},
    {"name": "get_time", "args": {"zone": "utc"}},
]
STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
REQUEST_FIELDS = {
    "contents",
    "systemInstruction",
    "generationConfig",
    "tools",
    "toolConfig",
    "safetySettings",
    "cachedContent",
}
GENERATION_FIELDS = {
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "thinkingConfig",
}
PART_DATA = {"text", "inlineData", "functionCall", "functionResponse", "fileData"}
DECLARATION_FIELDS = {"name", "description", "parameters", "parametersJsonSchema"}


class GeminiServer(LocalServer):
    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1beta/models/{call}", self._call)

    @property
    def base_url(self) -> str:
        return self.origin + "/v1beta"

    async def _call(self, request: web.Request) -> web.StreamResponse:
        got = await self.record(request)
        model, _, method = request.match_info["call"].partition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            return _error(404, "method not found")
        problem = schema_problem(got.body)
        if problem:
            return _error(400, f"Invalid JSON payload received. {problem}")
        prompt = last_user_text(got.body["contents"])
        if model.startswith("error-"):
            status = int(model.split("-")[1])
            return _error(status, f"Gemini says no; it saw: {prompt}")
        events = answer(model, prompt)
        if method == "generateContent":
            return web.json_response(merge(events))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i, event in enumerate(events):
            if model == "cut" and i == 2:
                return resp
            await resp.write(sse(event))
        return resp


def schema_problem(body: dict[str, Any]) -> str | None:
    """What Gemini would refuse in this body (a strict protobuf JSON parse), or None."""
    unknown = set(body) - REQUEST_FIELDS
    if unknown:
        return f'Unknown name "{sorted(unknown)[0]}": Cannot find field.'
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "contents is not specified"
    for content in contents:
        if content.get("role") not in ("user", "model"):
            return "Please use a valid role: user, model."
        problem = _parts_problem(content.get("parts"))
        if problem:
            return problem
    if "systemInstruction" in body:
        problem = _parts_problem(body["systemInstruction"].get("parts"))
        if problem:
            return problem
    unknown = set(body.get("generationConfig") or {}) - GENERATION_FIELDS
    if unknown:
        return f"Unknown name \"{sorted(unknown)[0]}\" at 'generation_config'."
    for tool in body.get("tools") or []:
        for declaration in tool.get("functionDeclarations", []):
            if set(declaration) - DECLARATION_FIELDS or "name" not in declaration:
                return "invalid function declaration"
    return None


def _parts_problem(parts: Any) -> str | None:
    if not isinstance(parts, list) or not parts:
        return "contents.parts must not be empty."
    for part in parts:
        if len(set(part) & PART_DATA) != 1 or set(part) - PART_DATA - {
            "thoughtSignature",
            "thought",
        }:
            return "a part must hold exactly one kind of data"
    return None


def last_user_text(contents: list[dict[str, Any]]) -> str:
    for content in reversed(contents):
        if content.get("role") == "user":
            texts = [str(p["text"]) for p in content["parts"] if "text" in p]
            if texts:
                return texts[-1]
    return ""


def answer(model: str, prompt: str) -> list[dict[str, Any]]:
    """The stream of GenerateContentResponse events for a behaviour; the last has the
    finish reason and the final usage."""
    if model == "blocked":
        return [
            {
                "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
                "usageMetadata": {"promptTokenCount": PROMPT_TOKENS, "totalTokenCount": 12},
            }
        ]
    if model == "safety":
        return [_event([], "SAFETY", 0)]
    if model == "tools":
        calls: list[dict[str, Any]] = [{"functionCall": c} for c in FUNCTION_CALLS]
        calls[0]["thoughtSignature"] = SIGNATURE
        return [_event([{"text": "Let me check."}], None, 3), _event(calls, "STOP", 9)]
    text = f"echo: {prompt}" if model == "echo" else "Hello from Gemini, friend."
    words = text.split(" ")
    events = [
        _event([{"text": w if i == 0 else " " + w}], None, i + 1) for i, w in enumerate(words)
    ]
    events[-1] = _event(
        [{"text": " " + words[-1]}], "MAX_TOKENS" if model == "max-tokens" else "STOP", None
    )
    # A thought summary part, which is never the answer's text.
    events[0]["candidates"][0]["content"]["parts"].insert(0, {"text": "hmm", "thought": True})
    return events


def merge(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The non-streamed answer: the events' parts in one candidate."""
    last = events[-1]
    if "candidates" not in last:
        return last
    parts = [p for e in events for p in e["candidates"][0].get("content", {}).get("parts", [])]
    merged = dict(last)
    candidate = dict(last["candidates"][0])
    if parts:
        candidate["content"] = {"role": "model", "parts": parts}
    merged["candidates"] = [candidate]
    return merged


def _event(parts: list[dict[str, Any]], finish: str | None, output: int | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    if parts:
        candidate["content"] = {"role": "model", "parts": parts}
    if finish:
        candidate["finishReason"] = finish
    out = OUTPUT_TOKENS if output is None else output
    usage = {
        "promptTokenCount": PROMPT_TOKENS,
        "candidatesTokenCount": out,
        "thoughtsTokenCount": THOUGHT_TOKENS,
        "totalTokenCount": PROMPT_TOKENS + out + THOUGHT_TOKENS,
    }
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "test-1"}


def _error(status: int, message: str) -> web.Response:
    error = {"code": status, "message": message, "status": STATUSES.get(status, "UNKNOWN")}
    return web.json_response({"error": error}, status=status)
