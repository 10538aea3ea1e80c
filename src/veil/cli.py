"""The ``veil`` command: serve, keys, consent, prefs, config check, ask and chat — thin fronts."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

import veil
from veil.attestation.cli import log_app
from veil.auth import KeyStore, Principal
from veil.chat import ChatRequest, Message
from veil.config import Config, ReleaseGateConfig, ServerConfig, load_config
from veil.errors import ConfigError, InvalidRequest, VeilError
from veil.home import default_database_url, veil_home
from veil.ledger import cli as ledger_cli
from veil.node.cli import node_app
from veil.pipeline import ChatResult, RequestContext
from veil.policy import ConsentStore, parse_consent_header
from veil.privacy.cli import pii_app
from veil.routing import PreferenceStore
from veil.routing.cli import route_app
from veil.routing.preferences import check_category
from veil.safety.cli import safety_app
from veil.safety.moderate_cli import moderate
from veil.tasks import CATEGORIES

app = typer.Typer(
    help="Veil: a private, multi-model AI gateway.",
    no_args_is_help=True,
    add_completion=False,
    # Crash output must never show local variables: they can hold prompts and keys.
    pretty_exceptions_show_locals=False,
)
keys_app = typer.Typer(help="Issue, list and revoke API keys.", no_args_is_help=True)
consent_app = typer.Typer(
    help="A user's standing consents to partners, and their audit trail.", no_args_is_help=True
)
prefs_app = typer.Typer(
    help="A user's preferred model per task category, used by model 'auto'.",
    no_args_is_help=True,
)
config_app = typer.Typer(help="Check config files.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(config_app, name="config")
app.add_typer(consent_app, name="consent")
app.add_typer(prefs_app, name="prefs")
app.add_typer(pii_app, name="pii")
app.add_typer(route_app, name="route")
app.add_typer(safety_app, name="safety")
app.add_typer(ledger_cli.ledger_app, name="ledger")
app.add_typer(log_app, name="log")
app.add_typer(node_app, name="node")
app.command("usage")(ledger_cli.usage)
app.command("statement")(ledger_cli.statement)
app.command("moderate")(moderate)

out = Console()
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (default: the embedded defaults)."),
]
ModelOption = Annotated[str, typer.Option("--model", "-m", help="Model name, 'auto' or 'device'.")]
SystemOption = Annotated[str | None, typer.Option(help="A system prompt.")]
MaxTokensOption = Annotated[int | None, typer.Option(help="Longest answer, in tokens.")]
ConsentOption = Annotated[
    str | None,
    typer.Option(help="Partners this request may go to, e.g. 'openai' or '*' (x-veil-consent)."),
]
LOCAL_PRINCIPAL = Principal(tenant="local")


def main() -> None:
    app()


@contextmanager
def _errors() -> Iterator[None]:
    """Turn Veil's errors into a clear message and an exit code, not a traceback."""
    try:
        yield
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/red] {problem}", highlight=False)
        raise typer.Exit(2) from None
    except VeilError as exc:
        err.print(f"[red]error[/red] {exc.message}", highlight=False)
        raise typer.Exit(1) from None


def _load(path: Path | None) -> Config:
    return load_config(path)


@app.command()
def version() -> None:
    """Print Veil's version."""
    out.print(veil.__version__)


