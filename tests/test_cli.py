"""`veil ask` and `veil chat` go through the same pipeline as the server."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.support.cli import run


def test_ask_answers_on_the_device_and_meters_it(tmp_path: Path) -> None:
    result = run(tmp_path, "ask", "What is the capital of France?", "--max-tokens", "24")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "device" in result.stderr  # the route taken is shown
    with sqlite3.connect(tmp_path / "veil.db") as conn:
        tenant, tier, status, tokens = conn.execute(
            "SELECT tenant, tier, status, completion_tokens FROM usage"
        ).fetchone()
    assert (tenant, tier, status) == ("local", "device", 200)
    assert 0 < tokens <= 24


def test_ask_reads_stdin_and_uses_a_configured_model(tmp_path: Path) -> None:
    config = tmp_path / "veil.yaml"
    config.write_text("providers: [{name: fake, type: fake}]\n")
    result = run(
        tmp_path, "ask", "-", "--model", "fake/echo", "--config", str(config), stdin="alpha beta"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "alpha beta"


def test_ask_with_unknown_model_fails_clearly(tmp_path: Path) -> None:
    result = run(tmp_path, "ask", "hi", "--model", "nope")
    assert result.returncode == 1
    assert "the model 'nope' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_keeps_the_conversation_in_memory(tmp_path: Path) -> None:
    config = tmp_path / "veil.yaml"
    config.write_text("providers: [{name: fake, type: fake}]\n")
    result = run(
        tmp_path,
        "chat",
        "--model",
        "fake/echo",
        "--config",
        str(config),
        stdin="first line\nsecond\n/exit\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("first line") == 1
    assert "second" in result.stdout


def test_bad_config_file_is_reported_with_line(tmp_path: Path) -> None:
    config = tmp_path / "veil.yaml"
    config.write_text("providers:\n  - {name: fake, type: fake, colour: red}\n")
    result = run(tmp_path, "ask", "hi", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:2: providers[0].colour: unknown key" in result.stderr


def test_serve_with_a_broken_model_file_fails_cleanly(tmp_path: Path) -> None:
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"GGUF but not really")
    config = tmp_path / "veil.yaml"
    config.write_text(f"providers: [{{name: device, type: llama_cpp, model_path: {model}}}]\n")
    result = run(tmp_path, "serve", "--config", str(config), "--port", "1")
    assert result.returncode == 1
    assert "cannot load the device model" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Listening" not in result.stderr


def test_default_model_may_name_a_provider_offered_model(tmp_path: Path) -> None:
    config = tmp_path / "veil.yaml"
    config.write_text("providers: [{name: fake, type: fake}]\ndefault_model: fake/echo\n")
    result = run(tmp_path, "ask", "gamma delta", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "gamma delta"
    config.write_text("providers: [{name: fake, type: fake}]\ndefault_model: fake/nope\n")
    result = run(tmp_path, "ask", "x", "--config", str(config))
    assert result.returncode == 2
    assert "default_model: no model named 'fake/nope'" in result.stderr


def test_consent_cli_grant_list_revoke_and_audit(tmp_path: Path) -> None:
    assert (
        run(
            tmp_path, "consent", "grant", "--tenant", "acme", "--user", "u-1", "--partner", "openai"
        ).returncode
        == 0
    )
    listed = run(tmp_path, "consent", "list", "--tenant", "acme", "--user", "u-1")
    assert "openai" in listed.stdout
    assert (
        run(
            tmp_path,
            "consent",
            "revoke",
            "--tenant",
            "acme",
            "--user",
            "u-1",
            "--partner",
            "openai",
        ).returncode
        == 0
    )
    again = run(
        tmp_path, "consent", "revoke", "--tenant", "acme", "--user", "u-1", "--partner", "openai"
    )
    assert again.returncode == 1
    events = run(tmp_path, "consent", "events", "--tenant", "acme")
    assert "grant" in events.stdout
    assert "revoke" in events.stdout
    assert "u-1" not in events.stdout  # users only as pseudonyms
    bad = run(
        tmp_path,
        "consent",
        "grant",
        "--tenant",
        "bad tenant!",
        "--user",
        "u",
        "--partner",
        "openai",
    )
    assert bad.returncode == 1
    assert "tenant" in bad.stderr
