"""The ``moderate`` stage: the request on its way in, the answer on its way out.

In: before routing, the user's own words and the documents they supplied (tool results;
``role: tool`` and ``function`` messages) are judged by the local classifier and every
remote moderator at once; the worst score per category wins. A category whose action is
``block`` refuses the request (400 ``content_filter``); ``flag`` lets it through and says so
(``x-veil-moderation``, the usage row). A remote moderator that fails is logged and skipped
while the local classifier stands; with no local classifier, the request fails closed (503).

Out: a whole answer is judged once; a blocked one keeps nothing of its text and ends with
``finish_reason: "content_filter"``. A stream is held back by at most ``stream_window``
characters: each time that much new text has come, the answer so far is judged (by every
moderator: a remote one adds its round trip per window, so keep ``stream_window`` large
with remote moderators) and the held text is released, or the stream is stopped there with
a last ``content_filter`` chunk.

Nothing is logged of the text; decisions name categories only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from veil.chat import ChatRequest
from veil.config import Config, LlamaGuardConfig, OpenAIModeratorConfig
from veil.errors import ContentFiltered, UpstreamUnavailable, VeilError
from veil.privacy import PII_TYPES, PiiDetector, Pseudonymizer
from veil.providers.base import Provider
from veil.safety import Moderator, Screen, Verdict
from veil.safety.policy import ALLOWED, Decision, SafetyPolicy

log = logging.getLogger(__name__)

DOCUMENT_ROLES = ("tool", "function")
#: Longer texts are judged on a worker thread, off the event loop.
THREAD_CHARS = 20_000
#: How much of a streaming answer each window's check reads (the end of it).
STREAM_JUDGED = 2_000
#: An answer no moderator could judge, with no local classifier: blocked.
UNJUDGED = Decision(blocked=("moderation_unavailable",))


def screen_of(request: ChatRequest) -> Screen:
    """The user's own words (every user message, latest last) and the documents supplied."""
    prompt = "\n".join(m.text() for m in request.messages if m.role == "user")
    documents = [m.text() for m in request.messages if m.role in DOCUMENT_ROLES and m.text()]
    return Screen(prompt, documents)


def _remote(config: Any, providers: dict[str, Provider]) -> Moderator:
    from veil.safety import remote

    if isinstance(config, OpenAIModeratorConfig):
        return remote.OpenAIModerator(
            config.name,
            config.base_url,
            config.api_key.get_secret_value(),
            model=config.model,
            timeouts=config.timeout,
        )
    if isinstance(config, LlamaGuardConfig):
        return remote.LlamaGuardModerator(config.name, providers[config.provider], config.model)
    return remote.AzureContentSafetyModerator(
        config.name,
        config.endpoint,
        config.api_key.get_secret_value(),
        api_version=config.api_version,
        timeouts=config.timeout,
        shield_prompts=config.shield_prompts,
    )