# ------------------------------------------------------------------------ serve


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: 8080).")] = None,
) -> None:
    """Run the gateway's HTTP server."""
    import uvicorn

    from veil.api import create_app
    from veil.gateway import Gateway

    with _errors():
        cfg = _load(config)
        overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
        try:
            server = ServerConfig.model_validate({**cfg.server.model_dump(), **overrides})
        except ValidationError:
            err.print(f"[red]error[/red] invalid --host or --port: {host} {port}", highlight=False)
            raise typer.Exit(2) from None
        cfg = cfg.model_copy(update={"server": server})
        if cfg.server.auth == "none" and not cfg.server.is_loopback():
            err.print(
                f"[red]error[/red] server.auth: none is only allowed on a loopback address, "
                f"not {cfg.server.host}",
                highlight=False,
            )
            raise typer.Exit(2)
        home = veil_home()
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        err.print(
            f"Veil {veil.__version__}: state in {home}, config {config or '(embedded defaults)'}"
        )
        gw = Gateway(cfg, home, writer="process")
        new_key = gw.keys.setup_admin_key(home)
        if new_key is not None:  # shown before anything else can fail: it is shown only once
            err.print(
                "[bold]Admin key[/bold] (shown once; also saved to "
                f"{home / 'admin_key'} with mode 0600):\n  {new_key}",
                highlight=False,
            )
        with err.status("Loading models…"):
            gw.prepare()
    if cfg.server.auth == "none":
        err.print(
            "[yellow]warning[/yellow] authentication is off (server.auth: none, loopback only)"
        )
    models = ", ".join(m.name for m in gw.router.models())
    err.print(f"Models: {models}")
    err.print(f"Listening on http://{cfg.server.host}:{cfg.server.port}/v1  (Ctrl-C to stop)")
    uvicorn.run(
        create_app(gw),
        host=cfg.server.host,
        port=cfg.server.port,
        loop="uvloop",
        http="httptools",
        access_log=cfg.server.access_log,
        log_level="info",
        timeout_graceful_shutdown=10,
        server_header=False,
    )


# ------------------------------------------------------------------------ keys


def _engine(config: Path | None) -> Engine:
    return _open_db(_load(config))


def _open_db(cfg: Config) -> Engine:
    from veil.store import db

    engine = db.make_engine(cfg.database.url or default_database_url(veil_home()))
    db.migrate(engine)
    return engine


def _keystore(config: Path | None) -> KeyStore:
    return KeyStore(_engine(config))


def _consents(config: Path | None) -> ConsentStore:
    from veil.store import db

    engine = _engine(config)
    return ConsentStore(engine, db.install_salt(engine))


def _preferences(config: Path | None, check_models: bool = False) -> PreferenceStore:
    from veil.store import db

    cfg = _load(config)
    engine = _open_db(cfg)
    known = _model_names(cfg) if check_models else None
    return PreferenceStore(engine, db.install_salt(engine), known_model=known)


def _model_names(cfg: Config) -> Callable[[str], bool]:
    """The server's model check, from the config alone: builds the providers (which loads
    no model and opens no connection) and the router, as ``veil serve`` would."""
    from veil.providers import build_provider
    from veil.routing import Router

    return Router(cfg, {p.name: build_provider(p) for p in cfg.providers}).knows


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant the key belongs to.")],
    user: Annotated[str | None, typer.Option(help="User the key acts for.")] = None,
    config: ConfigOption = None,
) -> None:
    """Issue an API key. The key is printed once; only its hash is stored."""
    with _errors():
        issued = _keystore(config).create(tenant, user)
    err.print(
        f"Created {issued.id} for tenant {issued.tenant}" + (f", user {user}" if user else "")
    )
    err.print("The key is shown only now; store it safely:")
    out.print(issued.key, highlight=False)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    config: ConfigOption = None,
) -> None:
    """List API keys (their ids and prefixes, never the keys)."""
    with _errors():
        infos = _keystore(config).list(tenant)
    table = Table("id", "prefix", "tenant", "user", "created", "status")
    for i in infos:
        status = f"revoked {i.revoked_at:%Y-%m-%d %H:%M}" if i.revoked_at else "active"
        table.add_row(
            i.id, i.prefix + "…", i.tenant, i.user or "", f"{i.created_at:%Y-%m-%d %H:%M}", status
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…), from `veil keys list`.")],
    config: ConfigOption = None,
) -> None:
    """Revoke an API key. A running server stops accepting it within its key cache time."""
    with _errors():
        info = _keystore(config).revoke(key_id)
    err.print(f"Revoked {info.id} (tenant {info.tenant})")


# ------------------------------------------------------------------------ consent

