"""Remote moderators: OpenAI's moderation endpoint, Azure AI Content Safety, Llama Guard.

Each turns a ``Screen`` into a ``Verdict`` over the categories it can judge, and nothing
else: a category it did not judge is absent, never 0. The HTTP calls go through the shared
``HttpClient``, so an upstream's error becomes Veil's error (401/403 → ``UpstreamError``
``upstream_auth``, 429 → ``RateLimited`` with its Retry-After, 5xx → ``UpstreamError`` or
``UpstreamUnavailable``) and the upstream's own message, which may quote the text, is never
passed on. Nothing here logs; no error names more than the moderator, a status and a code.

- ``OpenAIModerator``: ``POST {base_url}/moderations`` with the prompt and each document as
  one list ``input``; ``category_scores`` are the scores, the worst over the inputs.
- ``AzureContentSafetyModerator``: ``text:analyze`` per text (split into pieces Azure
  accepts, the worst piece wins) for the four harm categories, and ``text:shieldPrompt``
  for jailbreaks (the prompt) and injected instructions (the documents), all at once.
- ``LlamaGuardModerator``: a Llama Guard 3 model behind any Veil provider, asked as a chat.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import quote

import orjson

from veil.chat import ChatRequest
from veil.config import Timeouts
from veil.errors import UpstreamError
from veil.providers.base import Provider
from veil.providers.http import HttpClient, identifier
from veil.safety import ATTACKS, AZURE_CATEGORIES, CATEGORIES, Screen, Verdict, score_of_severity

T = TypeVar("T")

#: Connections each remote moderator keeps open at most.
MAX_CONNECTIONS: Final = 32


def _texts(screen: Screen) -> list[str]:
    """The prompt and each document, empty ones left out (there is nothing to judge)."""
    return [t for t in (screen.prompt, *screen.documents) if t]


def _only(categories: Sequence[str], score: float = 0.0) -> dict[str, float]:
    return dict.fromkeys(categories, score)


async def _all(calls: Sequence[Awaitable[T]]) -> list[T]:
    """Run ``calls`` at once; on the first failure cancel the rest and raise that error."""
    tasks: list[asyncio.Task[T]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_awaited(c)) for c in calls]
    except BaseExceptionGroup as failed:
        raise _first(failed) from None
    return [t.result() for t in tasks]


async def _awaited(call: Awaitable[T]) -> T:
    return await call


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    error = group.exceptions[0]
    return _first(error) if isinstance(error, BaseExceptionGroup) else error


# ---------------------------------------------------------------------------- OpenAI


class OpenAIModerator:
    """OpenAI's ``POST /v1/moderations`` (``omni-moderation``): the 13 harm categories.

    One call carries the prompt and every document as a list ``input``; the score of a
    category is its worst ``category_scores`` value over the inputs. OpenAI's own
    ``flagged``/``categories`` booleans are not used: Veil's policy applies its own
    thresholds to the scores. Prompt attacks are not judged here.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str,
        model: str = "omni-moderation-latest",
        timeouts: Timeouts | None = None,
    ) -> None:
        self.name = name
        self.categories: tuple[str, ...] = CATEGORIES
        self._model = model
        self._url = base_url.rstrip("/") + "/moderations"
        self._headers = {"authorization": "Bearer " + api_key, "content-type": "application/json"}
        self._http = HttpClient(name, timeouts or Timeouts(), MAX_CONNECTIONS)

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def moderate(self, screen: Screen) -> Verdict:
        texts = _texts(screen)
        if not texts:
            return Verdict(_only(self.categories), [self.name])
        data = await self._http.post_json(
            self._url, {"model": self._model, "input": texts}, self._headers
        )
        results = data.get("results")
        if not isinstance(results, list) or len(results) != len(texts):
            raise UpstreamError(f"moderator {self.name} answered without a result per input")
        scores: dict[str, float] = {}
        for result in results:
            got = result.get("category_scores") if isinstance(result, dict) else None
            if not isinstance(got, dict):
                raise UpstreamError(f"moderator {self.name} answered without category scores")
            for category in self.categories:
                value = got.get(category)
                # A model that does not score a category (the legacy text-moderation models
                # have no "illicit") leaves it unjudged rather than safe.
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    score = min(1.0, max(0.0, float(value)))
                    scores[category] = max(score, scores.get(category, 0.0))
        return Verdict(scores, [self.name])


