"""The gate every request passes on its way off the device, and back.

Nothing leaves for a partner without the four checks: the hosting policy (``policy``,
applied before the gate sees the deployments), the user's consent for that partner,
personal data replaced by placeholders, and the user's identity stripped. A request bound
for a private node loses the user's identity too (nodes never learn who asks); a request
that stays on the device is not touched. The gate is the only place that makes a request
fit to leave, so a deployment cannot be reached around it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from veil.auth import Principal
from veil.chat import ChatRequest, Message
from veil.errors import ConsentRequired
from veil.policy import ConsentStore, PolicyEngine
from veil.policy.consent import covers
from veil.routing import Deployment

if TYPE_CHECKING:
    from veil.privacy import PiiDetector, Pseudonymizer, StreamRestorer


@dataclass(slots=True)
class Outbound:
    """A request cleared to leave for one deployment, and how to restore its answer."""

    request: ChatRequest
    pseudonymizer: Pseudonymizer | None = None
    #: How consent was given for a partner: ``request`` or ``standing``.
    consent: str | None = None
    #: False when the request stays on the device (nothing leaves).
    leaves: bool = True

    @property
    def bytes_out(self) -> int:
        """The size of what leaves the device: the request as JSON, after redaction."""
        return len(self.request.model_dump_json(exclude_none=True)) if self.leaves else 0

    @property
    def redactions(self) -> dict[str, int]:
        return dict(self.pseudonymizer.counts) if self.pseudonymizer is not None else {}


@dataclass(slots=True)
class Clearance:
    """Per request: the deployments that may be tried, and the work done for them once."""

    deployments: list[Deployment]
    consents: dict[str, str]
    #: Partner deployments left out for want of consent (said in the route reason).
    unconsented: list[Deployment] = field(default_factory=list)
    _protected: tuple[ChatRequest, Pseudonymizer] | None = field(default=None)


class Gate:
    def __init__(
        self,
        policy: PolicyEngine,
        consents: ConsentStore,
        detector: PiiDetector | None,
        salt: str,
    ) -> None:
        self._policy = policy
        self._consents = consents
        self._detector = detector
        self._salt = salt

    # ------------------------------------------------------------ consent

    async def clear(
        self,
        principal: Principal,
        request: ChatRequest,
        allowed: Sequence[Deployment],
        header: frozenset[str],
    ) -> Clearance:
        """Keep the deployments the user has consented to; the others are listed as
        ``unconsented`` (the pipeline decides whether that is a 403)."""
        partners = {d.provider.partner for d in allowed if d.provider.tier == "partner"}
        if not partners:
            return Clearance(list(allowed), {})
        standing = await self._consents.standing(principal.tenant, _user(principal, request))
        consents: dict[str, str] = {}
        for partner in partners:
            if covers(header, partner):
                consents[str(partner)] = "request"
            elif covers(standing, partner):
                consents[str(partner)] = "standing"
        kept = [
            d for d in allowed if d.provider.tier != "partner" or d.provider.partner in consents
        ]
        skipped = [d for d in allowed if d not in kept]
        return Clearance(kept, consents, skipped)

    @staticmethod
    def consent_required(deployments: Iterable[Deployment]) -> ConsentRequired:
        partners = sorted({str(d.provider.partner) for d in deployments})
        return ConsentRequired(
            f"this request would be sent to {', '.join(partners)}; the user has not consented. "
            f"Ask the user, then send 'x-veil-consent: {partners[0] if partners else '*'}' or "
            "record a standing consent (POST /v1/consents)",
            param="x-veil-consent",
        )

    # ------------------------------------------------------------ protect

    async def outbound(
        self,
        principal: Principal,
        request: ChatRequest,
        deployment: Deployment,
        clearance: Clearance,
    ) -> Outbound:
        """The request as it may leave for this deployment."""
        provider = deployment.provider
        if provider.tier == "device":
            return Outbound(request, leaves=False)
        if provider.tier != "partner":
            return Outbound(request.model_copy(update=_ANONYMOUS))
        if clearance._protected is None:
            clearance._protected = await asyncio.to_thread(self._protect, principal, request)
        protected, pseudonymizer = clearance._protected
        user = None
        if provider.send_user_pseudonym:
            user = self._partner_pseudonym(str(provider.partner), _user(principal, request))
        return Outbound(
            protected.model_copy(update={**_ANONYMOUS, "user": user}),
            pseudonymizer,
            clearance.consents.get(str(provider.partner)),
        )

    def _protect(
        self, principal: Principal, request: ChatRequest
    ) -> tuple[ChatRequest, Pseudonymizer]:
        from veil.privacy import Pseudonymizer

        if self._detector is None:  # built at start-up whenever a partner provider exists
            raise RuntimeError("no personal-data detector: refusing to send to a partner")
        privacy = self._policy.privacy(principal.tenant)
        pz = Pseudonymizer(self._detector, frozenset(privacy.types), privacy.mode)
        messages = [_protect_message(m, pz) for m in request.messages]
        return request.model_copy(update={"messages": messages}), pz

    def _partner_pseudonym(self, partner: str, user: str | None) -> str | None:
        if user is None:
            return None
        key = f"{self._salt}:{partner}".encode()
        return "veil-" + hmac.new(key, user.encode(), hashlib.sha256).hexdigest()[:24]

    # ------------------------------------------------------------ restore

    @staticmethod
    def restore_body(body: dict[str, Any], outbound: Outbound) -> None:
        pz = outbound.pseudonymizer
        if pz is None:
            return
        for choice in body.get("choices") or ():
            message = choice.get("message") or {}
            if isinstance(message.get("content"), str):
                message["content"] = pz.restore(message["content"])
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                if isinstance(function.get("arguments"), str):
                    function["arguments"] = pz.restore(function["arguments"], json_string=True)

    @staticmethod
    async def restore_stream(
        chunks: AsyncIterator[dict[str, Any]], outbound: Outbound
    ) -> AsyncIterator[dict[str, Any]]:
        """Put real values back as chunks pass, holding back only a possible placeholder."""
        pz = outbound.pseudonymizer
        assert pz is not None, "only answers to pseudonymized requests are restored"
        restorers: dict[tuple[int, int], StreamRestorer] = {}  # (choice, tool call or -1)

        def restorer(key: tuple[int, int]) -> StreamRestorer:
            if key not in restorers:  # tool-call arguments are JSON: values go in escaped
                restorers[key] = pz.stream_restorer(json_string=key[1] != -1)
            return restorers[key]

        async for chunk in chunks:
            for choice in chunk.get("choices") or ():
                index = int(choice.get("index") or 0)
                delta = choice.get("delta") or {}
                if isinstance(delta.get("content"), str) and delta["content"]:
                    delta["content"] = restorer((index, -1)).feed(delta["content"])
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") or {}
                    if isinstance(function.get("arguments"), str) and function["arguments"]:
                        key = (index, int(call.get("index") or 0))
                        function["arguments"] = restorer(key).feed(function["arguments"])
                if choice.get("finish_reason"):
                    _flush_into(delta, index, restorers)
                    choice["delta"] = delta
            yield chunk
        for index in sorted({i for i, _ in restorers}):  # a stream ended without finish_reason
            last: dict[str, Any] = {}
            _flush_into(last, index, restorers)
            if last:
                yield {"choices": [{"index": index, "delta": last, "finish_reason": None}]}


#: Fields that can identify the user, tie requests together or ask the upstream to keep the
#: conversation (``store``): never sent off the device.
_ANONYMOUS: dict[str, Any] = {
    "user": None,
    "store": None,
    "safety_identifier": None,
    "prompt_cache_key": None,
    "metadata": None,
}


def _flush_into(
    delta: dict[str, Any], index: int, restorers: dict[tuple[int, int], StreamRestorer]
) -> None:
    """Add what the restorers of one choice still hold to its last delta, where it belongs."""
    for key in sorted(k for k in restorers if k[0] == index):
        rest = restorers.pop(key).flush()
        if not rest:
            continue
        if key[1] == -1:
            delta["content"] = (delta.get("content") or "") + rest
        else:
            delta.setdefault("tool_calls", []).append(
                {"index": key[1], "function": {"arguments": rest}}
            )


def _user(principal: Principal, request: ChatRequest) -> str | None:
    return principal.user or request.user


def _protect_message(message: Message, pz: Pseudonymizer) -> Message:
    """Every text a message carries — content, parts, tool-call arguments — protected."""
    update: dict[str, Any] = {}
    if isinstance(message.content, str):
        update["content"] = pz.protect(message.content)
    elif isinstance(message.content, list):
        parts = []
        for part in message.content:
            text = getattr(part, "text", None)
            parts.append(
                part.model_copy(update={"text": pz.protect(text)})
                if isinstance(text, str)
                else part
            )
        update["content"] = parts
    extra = message.model_extra or {}
    calls = extra.get("tool_calls")
    if isinstance(calls, list):
        update["tool_calls"] = [_protect_call(c, pz) for c in calls]
    return message.model_copy(update=update) if update else message


def _protect_call(call: Any, pz: Pseudonymizer) -> Any:
    if not isinstance(call, dict):
        return call
    function = call.get("function")
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        return {**call, "function": {**function, "arguments": pz.protect(function["arguments"])}}
    return call
