"""Tables. Metadata only: no column here ever holds prompt or completion text."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Install-wide values: the user-pseudonym salt, the generated admin key's hash."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: SHA-256 of the whole key; the key itself is shown once and never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    #: The first characters of the key, enough to recognise it in a list.
    prefix: Mapped[str] = mapped_column(String(16))
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    user: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Usage(Base):
    """One row per request: who (pseudonymously), where it went, how much, how it ended."""

    __tablename__ = "usage"
    #: The dashboard reads one tenant's requests by time, the privacy report one user's.
    __table_args__ = (
        Index("ix_usage_tenant_created", "tenant", "created_at"),
        Index("ix_usage_user_created", "tenant", "user_hash", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    #: Salted HMAC of the user id; never the id itself.
    user_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    tier: Mapped[str | None] = mapped_column(String(16), nullable=True)
    provider: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    #: ``reported`` (the upstream's usage) or ``counted`` (Veil counted the tokens).
    token_method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    status: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: Whose model served it and who hosted it (partner tier), for what-left-the-device.
    partner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cloud: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: The policy decision: rules that skipped deployments, or denied the request.
    policy: Mapped[str | None] = mapped_column(String(512), nullable=True)
    #: How consent was given for a partner call: ``request`` or ``standing``.
    consent: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: Values replaced before the request left, by type, as JSON: {"PERSON": 2}. Never values.
    redactions: Mapped[str | None] = mapped_column(String(512), nullable=True)
    #: What the task classifier made of the request (``model: auto`` only).
    category: Mapped[str | None] = mapped_column(String(32), nullable=True)
    difficulty: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: Upstream calls made for this request (retries and failovers included; 0 if none).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: What the tenant is billed and what the upstream charges, in units of 10⁻¹² of
    #: ``metering.currency`` (``veil.ledger.money``).
    billed: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    cost: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    #: The measurement (SHA-256, hex) of the private node that served it, as attested and
    #: proven in the transparency log; null for every other tier.
    served_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: What moderation decided when it was not ``allow`` (``input:flag:violence;output:…``):
    #: categories only, never text.
    moderation: Mapped[str | None] = mapped_column(String(256), nullable=True)
    #: Bytes of request that left the device (0 when it was answered on the device).
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class LedgerEntry(Base):
    """One line of a request's double-entry posting. A request's lines sum to zero.

    ``amount`` is in units of 10⁻¹² of the currency: positive is a debit (the account owes,
    or paid), negative a credit (the account is owed). Accounts: ``tenant:<name>`` (what
    a tenant owes), ``platform`` (the operator running Veil), ``party:<name>`` (a partner,
    cloud or anyone a contract names). Written once per request: the key is the request id
    and the line number, so posting the same request again changes nothing.
    """

    __tablename__ = "ledger_entries"
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: When the request was made (the period a statement puts it in).
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    account: Mapped[str] = mapped_column(String(160))
    amount: Mapped[int] = mapped_column(BigInteger)
    #: ``charge`` (tenant → platform), ``cost`` (platform → the upstream's host), ``share``
    #: (a contract's payer → its party).
    kind: Mapped[str] = mapped_column(String(16))
    #: The account on the other side of this line.
    counterparty: Mapped[str] = mapped_column(String(160))
    contract: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: Copied from the usage row, so that statements need no join.
    tenant: Mapped[str] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(256), nullable=True)

    __table_args__ = {"sqlite_with_rowid": False}  # noqa: RUF012 - read by SQLAlchemy once


class Consent(Base):
    """A user's standing consent to send requests to a partner, until revoked."""

    __tablename__ = "consents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    #: Salted HMAC of the user id (``auth.pseudonym``); never the id itself.
    user_hash: Mapped[str] = mapped_column(String(64), index=True)
    #: A partner name, or ``*`` for every partner.
    partner: Mapped[str] = mapped_column(String(64))
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ConsentEvent(Base):
    """The audit trail: every grant and revocation, append-only."""

    __tablename__ = "consent_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    user_hash: Mapped[str] = mapped_column(String(64))
    partner: Mapped[str] = mapped_column(String(64))
    #: ``grant`` or ``revoke``.
    action: Mapped[str] = mapped_column(String(16))
    #: ``standing`` (until revoked).
    scope: Mapped[str] = mapped_column(String(32))
    #: ``api`` or ``cli``, and the key that did it.
    via: Mapped[str] = mapped_column(String(64))


class Preference(Base):
    """A user's preferred model for one task category (``model: auto`` uses it)."""

    __tablename__ = "preferences"
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    #: Salted HMAC of the user id (``auth.pseudonym``); never the id itself.
    user_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    category: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ModelRelease(Base):
    """The release gate's record of a model: the last red-team result for a name and version.

    A model of a gated tier is routable only while its current version's row says
    ``passed``. The row holds rates and counts, never the prompts or answers."""

    __tablename__ = "model_releases"
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: ``passed`` or ``failed``.
    status: Mapped[str] = mapped_column(String(16))
    attack_success: Mapped[float] = mapped_column(Float)
    false_refusal: Mapped[float] = mapped_column(Float)
    attacks: Mapped[int] = mapped_column(Integer)
    benign: Mapped[int] = mapped_column(Integer)
    #: The thresholds it was held to, and per-kind rates, as JSON.
    detail: Mapped[str] = mapped_column(String(4096))
    run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