# ---------------------------------------------------------------------------- Azure

#: Azure's limits (``text:analyze``: 10K characters; ``text:shieldPrompt``: a prompt of
#: 10K characters and at most five documents of 10K characters in all), counted in UTF-16
#: code units, which is never less than Python's count of code points.
AZURE_TEXT_LIMIT: Final = 10_000
AZURE_SHIELD_DOCUMENTS: Final = 5
#: Azure's harm category → the OpenAI categories its severity is reported on: only the
#: parents (``Hate`` → hate and harassment, …); a subcategory is not guessed from them.
AZURE_PARENTS: Final[dict[str, tuple[str, ...]]] = {
    azure: tuple(c for c in covered if "/" not in c) for azure, covered in AZURE_CATEGORIES.items()
}


def azure_error_code(raw: bytes) -> tuple[str | None, str | None]:
    """Azure's ``{"error": {"code", "target"}}`` (identifiers, never its message)."""
    try:
        err = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None, None
    if not isinstance(err, dict):
        return None, None
    return identifier(err.get("code")), identifier(err.get("target"))


def _units(text: str) -> int:
    """Length in UTF-16 code units, as Azure (a .NET service) counts characters."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def azure_chunks(text: str, limit: int | None = None) -> Iterator[str]:
    """``text`` in consecutive pieces of at most ``limit`` UTF-16 units, cut at whitespace
    where there is some in the last fifth of a piece; joined they give ``text`` back."""
    limit = limit or AZURE_TEXT_LIMIT
    start = 0
    while start < len(text):
        end = min(len(text), start + limit)
        while _units(text[start:end]) > limit:
            end -= (_units(text[start:end]) - limit + 1) // 2 or 1
        if end < len(text):
            cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            if cut + 1 > start + limit * 4 // 5:
                end = cut + 1
        yield text[start:end]
        start = end


def _shield_calls(screen: Screen, limit: int) -> list[tuple[str, list[str]]]:
    """``(userPrompt, documents)`` per ``text:shieldPrompt`` call, each within Azure's
    limits: prompt pieces and documents (in pieces) are spread over as many calls as
    needed; a call with no prompt piece left sends an empty ``userPrompt``."""
    prompts = list(azure_chunks(screen.prompt, limit))
    batches: list[list[str]] = []
    size = limit + 1
    for document in screen.documents:
        for piece in azure_chunks(document, limit):
            units = _units(piece)
            if size + units > limit or len(batches[-1]) == AZURE_SHIELD_DOCUMENTS:
                batches.append([])
                size = 0
            batches[-1].append(piece)
            size += units
    calls = max(len(prompts), len(batches), 1)
    prompts += [""] * (calls - len(prompts))
    batches += [[] for _ in range(calls - len(batches))]
    return list(zip(prompts, batches, strict=True))


class AzureContentSafetyModerator:
    """Azure AI Content Safety: ``text:analyze`` and, with ``shield_prompts``, Prompt Shields.

    ``text:analyze`` judges the prompt and each document (in pieces of at most 10K
    characters, the worst piece wins) for Hate, SelfHarm, Sexual and Violence at
    ``FourSeverityLevels``; a severity is reported as ``score_of_severity`` on the parent
    OpenAI categories it covers (``AZURE_PARENTS``): Hate → hate and harassment, SelfHarm →
    self-harm, Sexual → sexual, Violence → violence. ``text:shieldPrompt`` gives
    ``jailbreak`` (1.0/0.0: an attack in the user's prompt) and ``indirect_injection``
    (1.0/0.0: an attack in any document). All calls of one screen run concurrently.
    """

    def __init__(
        self,
        name: str,
        endpoint: str,
        api_key: str,
        api_version: str = "2024-09-01",
        timeouts: Timeouts | None = None,
        shield_prompts: bool = True,
    ) -> None:
        self.name = name
        judged = {c for parents in AZURE_PARENTS.values() for c in parents}
        attacks = ATTACKS if shield_prompts else ()
        self.categories: tuple[str, ...] = tuple(c for c in CATEGORIES if c in judged) + attacks
        self._shield = shield_prompts
        base = endpoint.rstrip("/") + "/contentsafety/text:"
        query = "?api-version=" + quote(api_version, safe="")
        self._analyze_url = base + "analyze" + query
        self._shield_url = base + "shieldPrompt" + query
        self._headers = {"ocp-apim-subscription-key": api_key, "content-type": "application/json"}
        self._http = HttpClient(name, timeouts or Timeouts(), MAX_CONNECTIONS, azure_error_code)

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def moderate(self, screen: Screen) -> Verdict:
        limit = AZURE_TEXT_LIMIT
        texts = _texts(screen)
        pieces = [p for text in texts for p in azure_chunks(text, limit)]
        shields = _shield_calls(screen, limit) if self._shield and texts else []
        calls: list[Awaitable[dict[str, Any]]] = [
            self._http.post_json(
                self._analyze_url,
                {"text": p, "categories": list(AZURE_PARENTS), "outputType": "FourSeverityLevels"},
                self._headers,
            )
            for p in pieces
        ]
        calls += [
            self._http.post_json(
                self._shield_url, {"userPrompt": prompt, "documents": docs}, self._headers
            )
            for prompt, docs in shields
        ]
        answers = await _all(calls)
        scores = _only(self.categories)
        for answer in answers[: len(pieces)]:
            for category, level in self._severities(answer):
                for parent in AZURE_PARENTS[category]:
                    scores[parent] = max(scores[parent], score_of_severity(level))
        for answer, (_, docs) in zip(answers[len(pieces) :], shields, strict=True):
            user, documents = self._attacks(answer, len(docs))
            if user:
                scores["jailbreak"] = 1.0
            if documents:
                scores["indirect_injection"] = 1.0
        return Verdict(scores, [self.name])

    def _severities(self, answer: dict[str, Any]) -> Iterator[tuple[str, int]]:
        analysis = answer.get("categoriesAnalysis")
        if not isinstance(analysis, list):
            raise UpstreamError(f"moderator {self.name} answered without categoriesAnalysis")
        for item in analysis:
            category = item.get("category") if isinstance(item, dict) else None
            level = item.get("severity") if isinstance(item, dict) else None
            if (
                category not in AZURE_PARENTS
                or not isinstance(level, int)
                or isinstance(level, bool)
                or level < 0
            ):
                raise UpstreamError(f"moderator {self.name} answered with an unknown severity")
            yield category, level

    def _attacks(self, answer: dict[str, Any], documents: int) -> tuple[bool, bool]:
        """Whether the prompt, and whether any document, carries an attack."""
        user = answer.get("userPromptAnalysis")
        docs = answer.get("documentsAnalysis", [])
        if (
            not isinstance(user, dict)
            or not isinstance(user.get("attackDetected"), bool)
            or not isinstance(docs, list)
            or len(docs) != documents
            or not all(
                isinstance(d, dict) and isinstance(d.get("attackDetected"), bool) for d in docs
            )
        ):
            raise UpstreamError(f"moderator {self.name} answered with an unknown prompt analysis")
        return user["attackDetected"], any(d["attackDetected"] for d in docs)


# ---------------------------------------------------------------------------- Llama Guard

#: Llama Guard 3's hazard codes → the OpenAI categories each is reported on (1.0).
#: S5 defamation, S6 specialized advice, S7 privacy, S8 intellectual property, S13 elections
#: and S14 code interpreter abuse have no OpenAI category: an answer naming only those
#: leaves every judged category at 0.0.
LLAMA_GUARD_CODES: Final[dict[str, tuple[str, ...]]] = {
    "S1": ("violence", "illicit/violent"),  # violent crimes
    "S2": ("illicit",),  # non-violent crimes
    "S3": ("sexual",),  # sex-related crimes
    "S4": ("sexual", "sexual/minors"),  # child sexual exploitation
    "S5": (),
    "S6": (),
    "S7": (),
    "S8": (),
    "S9": ("illicit/violent", "violence"),  # indiscriminate weapons
    "S10": ("hate",),
    "S11": ("self-harm",),  # suicide & self-harm
    "S12": ("sexual",),  # sexual content
    "S13": (),
    "S14": (),
}
#: Enough for "unsafe" and all fourteen codes; a verdict is never longer.
LLAMA_GUARD_MAX_TOKENS: Final = 48


def parse_llama_guard(answer: str) -> tuple[str, ...] | None:
    """The hazard codes of a Llama Guard answer (``()`` for ``safe``), or None when it is
    not one: ``safe``, or ``unsafe`` and a line of comma-separated codes S1–S14."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    if [line.lower() for line in lines] == ["safe"]:
        return ()
    if len(lines) != 2 or lines[0].lower() != "unsafe":
        return None
    codes = tuple(code.strip().upper() for code in lines[1].split(","))
    if not all(code in LLAMA_GUARD_CODES for code in codes):
        return None
    return codes


class LlamaGuardModerator:
    """A Llama Guard 3 model served by a Veil provider (a private node pool in front of
    vLLM, Ollama, any OpenAI-compatible server).

    The request is the conversation to classify, as a normal chat: one user turn holding
    the prompt with the documents appended. The serving engine's chat template — Llama
    Guard 3's own, shipped with the model — wraps it in the classification task (the S1–S14
    categories, "Provide your safety assessment for ONLY THE LAST User message"); writing
    that task into the message too would have the template wrap it twice. The answer,
    ``safe`` or ``unsafe`` and a line such as ``S1,S10``, becomes 1.0 on the categories
    ``LLAMA_GUARD_CODES`` maps the codes to and 0.0 on the rest of ``categories``. S5
    defamation, S6 specialized advice, S7 privacy, S8 intellectual property, S13 elections
    and S14 code interpreter abuse are not mapped: no OpenAI category covers them. Anything
    else is an ``UpstreamError``.

    The provider belongs to the gateway, which starts and closes it; ``start`` and
    ``close`` here do nothing.
    """

    def __init__(self, name: str, provider: Provider, model: str) -> None:
        self.name = name
        mapped = {c for categories in LLAMA_GUARD_CODES.values() for c in categories}
        self.categories: tuple[str, ...] = tuple(c for c in CATEGORIES if c in mapped)
        self._provider = provider
        self._model = model

    async def start(self) -> None:
        """Nothing: the provider is started with the gateway's other providers."""

    async def close(self) -> None:
        """Nothing: the provider is closed with the gateway's other providers."""

    def request(self, screen: Screen) -> ChatRequest:
        """The classification request for ``screen``."""
        return ChatRequest.model_validate(
            {
                "model": self._model,
                "messages": [{"role": "user", "content": "\n\n".join(_texts(screen))}],
                "max_tokens": LLAMA_GUARD_MAX_TOKENS,
                "temperature": 0.0,
            }
        )

    async def moderate(self, screen: Screen) -> Verdict:
        if not _texts(screen):
            return Verdict(_only(self.categories), [self.name])
        completion = await self._provider.complete(self.request(screen), self._model)
        codes = self._codes(completion.body)
        scores = _only(self.categories)
        for code in codes:
            for category in LLAMA_GUARD_CODES[code]:
                scores[category] = 1.0
        return Verdict(scores, [self.name])

    def _codes(self, body: dict[str, Any]) -> tuple[str, ...]:
        choices = body.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        codes = parse_llama_guard(content) if isinstance(content, str) else None
        # A verdict cut short may have lost a code ("S1" of "S10"): not trusted either.
        if codes is None or (isinstance(choice, dict) and choice.get("finish_reason") == "length"):
            raise UpstreamError(
                f"moderator {self.name} answered with something other than a Llama Guard verdict",
                code="moderation_unparseable",
            )
        return codes