class Moderation:
    def __init__(
        self, config: Config, providers: dict[str, Provider], detector: PiiDetector | None = None
    ) -> None:
        safety = config.safety
        self.input = safety.input
        self.output = safety.output
        self.window = safety.stream_window
        self.local: Any = None
        thresholds: dict[str, float] = {}
        if safety.local:
            from veil.safety.classifier import LocalModerator

            self.local = LocalModerator()
            thresholds = dict(self.local.thresholds)
        self.remote: list[Moderator] = [_remote(m, providers) for m in safety.moderators]
        #: Moderators run by another company see the text with personal data replaced.
        self._third_party = {
            m.name for m in safety.moderators if not isinstance(m, LlamaGuardConfig)
        }
        self._detector = detector
        self.policy = SafetyPolicy(safety, config.tenants, thresholds)

    def warm(self) -> None:
        if self.local is not None:
            self.local.judge_text("warm up")

    async def start(self) -> None:
        await asyncio.gather(*(m.start() for m in self.remote))

    async def close(self) -> None:
        await asyncio.gather(*(m.close() for m in self.remote), return_exceptions=True)

    # ------------------------------------------------------------------ in

    async def judge(self, screen: Screen) -> Verdict:
        verdict = Verdict()
        if self.remote:
            remote, failed = await self._remote(screen)
            if failed is not None and self.local is None:
                raise UpstreamUnavailable(
                    f"moderator {failed} could not judge the request",
                    code="moderation_unavailable",
                )
            verdict = remote
        if self.local is not None:
            verdict = verdict.merge(await self.local.moderate(screen))
        return verdict

    async def _remote(self, screen: Screen) -> tuple[Verdict, str | None]:
        """Every remote moderator's verdict at once (third parties see personal data
        replaced), and the name of one that failed, if any did (logged, left out)."""
        shared = self._protected(screen) if self._third_party else screen
        results = await asyncio.gather(
            *(m.moderate(shared if m.name in self._third_party else screen) for m in self.remote),
            return_exceptions=True,
        )
        verdict, failed = Verdict(), None
        for moderator, result in zip(self.remote, results, strict=True):
            if isinstance(result, Verdict):
                verdict = verdict.merge(result)
            elif isinstance(result, BaseException):
                code = result.code if isinstance(result, VeilError) else type(result).__name__
                log.warning("moderator %s failed: %s", moderator.name, code)
                failed = moderator.name
        return verdict, failed

    def _protected(self, screen: Screen) -> Screen:
        """The screen with personal data replaced by placeholders (one map per request)."""
        if self._detector is None:
            return screen
        p = Pseudonymizer(self._detector, frozenset(PII_TYPES), "pseudonymize")
        return Screen(p.protect(screen.prompt), [p.protect(d) for d in screen.documents])

    async def check_input(self, tenant: str, request: ChatRequest) -> Decision:
        """The policy's decision on a request (``refusal`` turns a block into the error)."""
        if not self.input:
            return ALLOWED
        screen = screen_of(request)
        if not screen.prompt and not screen.documents:
            return ALLOWED
        return self.policy.decide(tenant, await self.judge(screen))

    @staticmethod
    def refusal(decision: Decision) -> ContentFiltered:
        return ContentFiltered(
            "the request was blocked by the content policy (" + ", ".join(decision.blocked) + ")",
            param="messages",
        )

    # ------------------------------------------------------------------ out

    async def check_answer(self, tenant: str, text: str) -> Decision:
        """The policy's decision on answer text. With no local classifier, an answer no
        moderator could judge is blocked (``moderation_unavailable``), as a request is."""
        if not self.output or not text:
            return ALLOWED
        verdict = Verdict()
        if self.local is not None:
            if len(text) > THREAD_CHARS:
                verdict = await asyncio.to_thread(self.local.judge_text, text)
            else:
                verdict = self.local.judge_text(text)
        if self.remote:
            remote, failed = await self._remote(Screen(text))
            if failed is not None and self.local is None:
                return UNJUDGED
            verdict = verdict.merge(remote)
        return self.policy.decide(tenant, _harm_only(verdict))

    async def guard_stream(
        self, tenant: str, chunks: AsyncIterator[dict[str, Any]], outcome: list[Decision]
    ) -> AsyncIterator[dict[str, Any]]:
        """Pass ``chunks`` on, holding back at most ``window`` characters until the text so
        far has been judged; stop with a ``content_filter`` chunk if it blocks. The decision
        (when not ``allow``) is appended to ``outcome``."""
        if not self.output:
            async for chunk in chunks:
                yield chunk
            return
        text: list[str] = []
        held: list[dict[str, Any]] = []
        pending = 0
        flagged: Decision | None = None
        template: dict[str, Any] | None = None

        async def judged(whole: bool = False) -> Decision:
            # While it streams, the last STREAM_JUDGED characters (what the new window
            # can have changed, in its context); at the end, the whole answer.
            so_far = "".join(text)
            return await self.check_answer(tenant, so_far if whole else so_far[-STREAM_JUDGED:])

        async for chunk in chunks:
            template = chunk
            held.append(chunk)
            for piece in answer_pieces(chunk):
                text.append(piece)
                pending += len(piece)
            if pending < self.window:
                continue
            pending = 0
            decision = await judged()
            if decision.blocked:
                outcome.append(decision)
                yield _filtered(template)
                return
            if decision.flagged:
                flagged = decision
            for item in held:
                yield item
            held.clear()
        if text:
            decision = await judged(whole=True)
            if decision.blocked:
                outcome.append(decision)
                if template is not None:
                    yield _filtered(template)
                return
            if decision.flagged:
                flagged = decision
        for item in held:
            yield item
        if flagged is not None:
            outcome.append(flagged)


def answer_pieces(chunk: dict[str, Any]) -> list[str]:
    """The answer text a streamed chunk carries: content, and tool-call arguments (what a
    model asks a tool to do is part of its answer, and judged with it)."""
    pieces: list[str] = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if isinstance(content, str) and content:
            pieces.append(content)
        for call in delta.get("tool_calls") or ():
            arguments = (call.get("function") or {}).get("arguments")
            if isinstance(arguments, str) and arguments:
                pieces.append(arguments)
    return pieces


def _harm_only(verdict: Verdict) -> Verdict:
    """An answer is judged for harm; prompt attacks are about what the user sent."""
    scores = {
        c: s for c, s in verdict.scores.items() if c not in ("jailbreak", "indirect_injection")
    }
    return Verdict(scores, verdict.sources)


def _filtered(template: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": template.get("id"),
        "object": "chat.completion.chunk",
        "created": template.get("created") or int(time.time()),
        "model": template.get("model"),
        "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter"}],
    }


def filter_body(body: dict[str, Any]) -> None:
    """A blocked whole answer: no text left, ``finish_reason: content_filter``."""
    for choice in body.get("choices") or ():
        message = choice.get("message")
        if isinstance(message, dict):
            message["content"] = ""
            message.pop("tool_calls", None)
        choice["finish_reason"] = "content_filter"
