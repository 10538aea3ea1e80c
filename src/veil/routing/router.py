"""Resolve the request's ``model`` to a catalog entry and the deployment to call.

The catalog is built once at start-up from the config's ``models`` plus the models each
provider offers on its own (the device model, the fake provider's behaviours). ``auto``
means the configured ``default_model`` (else the device model) until the task classifier
exists; ``device`` always means the device-tier model.
"""

from __future__ import annotations

from dataclasses import dataclass

from veil.config import Config
from veil.errors import ConfigError, ConfigProblem, ModelNotFound
from veil.providers import Provider


@dataclass(frozen=True, slots=True)
class Deployment:
    provider: Provider
    #: The name sent upstream.
    model: str


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    deployments: tuple[Deployment, ...]
    created: int = 0

    @property
    def owned_by(self) -> str:
        first = self.deployments[0].provider
        return first.partner or first.name


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


class Router:
    def __init__(self, config: Config, providers: dict[str, Provider]) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self._aliases: dict[str, str] = {}
        for m in config.models:
            entry = ModelEntry(
                m.name,
                tuple(Deployment(providers[d.provider], d.model) for d in m.deployments),
            )
            self._entries[m.name] = entry
            for alias in m.aliases:
                self._aliases[alias] = m.name
        for provider in providers.values():
            for public, upstream in provider.offered_models().items():
                if public not in self._entries and public not in self._aliases:
                    self._entries[public] = ModelEntry(public, (Deployment(provider, upstream),))
        self.device: ModelEntry | None = None
        for provider in providers.values():  # config order: the first device provider wins
            offered = provider.offered_models()
            if provider.tier == "device" and offered:
                self.device = self._entries.get(next(iter(offered)))
                break
        if config.default_model is not None:
            name = self._aliases.get(config.default_model, config.default_model)
            if name not in self._entries:
                known = ", ".join(self._entries) or "none"
                raise ConfigError(
                    [
                        ConfigProblem(
                            "config",
                            None,
                            "default_model",
                            f"no model named {config.default_model!r} (known: {known})",
                        )
                    ]
                )
            self.default: ModelEntry | None = self._entries[name]
        else:
            self.default = self.device or next(iter(self._entries.values()), None)

    def models(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def knows(self, name: str) -> bool:
        if name == "auto":
            return self.default is not None
        if name == "device":
            return self.device is not None
        return name in self._entries or name in self._aliases

    def route(self, name: str) -> Route:
        if name == "auto":
            if self.default is None:
                raise ModelNotFound("no model is configured to serve 'auto'", param="model")
            entry, reason = self.default, f"auto -> default model {self.default.name}"
        elif name == "device":
            if self.device is None:
                raise ModelNotFound("no device-tier model is configured", param="model")
            entry, reason = self.device, "device -> on-device model"
        else:
            found = self._entries.get(self._aliases.get(name, name))
            if found is None:
                raise ModelNotFound(
                    f"the model {name[:100]!r} does not exist; GET /v1/models lists the models",
                    param="model",
                )
            entry, reason = found, "model named in request"
        # The first deployment; the pipeline applies policy and consent to the whole chain.
        return Route(name, entry, entry.deployments[0], reason)