TenantOption = Annotated[str, typer.Option(help="The user's tenant.")]
UserOption = Annotated[str, typer.Option(help="The user (stored only as a salted pseudonym).")]
PartnerOption = Annotated[str, typer.Option(help="A partner, e.g. openai, or '*' for all.")]


@consent_app.command("grant")
def consent_grant(
    tenant: TenantOption, user: UserOption, partner: PartnerOption, config: ConfigOption = None
) -> None:
    """Record a user's standing consent to a partner (until revoked)."""
    with _errors():
        info = _consents(config).grant(tenant, user, partner, "cli")
    err.print(
        f"Consent to {info.partner} recorded for the user (since {info.granted_at:%Y-%m-%d %H:%M} UTC)"
    )


@consent_app.command("list")
def consent_list(tenant: TenantOption, user: UserOption, config: ConfigOption = None) -> None:
    """List a user's standing consents."""
    with _errors():
        infos = _consents(config).active(tenant, user)
    table = Table("partner", "granted (UTC)")
    for i in infos:
        table.add_row(i.partner, f"{i.granted_at:%Y-%m-%d %H:%M:%S}")
    out.print(table)


@consent_app.command("revoke")
def consent_revoke(
    tenant: TenantOption, user: UserOption, partner: PartnerOption, config: ConfigOption = None
) -> None:
    """Revoke a user's standing consent to a partner."""
    with _errors():
        found = _consents(config).revoke(tenant, user, partner, "cli")
    if not found:
        err.print(f"[red]error[/red] no standing consent to {partner}", highlight=False)
        raise typer.Exit(1)
    err.print(f"Consent to {partner} revoked")


@consent_app.command("events")
def consent_events(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    user: Annotated[str | None, typer.Option(help="Only this user.")] = None,
    config: ConfigOption = None,
) -> None:
    """The audit trail: every grant and revocation (users as pseudonyms)."""
    with _errors():
        events = _consents(config).events(tenant, user)
    table = Table("time (UTC)", "tenant", "user (pseudonym)", "partner", "action", "scope", "via")
    for e in events:
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M:%S}",
            e.tenant,
            e.user_hash[:12] + "…",
            e.partner,
            e.action,
            e.scope,
            e.via,
        )
    out.print(table)


# ------------------------------------------------------------------------ prefs


def _prefs_table(prefs: dict[str, str]) -> Table:
    table = Table("category", "model")
    for category, model in prefs.items():
        table.add_row(category, model)
    return table


@prefs_app.command("show")
def prefs_show(tenant: TenantOption, user: UserOption, config: ConfigOption = None) -> None:
    """Show a user's preferred model per task category."""
    with _errors():
        prefs = _preferences(config).get(tenant, user)
    if not prefs:
        err.print("No preferences: model 'auto' uses the default routing for this user")
        return
    out.print(_prefs_table(prefs))


@prefs_app.command("set")
def prefs_set(
    tenant: TenantOption,
    user: UserOption,
    pairs: Annotated[
        list[str],
        typer.Argument(
            help="CATEGORY=MODEL pairs, e.g. code=claude-sonnet creative_writing=gpt-4o; "
            "CATEGORY= removes one. Categories: " + ", ".join(CATEGORIES) + ", and '*' for "
            "every other one (quote it in the shell).",
            metavar="CATEGORY=MODEL",
            show_default=False,
        ),
    ],
    config: ConfigOption = None,
) -> None:
    """Set some of a user's preferences; the others are kept. Models are checked against
    the models the config (--config) serves, as the server would check them."""
    with _errors():
        changes: dict[str, str] = {}
        for pair in pairs:
            category, sep, model = pair.partition("=")
            if not sep:
                raise InvalidRequest(f"{pair[:64]!r} is not CATEGORY=MODEL")
            changes[check_category(category.strip())] = model.strip()
        store = _preferences(config, check_models=True)
        prefs = store.get(tenant, user) | changes
        prefs = store.replace(tenant, user, {c: m for c, m in prefs.items() if m})
    err.print(f"Preferences saved for the user ({len(prefs)} categories)")
    out.print(_prefs_table(prefs))


