"""Which model serves a request, and which come next if it fails.

The catalog is built once at start-up from the config's ``models`` plus the models each
provider offers on its own (the device model, the fake provider's behaviours). A request
names a model, an alias, ``device`` or ``auto``; ``plan`` turns it into an ordered list of
candidate models — the first is the target, the rest are tried when every deployment of the
ones before has failed. Policy and consent are applied to the plan by the pipeline.

``auto``, most private first (docs/routing.md):

1. the device, when the task's category is one of its skills, the request is simple, it
   fits the device's context window and asks for nothing the device cannot do;
2. else the private tier (``routing.private``), when a private model fits;
3. else the partner model the user prefers for that category, then the tenant's default
   for it, then the global one; then ``default_model``.

The rest of the list is the failover order: the remaining private and partner choices,
and the device as the last resort (a weaker answer beats none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from veil.config import CategoryKey, Config, OnNoConsent
from veil.errors import ConfigError, ConfigProblem, InvalidRequest, ModelNotFound, ModelPending
from veil.providers import Provider
from veil.tasks import Category

if TYPE_CHECKING:
    from veil.chat import ChatRequest
    from veil.routing.classifier import Classification


class Classifier(Protocol):
    def classify(self, text: str) -> Classification: ...


#: Tokens kept free for the answer when the request does not set ``max_tokens``.
DEFAULT_ANSWER_RESERVE = 256


@dataclass(frozen=True, slots=True)
class Deployment:
    provider: Provider
    #: The name sent upstream.
    model: str
    #: Deadlines Veil enforces (seconds; ``None``: only the provider's own timeouts).
    first_token: float | None = None
    total: float | None = None
    #: Connect timeout for HTTP upstreams, when it differs from the provider's.
    connect: float | None = None


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    deployments: tuple[Deployment, ...]
    created: int = 0
    context_window: int | None = None
    fallbacks: tuple[str, ...] = ()

    @property
    def owned_by(self) -> str:
        first = self.deployments[0].provider
        return first.partner or first.name

    @property
    def tier(self) -> str:
        """The least private tier among the deployments (what the model may cost in privacy)."""
        tiers = {d.provider.tier for d in self.deployments}
        return next(t for t in ("partner", "private", "device") if t in tiers)

    def fits(self, tokens: int) -> bool:
        return self.context_window is None or tokens <= self.context_window


@dataclass(frozen=True, slots=True)
class Candidate:
    model: ModelEntry
    #: Why this model, in a few words ("simple chat fits on the device").
    rule: str


@dataclass(frozen=True, slots=True)
class Plan:
    #: The name the caller asked for (``auto``, an alias, a model).
    requested: str
    #: The target first, then the failover order.
    candidates: tuple[Candidate, ...]
    classification: Classification | None = None
    #: Estimated tokens the request needs (prompt and answer); ``auto`` only.
    tokens: int = 0

    def reason(self, candidate: Candidate) -> str:
        if self.classification is None:
            return f"{self.requested}: {candidate.rule}"
        c = self.classification
        return (
            f"auto: {c.category}/{c.difficulty} -> {candidate.model.tier} "
            f"{candidate.model.name} ({candidate.rule})"
        )


@dataclass(frozen=True, slots=True)
class Route:
    #: The name the caller asked for (``auto``, an alias, a model).
    requested: str
    model: ModelEntry
    deployment: Deployment
    reason: str

    @property
    def tier(self) -> str:
        return self.deployment.provider.tier


def prompt_tokens(request: ChatRequest) -> int:
    """The prompt's tokens, estimated: about 3 characters a token (on the safe side of every
    tokenizer we ship for) and 4 per message for the chat template."""
    chars = sum(len(m.text()) for m in request.messages)
    return math.ceil(chars / 3) + 4 * len(request.messages)


def estimate_tokens(request: ChatRequest) -> int:
    """Tokens the request needs: the prompt and the answer."""
    return prompt_tokens(request) + (request.token_limit or DEFAULT_ANSWER_RESERVE)


def task_text(request: ChatRequest) -> str:
    """What the classifier reads: the last user message (where the task is asked for)."""
    for message in reversed(request.messages):
        if message.role == "user":
            return message.text()
    return ""


class Router:
    def __init__(
        self,
        config: Config,
        providers: dict[str, Provider],
        classifier: Classifier | None = None,
    ) -> None:
        #: Models behind the release gate (``veil.safety.release``), kept current by the
        #: gateway; ``bypass``: the one ``veil redteam`` is testing.
        self.pending: set[str] = set()
        self.bypass: set[str] = set()
        self._entries: dict[str, ModelEntry] = {}
        self._aliases: dict[str, str] = {}
        for m in config.models:
            deployments = []
            for d in m.deployments:
                provider = providers[d.provider]
                first_token = d.timeout.first_token or provider.first_token_timeout
                deployments.append(
                    Deployment(provider, d.model, first_token, d.timeout.total, d.timeout.connect)
                )
            window = m.context_window
            if window is None and all(d.provider.context_window for d in deployments):
                window = min(d.provider.context_window or 0 for d in deployments)
            self._entries[m.name] = ModelEntry(
                m.name, tuple(deployments), context_window=window, fallbacks=tuple(m.fallbacks)
            )
            for alias in m.aliases:
                self._aliases[alias] = m.name
        for provider in providers.values():
            for public, upstream in provider.offered_models().items():
                if public not in self._entries and public not in self._aliases:
                    deployment = Deployment(provider, upstream, provider.first_token_timeout)
                    self._entries[public] = ModelEntry(
                        public, (deployment,), context_window=provider.context_window
                    )
        self.device: ModelEntry | None = None
        for provider in providers.values():  # config order: the first device provider wins
            offered = provider.offered_models()
            if provider.tier == "device" and offered:
                self.device = self._entries.get(next(iter(offered)))
                break
        problems: list[ConfigProblem] = []
        self.default = self._named(config.default_model, ("default_model",), problems)
        if self.default is None:
            self.default = self.device
        routing = config.routing
        self._skills = frozenset(routing.device_skills)
        if routing.private is None:
            self.private = tuple(
                self._entries[m.name]
                for m in config.models
                if all(d.provider.tier == "private" for d in self._entries[m.name].deployments)
            )
        else:
            private = []
            for i, name in enumerate(routing.private):
                entry = self._named(name, ("routing", "private", i), problems)
                if entry is not None and entry.tier == "partner":
                    problems.append(
                        ConfigProblem(
                            "config",
                            None,
                            f"routing.private[{i}]",
                            f"{name!r} has partner deployments; the private tier never "
                            "reaches a partner",
                        )
                    )
                elif entry is not None:
                    private.append(entry)
            self.private = tuple(private)
        self._defaults: dict[str | None, dict[str, ModelEntry]] = {
            None: self._mapping(routing.partner_defaults, ("routing",), problems)
        }
        self._on_no_consent: dict[str | None, OnNoConsent] = {None: routing.on_no_consent}
        for i, tenant in enumerate(config.tenants):
            own = self._mapping(
                tenant.routing.partner_defaults, ("tenants", i, "routing"), problems
            )
            self._defaults[tenant.name] = own
            self._on_no_consent[tenant.name] = tenant.routing.on_no_consent or routing.on_no_consent
        for i, m in enumerate(config.models):
            for j, name in enumerate(m.fallbacks):
                self._named(name, ("models", i, "fallbacks", j), problems)
        if problems:
            raise ConfigError(problems)
        self._classifier = classifier

    # ------------------------------------------------------------ catalog

    def _named(
        self, name: str | None, loc: tuple[str | int, ...], problems: list[ConfigProblem]
    ) -> ModelEntry | None:
        if name is None:
            return None
        entry = self._entries.get(self._aliases.get(name, name))
        if entry is None:
            known = ", ".join(self._entries) or "none"
            key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
            problems.append(
                ConfigProblem("config", None, key, f"no model named {name!r} (known: {known})")
            )
        return entry

    def _mapping(
        self,
        mapping: Mapping[CategoryKey, str],
        loc: tuple[str | int, ...],
        problems: list[ConfigProblem],
    ) -> dict[str, ModelEntry]:
        out: dict[str, ModelEntry] = {}
        for category, name in mapping.items():
            entry = self._named(name, (*loc, "partner_defaults", category), problems)
            if entry is not None:
                out[category] = entry
        return out

    def models(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def knows(self, name: str) -> bool:
        if name == "auto":
            return self.default is not None or bool(self.private)
        if name == "device":
            return self.device is not None
        return name in self._entries or name in self._aliases

    def entry(self, name: str) -> ModelEntry:
        """The catalog entry for a model or alias (``device`` too); 404 if none."""
        if name == "device":
            if self.device is None:
                raise ModelNotFound("no device-tier model is configured", param="model")
            return self.device
        found = self._entries.get(self._aliases.get(name, name))
        if found is None:
            raise ModelNotFound(
                f"the model {name[:100]!r} does not exist; GET /v1/models lists the models",
                param="model",
            )
        return found

    def released(self, name: str) -> ModelEntry:
        """The catalog entry for a model users may call: 404 if none, 403 ``model_pending``
        while it waits behind the release gate."""
        entry = self.entry(name)
        if self._gated(entry):
            raise ModelPending(
                f"the model {entry.name!r} is pending: it reaches users once its red-team "
                f"run has passed (veil redteam --model {entry.name})",
                param="model",
            )
        return entry

    def listed(self) -> list[ModelEntry]:
        """The models users may call now (``GET /v1/models``): pending ones are left out."""
        return [m for m in self._entries.values() if not self._gated(m)]

    def on_no_consent(self, tenant: str) -> OnNoConsent:
        return self._on_no_consent.get(tenant, self._on_no_consent[None])

    @property
    def classifier(self) -> Classifier:
        if self._classifier is None:
            from veil.routing.classifier import default_classifier

            self._classifier = default_classifier()
        return self._classifier

    # ------------------------------------------------------------ planning

    def plan(
        self, request: ChatRequest, tenant: str, preferences: dict[str, str] | None = None
    ) -> Plan:
        if request.model != "auto":
            entry = self.released(request.model)
            rule = "device model" if request.model == "device" else "model named in request"
            candidates = [Candidate(entry, rule)]
            for name in entry.fallbacks:
                fallback = self.entry(name)
                if not self._gated(fallback):
                    candidates.append(Candidate(fallback, f"fallback of {entry.name}"))
            return Plan(request.model, tuple(candidates))
        tokens = estimate_tokens(request)
        classification = self.classifier.classify(task_text(request))
        candidates = self._auto(request, tenant, preferences or {}, classification, tokens)
        if self.pending:
            candidates = [c for c in candidates if not self._gated(c.model)]
        if not candidates and self.knows("auto"):
            device = self.device
            if device is not None and device.fits(tokens):  # it fits, so it cannot do it
                raise InvalidRequest(
                    "the request asks for what only larger models do (tools, response_format, "
                    "logprobs or images), and 'auto' has no model for it here: configure a "
                    "private model or a partner default, or name a model",
                    param="model",
                    code="unsupported_parameter",
                )
            raise InvalidRequest(
                f"the request needs about {tokens} tokens (prompt and answer); no model "
                "'auto' may choose has a context window that large",
                param="messages",
                code="context_length_exceeded",
            )
        if not candidates:
            raise ModelNotFound(
                "no model is configured to serve 'auto': configure a device model, a private "
                "model, or default_model",
                param="model",
            )
        return Plan("auto", tuple(candidates), classification, tokens)

    def _gated(self, entry: ModelEntry) -> bool:
        """Behind the release gate: pending, and not the model ``veil redteam`` is testing."""
        return entry.name in self.pending and entry.name not in self.bypass

    def _device_can(self, request: ChatRequest, tokens: int) -> bool:
        device = self.device
        return (
            device is not None
            and device.fits(tokens)
            and all(d.provider.supports(request) for d in device.deployments)
        )

    def private_fallbacks(self, request: ChatRequest) -> tuple[Candidate, ...]:
        """Where ``on_no_consent: stay_private`` may go, best first: never a model with a
        partner deployment. Asked only when a consent is missing, not on every request."""
        tokens = estimate_tokens(request)
        out = [
            Candidate(m, "private tier")
            for m in self.private
            if m.fits(tokens) and m.tier != "partner"
        ]
        if self.device is not None and self._device_can(request, tokens):
            out.append(Candidate(self.device, "device"))
        return tuple(out)

    def _auto(
        self,
        request: ChatRequest,
        tenant: str,
        preferences: dict[str, str],
        c: Classification,
        tokens: int,
    ) -> list[Candidate]:
        out: list[Candidate] = []

        def add(entry: ModelEntry | None, rule: str) -> None:
            if entry is not None and all(entry is not o.model for o in out):
                out.append(Candidate(entry, rule))

        device_can = self._device_can(request, tokens)
        if device_can and c.category in self._skills and c.difficulty == "simple":
            add(self.device, f"simple {c.category} fits on the device")
        why_not_device = (
            "failover from the device"
            if out
            else self._why_not_device(request, c, tokens, device_can)
        )
        for model in self.private:
            if model.fits(tokens):
                add(model, f"{why_not_device}; private tier first")
        for entry, source in self._partner_choices(tenant, preferences, c.category):
            if entry.fits(tokens):
                add(entry, f"{why_not_device}; {source}")
        default = self.default
        if (
            default is not None
            and default.fits(tokens)
            and (default is not self.device or device_can)
        ):
            add(default, f"{why_not_device}; default model")
        if device_can:
            add(self.device, "last resort: the device")
        return out

    def _why_not_device(
        self, request: ChatRequest, c: Classification, tokens: int, device_can: bool
    ) -> str:
        if self.device is None:
            return "no device model"
        if not self.device.fits(tokens):
            return f"too long for the device ({tokens} tokens)"
        if not device_can:
            return "asks for what the device cannot do"
        if c.category not in self._skills:
            return f"{c.category} is not a device skill"
        return "too complex for the device"

    def _partner_choices(
        self, tenant: str, preferences: dict[str, str], category: Category
    ) -> list[tuple[ModelEntry, str]]:
        out: list[tuple[ModelEntry, str]] = []
        preferred = preferences.get(category) or preferences.get("*")
        if preferred is not None:
            entry = self._entries.get(self._aliases.get(preferred, preferred))
            if entry is not None:  # a preference for a model since removed is ignored
                out.append((entry, f"user prefers {entry.name} for {category}"))
        for scope, label in ((tenant, f"tenant {tenant}'s default"), (None, "default")):
            mapping = self._defaults.get(scope, {})
            entry = mapping.get(category) or mapping.get("*")
            if entry is not None:
                out.append((entry, f"{label} for {category}"))
        return out
