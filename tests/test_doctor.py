"""``veil doctor``: risky settings are reported, critical ones fail the command, and no
secret is ever printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GOOD_KEY = "k" * 40


def doctor(home: Path, config: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    full.update({"VEIL_HOME": str(home), "COLUMNS": "200", **env})
    args = [sys.executable, "-m", "veil", "doctor"]
    if config is not None:
        path = home.parent / "veil.yaml"
        path.write_text(config)
        path.chmod(0o600)
        args += ["--config", str(path)]
    return subprocess.run(args, capture_output=True, text=True, env=full, timeout=120)


def lines(result: subprocess.CompletedProcess[str], severity: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith(severity)]


def test_a_careful_install_is_all_ok(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    config = """
providers:
  - {name: device, type: llama_cpp, model_path: bundled}
  - {name: oa, type: openai, api_key: env:OPENAI_KEY}
  - {name: local, type: openai_compatible, base_url: "http://127.0.0.1:8000/v1"}
"""
    result = doctor(home, config, VEIL_ADMIN_KEY=GOOD_KEY, OPENAI_KEY="sk-from-the-env")
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(result, "critical") == []
    assert lines(result, "warning") == []
    assert len(lines(result, "ok")) == 5
    assert "0 critical, 0 warnings" in result.stderr


def test_risky_settings_are_named_with_their_fix_and_fail_the_command(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    (home / "admin_key").write_text("a-stored-admin-key-value-0123456789abcdef")
    (home / "admin_key").chmod(0o644)
    config = """
server: {host: 0.0.0.0}
providers:
  - {name: device, type: llama_cpp, model_path: bundled}
  - {name: oa, type: openai, base_url: "http://api.example.com/v1", api_key: sk-literal-1234}
  - {name: pc, type: openai_compatible, base_url: "http://10.0.0.5:8000/v1", headers: {x-token: tok-5678}}
database: {url: "postgresql://veil:hunter2@db.internal/veil"}
tracing: {enabled: true, endpoint: "http://collector.internal:4318/v1/traces"}
"""
    path = tmp_path / "veil.yaml"
    result = doctor(home, config)
    path.chmod(0o644)
    again = doctor(home, None)  # the same home, no config: the file checks still apply
    assert result.returncode == 1
    critical = "\n".join(lines(result, "critical"))
    warning = "\n".join(lines(result, "warning"))
    assert (
        "provider 'oa' (partner openai) is reached over plain HTTP at api.example.com" in critical
    )
    assert "admin_key (the admin key) can be read by other users (mode 644)" in critical
    assert "provider 'pc' (private tier) is reached over plain HTTP at 10.0.0.5" in warning
    assert (
        "holds secrets as literals: database.url, providers.oa.api_key, providers.pc.headers.x-token"
        in warning
    )
    assert "traces go to collector.internal over plain HTTP" in warning
    assert "($VEIL_HOME) can be listed by other users (mode 755)" in warning
    assert "/metrics" in warning
    assert "fix: chmod 600" in result.stdout
    for secret in ("sk-literal-1234", "tok-5678", "hunter2", "a-stored-admin-key-value"):
        assert secret not in result.stdout + result.stderr
    assert again.returncode == 1


def test_a_world_readable_config_with_secrets_is_critical(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    path = tmp_path / "open.yaml"
    path.write_text("providers:\n  - {name: oa, type: openai, api_key: sk-literal-9999}\n")
    path.chmod(0o644)
    full = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    full.update({"VEIL_HOME": str(home), "COLUMNS": "200", "VEIL_ADMIN_KEY": GOOD_KEY})
    result = subprocess.run(
        [sys.executable, "-m", "veil", "doctor", "--config", str(path)],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )
    assert result.returncode == 1
    assert f"{path} holds secrets and other users can read it (mode 644)" in result.stdout
    assert "sk-literal-9999" not in result.stdout


def test_a_short_admin_key_is_critical_and_dev_auth_a_warning(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    result = doctor(home, "server: {auth: none}\n", VEIL_ADMIN_KEY="tiny-key-q7")
    assert result.returncode == 1
    assert "VEIL_ADMIN_KEY is shorter than 32 characters" in "\n".join(lines(result, "critical"))
    assert "authentication is off (server.auth: none)" in "\n".join(lines(result, "warning"))
    assert "tiny-key-q7" not in result.stdout + result.stderr


def test_open_auth_on_a_public_address_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    result = doctor(home, "server:\n  host: 0.0.0.0\n  auth: none\n")
    assert result.returncode == 2
    assert "veil.yaml:3: server.auth" in result.stderr
    assert "only allowed on a loopback host" in result.stderr