@prefs_app.command("clear")
def prefs_clear(tenant: TenantOption, user: UserOption, config: ConfigOption = None) -> None:
    """Remove all of a user's preferences."""
    with _errors():
        count = _preferences(config).clear(tenant, user)
    err.print(f"Cleared {count} preferences")


# ------------------------------------------------------------------------ config


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="The YAML config file.")]) -> None:
    """Validate a config file; print each problem with file, line and key."""
    with _errors():
        cfg = load_config(file)
    err.print(
        f"[green]ok[/green] {file}: {len(cfg.providers)} providers, {len(cfg.models)} models",
        highlight=False,
    )


@app.command()
def doctor(config: ConfigOption = None) -> None:
    """Report risky settings: open auth, plain-HTTP partners, a missing or short admin key,
    secrets in the config file, files others can read. Exit 1 if anything is critical."""
    from veil.doctor import examine

    with _errors():
        cfg = load_config(config)
    home = veil_home()
    findings = examine(cfg, config, home)
    from rich.table import Table

    styles = {"critical": "bold red", "warning": "yellow", "ok": "green"}
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column()
    for f in findings:
        fix = f"\n[dim]fix: {f.fix}[/dim]" if f.fix and f.severity != "ok" else ""
        table.add_row(f"[{styles[f.severity]}]{f.severity}[/]", f.check, f.message + fix)
    out.print(table, highlight=False)
    counts = {s: sum(f.severity == s for f in findings) for s in ("critical", "warning")}
    err.print(
        f"{counts['critical']} critical, {counts['warning']} warnings "
        f"({config or 'embedded defaults'}, VEIL_HOME={home})",
        highlight=False,
    )
    if counts["critical"]:
        raise typer.Exit(1)


# ------------------------------------------------------------------------ ask / chat


@asynccontextmanager
async def _local_gateway(config: Path | None) -> AsyncIterator[Any]:
    from veil.gateway import Gateway

    with err.status("Loading models…"):
        gw = Gateway(_load(config), veil_home())
        await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


async def _answer(
    gw: Any, model: str, messages: list[Message], max_tokens: int | None, consent: str | None
) -> str:
    request = ChatRequest(model=model, messages=messages, stream=True, max_tokens=max_tokens)
    ctx = RequestContext(uuid.uuid4().hex, LOCAL_PRINCIPAL, parse_consent_header(consent))
    result = await gw.pipeline.chat(ctx, request)
    parts: list[str] = []
    assert not isinstance(result, ChatResult)
    err.print(
        f"[dim]{result.route.tier} · {result.route.deployment.provider.name} · "
        f"{result.route.model.name}[/dim]",
        highlight=False,
    )
    async for chunk in result.chunks:
        for choice in chunk.get("choices", ()):
            piece = choice.get("delta", {}).get("content")
            if piece:
                parts.append(piece)
                out.print(piece, end="", highlight=False, markup=False)
    out.print()
    return "".join(parts)


@app.command()
def ask(
    prompt: Annotated[str, typer.Argument(help="What to ask; '-' reads standard input.")],
    model: ModelOption = "auto",
    system: SystemOption = None,
    max_tokens: MaxTokensOption = None,
    consent: ConsentOption = None,
    config: ConfigOption = None,
) -> None:
    """Ask one question through the same pipeline the server uses."""
    text = sys.stdin.read() if prompt == "-" else prompt
    messages = ([Message(role="system", content=system)] if system else []) + [
        Message(role="user", content=text)
    ]

    async def run() -> None:
        async with _local_gateway(config) as gw:
            await _answer(gw, model, messages, max_tokens, consent)

    with _errors():
        asyncio.run(run())


