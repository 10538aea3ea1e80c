"""``veil doctor``: the risky settings of an install, found before an attacker finds them.

Each check reads the config (as parsed, and as written, to tell literal secrets from
``env:VAR``), the environment and the files under ``$VEIL_HOME``; none contacts anything.
A finding is ``critical`` (fix before serving), ``warning`` (fix unless you mean it) or
``ok``. No finding ever quotes a secret.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from veil.auth import ADMIN_KEY_MIN_LENGTH
from veil.config import Config, loopback_host

Severity = Literal["critical", "warning", "ok"]
#: Keys whose value is a secret, wherever they appear in the config file.
SECRET_KEYS = frozenset({"api_key", "headers", "url", "token"})


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    check: str
    message: str
    #: What to do about it.
    fix: str = ""


def examine(config: Config, config_path: Path | None, home: Path) -> list[Finding]:
    """Every check, in the order they are listed by ``veil doctor``."""
    findings: list[Finding] = []
    for check in (_auth, _admin_key, _transport, _secrets_in_file, _files, _metrics):
        findings.extend(check(config, config_path, home))
    return findings


def _auth(config: Config, _path: Path | None, _home: Path) -> Iterator[Finding]:
    server = config.server
    if server.auth == "none" and not server.is_loopback():
        yield Finding(
            "critical",
            "auth",
            f"authentication is off (server.auth: none) on {server.host}, which is not loopback: "
            "anyone who reaches the port can use the gateway",
            "set server.auth: required (Veil also refuses to start this way)",
        )
    elif server.auth == "none":
        yield Finding(
            "warning",
            "auth",
            f"authentication is off (server.auth: none): a development setup on {server.host}",
            "set server.auth: required before anyone else uses this machine",
        )
    else:
        yield Finding("ok", "auth", "every request needs an API key")


def _admin_key(_config: Config, _path: Path | None, home: Path) -> Iterator[Finding]:
    env = os.environ.get("VEIL_ADMIN_KEY")
    stored = home / "admin_key"
    if env is not None:
        if len(env) < ADMIN_KEY_MIN_LENGTH:
            yield Finding(
                "critical",
                "admin key",
                f"VEIL_ADMIN_KEY is shorter than {ADMIN_KEY_MIN_LENGTH} characters",
                "use a long random key: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )
        else:
            yield Finding("ok", "admin key", "VEIL_ADMIN_KEY is set")
    elif stored.exists():
        yield Finding("ok", "admin key", f"the admin key made at first start is in {stored}")
    else:
        yield Finding(
            "warning",
            "admin key",
            "no admin key yet: VEIL_ADMIN_KEY is not set and none was made",
            f"set VEIL_ADMIN_KEY, or the first `veil serve` makes one in {stored}",
        )


def _transport(config: Config, _path: Path | None, _home: Path) -> Iterator[Finding]:
    plain = False
    for provider in config.providers:
        url = getattr(provider, "base_url", None)
        if not isinstance(url, str) or not url.startswith("http://"):
            continue
        host = urlsplit(url).hostname or ""
        if loopback_host(host):
            continue
        plain = True
        if provider.tier == "partner":
            yield Finding(
                "critical",
                "transport",
                f"provider {provider.name!r} (partner {provider.partner}) is reached over plain "
                f"HTTP at {host}: requests and its API key cross the network unencrypted",
                "use its https:// URL",
            )
        else:
            yield Finding(
                "warning",
                "transport",
                f"provider {provider.name!r} ({provider.tier} tier) is reached over plain HTTP "
                f"at {host}",
                "use https://, or keep it on a network only the gateway can reach",
            )
    tracing = config.tracing
    if tracing.enabled and tracing.endpoint.startswith("http://"):
        host = urlsplit(tracing.endpoint).hostname or ""
        if not loopback_host(host):
            plain = True
            yield Finding(
                "warning",
                "transport",
                f"traces go to {host} over plain HTTP (metadata only, but it names models "
                "and partners)",
                "use an https:// collector endpoint",
            )
    if not plain:
        yield Finding("ok", "transport", "every remote upstream is reached over HTTPS")


def _literal_secrets(node: Any, trail: tuple[str, ...] = ()) -> Iterator[str]:
    """Where the file holds a secret as a literal rather than ``env:VAR``."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = (*trail, str(key))
            if key in SECRET_KEYS and key != "headers":
                if (
                    isinstance(value, str)
                    and not value.startswith("env:")
                    and _is_secret(key, value)
                ):
                    yield ".".join(here)
            elif key == "headers" and isinstance(value, dict):
                for name, v in value.items():
                    if isinstance(v, str) and not v.startswith("env:"):
                        yield ".".join((*here, str(name)))
            else:
                yield from _literal_secrets(value, here)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            name = item.get("name") if isinstance(item, dict) else None
            yield from _literal_secrets(item, (*trail, str(name or i)))


def _is_secret(key: str, value: str) -> bool:
    if key != "url":
        return True
    # A URL is secret when it carries a password (databases, Redis); others are addresses.
    parts = urlsplit(value)
    return parts.password is not None


def _secrets_in_file(config: Config, path: Path | None, _home: Path) -> Iterator[Finding]:
    if path is None:
        yield Finding("ok", "secrets", "no config file: the embedded defaults hold no secrets")
        return
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return  # the loader has said what is wrong with it
    literal = sorted(set(_literal_secrets(raw)))
    if not literal:
        yield Finding("ok", "secrets", f"{path} holds no literal secrets")
        return
    yield Finding(
        "warning",
        "secrets",
        f"{path} holds secrets as literals: {', '.join(literal)}",
        "write them as env:VAR and set the variables in the service's environment",
    )
    if _readable_by_others(path):
        yield Finding(
            "critical",
            "files",
            f"{path} holds secrets and other users can read it (mode {_mode(path)})",
            f"chmod 600 {path}",
        )


def _files(_config: Config, _path: Path | None, home: Path) -> Iterator[Finding]:
    risky = False
    for name, what in (
        ("admin_key", "the admin key"),
        ("veil.db", "the database (usage, consents, key hashes)"),
        ("journal", "the metering journal"),
        ("attestation", "private-node state"),
    ):
        path = home / name
        if path.exists() and _readable_by_others(path):
            risky = True
            yield Finding(
                "critical" if name == "admin_key" else "warning",
                "files",
                f"{path} ({what}) can be read by other users (mode {_mode(path)})",
                f"chmod {'700' if path.is_dir() else '600'} {path}",
            )
    if home.exists() and _readable_by_others(home):
        risky = True
        yield Finding(
            "warning",
            "files",
            f"{home} ($VEIL_HOME) can be listed by other users (mode {_mode(home)})",
            f"chmod 700 {home}",
        )
    if not risky:
        yield Finding("ok", "files", f"nothing under {home} is readable by other users")


def _metrics(config: Config, _path: Path | None, _home: Path) -> Iterator[Finding]:
    if not config.server.is_loopback():
        yield Finding(
            "warning",
            "metrics",
            f"/metrics, /healthz and /readyz need no key and the server listens on "
            f"{config.server.host}: they name models, providers and partners",
            "let only your scraper and load balancer reach them",
        )


def _readable_by_others(path: Path) -> bool:
    return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))


def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))[2:].zfill(3)