@app.command()
def chat(
    model: ModelOption = "auto",
    system: SystemOption = None,
    max_tokens: MaxTokensOption = None,
    consent: ConsentOption = None,
    config: ConfigOption = None,
) -> None:
    """Chat interactively (the conversation lives in memory only; /exit or Ctrl-D ends it)."""

    async def run() -> None:
        async with _local_gateway(config) as gw:
            messages = [Message(role="system", content=system)] if system else []
            err.print("Type a message; /reset clears the conversation, /exit quits.")
            while True:
                try:
                    line = await asyncio.to_thread(input, "> ")
                except EOFError:
                    break
                if line.strip() in ("/exit", "/quit"):
                    break
                if line.strip() == "/reset":
                    messages = messages[:1] if system else []
                    continue
                if not line.strip():
                    continue
                messages.append(Message(role="user", content=line))
                try:
                    answer = await _answer(gw, model, messages, max_tokens, consent)
                except VeilError as exc:
                    err.print(f"[red]error[/red] {exc.message}", highlight=False)
                    messages.pop()
                    continue
                messages.append(Message(role="assistant", content=answer))

    with _errors():
        asyncio.run(run())


# ------------------------------------------------------------------------ redteam


@app.command()
def redteam(
    model: Annotated[str, typer.Option("--model", "-m", help="The model to red-team.")],
    config: ConfigOption = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.", min=1)] = 4,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON instead of a table.")
    ] = False,
) -> None:
    """Run the adversarial and benign sets through the whole pipeline against MODEL; store
    the result for its name and version (the release gate reads it). Exit 1 if it failed."""
    from rich.progress import Progress

    from veil.safety import release

    adversarial, benign = release.load_set("adversarial"), release.load_set("benign")

    async def run() -> release.Result:
        async with _local_gateway(config) as gw:
            entry = gw.router.entry(model)
            gate = gw.config.safety.release_gate or ReleaseGateConfig()
            version = next((m.version for m in gw.config.models if m.name == entry.name), "1")
            gw.router.bypass = {entry.name}
            consent = frozenset(d.provider.partner for d in entry.deployments if d.provider.partner)
            with Progress(console=err, transient=True) as progress:
                task = progress.add_task(
                    f"Red-teaming {entry.name}", total=len(adversarial) + len(benign)
                )

                def done() -> None:
                    progress.advance(task)

                attacks = await release.run(
                    gw.pipeline, entry.name, adversarial, consent, done, concurrency
                )
                safe = await release.run(
                    gw.pipeline, entry.name, benign, consent, done, concurrency
                )
            result = release.score(entry.name, version, gate, attacks, safe)
            await asyncio.to_thread(release.store, gw.engine, result)
            return result

    with _errors():
        result = asyncio.run(run())
    if json_out:
        out.print_json(data=_result_json(result))
    else:
        table = Table(title=f"Red team: {result.model} version {result.version}")
        table.add_column("set")
        table.add_column("requests", justify="right")
        table.add_column("rate", justify="right")
        table.add_column("limit", justify="right")
        table.add_row(
            "attack success", str(result.attacks), f"{result.attack_success:.1%}",
            f"{result.thresholds['max_attack_success']:.1%}",
        )  # fmt: skip
        table.add_row(
            "false refusal", str(result.benign), f"{result.false_refusal:.1%}",
            f"{result.thresholds['max_false_refusal']:.1%}",
        )  # fmt: skip
        out.print(table)
        if result.errors:
            err.print(f"[yellow]{result.errors} requests failed and count against passing[/]")
        verdict = "[green]passed[/green]" if result.passed else "[red]failed[/red]"
        out.print(f"{result.model} {result.version}: {verdict} (stored for the release gate)")
    if not result.passed:
        raise typer.Exit(1)


def _result_json(result: Any) -> dict[str, Any]:
    return {
        "model": result.model,
        "version": result.version,
        "passed": result.passed,
        "attack_success": result.attack_success,
        "false_refusal": result.false_refusal,
        "attacks": result.attacks,
        "benign": result.benign,
        "errors": result.errors,
        "thresholds": result.thresholds,
        "by_kind": result.by_kind,
    }
