"""Config files: strict validation, and errors that name the file, line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from veil.config import (
    LlamaCppProviderConfig,
    OpenAICompatibleProviderConfig,
    load_config,
    parse_config,
)
from veil.errors import ConfigError, ConfigProblem


def problems(text: str, monkeypatch: pytest.MonkeyPatch | None = None) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "veil.yaml")
    return info.value.problems


def test_no_file_gives_the_embedded_device_defaults() -> None:
    config = load_config(None)
    assert [type(p) for p in config.providers] == [LlamaCppProviderConfig]
    assert config.providers[0].model_path == "bundled"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.server.max_body_bytes == 4 * 1024 * 1024


def test_a_full_config_parses_and_resolves_env_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UP_KEY", "s3cret")
    config = parse_config(
        """
server: {port: 9000}
providers:
  - {name: device, type: llama_cpp}
  - name: vllm
    type: openai_compatible
    base_url: http://10.0.0.5:8000/v1/
    api_key: env:UP_KEY
models:
  - {name: big, aliases: [large], deployments: [{provider: vllm, model: llama-70b}]}
default_model: big
"""
    )
    vllm = config.providers[1]
    assert isinstance(vllm, OpenAICompatibleProviderConfig)
    assert vllm.api_key is not None
    assert vllm.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(config)
    assert vllm.base_url == "http://10.0.0.5:8000/v1"
    assert config.server.port == 9000


def test_unknown_top_level_key_names_line_and_key() -> None:
    [p] = problems("server:\n  port: 8080\nprovders: []\n")
    assert (p.file, p.line, p.key, p.message) == ("veil.yaml", 3, "provders", "unknown key")
    assert str(p) == "veil.yaml:3: provders: unknown key"


def test_unknown_nested_key_inside_a_provider() -> None:
    text = """providers:
  - name: device
    type: llama_cpp
    model_pth: x.gguf
"""
    [p] = problems(text)
    assert (p.line, p.key, p.message) == (4, "providers[0].model_pth", "unknown key")


def test_wrong_type_points_at_the_value() -> None:
    [p] = problems("server:\n  host: 127.0.0.1\n  port: eighty\n")
    assert (p.line, p.key) == (3, "server.port")
    assert "integer" in p.message


def test_missing_required_key_points_at_its_mapping() -> None:
    text = """providers:
  - {name: device, type: llama_cpp}
  - name: remote
    type: openai_compatible
"""
    [p] = problems(text)
    assert (p.line, p.key, p.message) == (3, "providers[1].base_url", "required key is missing")


def test_unknown_provider_type_is_named() -> None:
    [p] = problems("providers:\n  - {name: x, type: telepathy}\n")
    assert p.line == 2
    assert p.key.startswith("providers[0]")
    assert "llama_cpp" in p.message
    assert "openai_compatible" in p.message


def test_missing_env_secret_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_KEY", raising=False)
    text = """providers:
  - name: r
    type: openai_compatible
    base_url: https://api.example.com/v1
    api_key: env:NOPE_KEY
"""
    [p] = problems(text)
    assert (p.line, p.key) == (5, "providers[0].api_key")
    assert "NOPE_KEY is not set" in p.message


def test_a_literal_secret_never_appears_in_an_error() -> None:
    text = """providers:
  - {name: r, type: openai_compatible, base_url: "ftp://x", api_key: sk-live-DO-NOT-PRINT}
"""
    found = problems(text)
    assert all("sk-live-DO-NOT-PRINT" not in str(p) for p in found)
    assert any(p.key == "providers[0].base_url" for p in found)


def test_deployment_on_unknown_provider() -> None:
    text = """models:
  - name: m
    deployments:
      - {provider: nowhere, model: x}
"""
    [p] = problems(text)
    assert (p.line, p.key) == (4, "models[0].deployments[0].provider")
    assert "no provider named 'nowhere'" in p.message


def test_duplicate_names_and_reserved_names() -> None:
    text = """providers:
  - {name: device, type: llama_cpp}
  - {name: device, type: fake}
models:
  - {name: auto, deployments: [{provider: device, model: x}]}
"""
    found = {(p.line, p.key): p.message for p in problems(text)}
    assert "used twice" in found[(3, "providers[1].name")]
    assert "reserved" in found[(5, "models[0].name")]


def test_duplicate_yaml_keys_are_not_silently_merged() -> None:
    [p] = problems("server:\n  port: 1\n  port: 2\n")
    assert (p.line, p.key, p.message) == (3, "server.port", "duplicate key")


def test_yaml_syntax_error_has_a_line() -> None:
    [p] = problems("server:\n  port: [1, 2\nmodels: []\n")
    assert p.line is not None
    assert p.line >= 2
    assert p.message.startswith("invalid YAML")


def test_top_level_must_be_a_mapping() -> None:
    [p] = problems("- a\n- b\n")
    assert p.message == "must be a mapping of keys"


def test_auth_none_only_on_loopback() -> None:
    [p] = problems("server: {host: 0.0.0.0, auth: none}\n")
    assert (p.line, p.key) == (1, "server.auth")
    assert parse_config("server: {host: 127.0.0.1, auth: none}\n").server.auth == "none"


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert str(tmp_path / "missing.yaml") in str(info.value)


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veil", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_config_check_reports_every_problem_and_exits_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 0\n  colour: blue\n")
    result = _check(bad)
    assert result.returncode == 2
    assert f"{bad}:2: server.port:" in result.stderr
    assert f"{bad}:3: server.colour: unknown key" in result.stderr


def test_cli_config_check_accepts_a_good_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("providers:\n  - {name: f, type: fake}\n")
    result = _check(good)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stderr


def test_private_node_pools_are_checked_key_by_key(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "ab" * 32
    monkeypatch.setenv("LOG_KEY", key)
    monkeypatch.setenv("NODE_TOKEN", "node-token-0123456789")
    good = f"""providers:
  - name: pcc
    type: private_node
    nodes: [http://10.0.0.5:8701/, https://node-2.internal]
    log: {{url: http://log.internal:8090, public_key: env:LOG_KEY}}
    identity_keys: ["{key.upper()}"]
    api_key: env:NODE_TOKEN
"""
    [pool] = parse_config(good, "veil.yaml").providers
    assert pool.tier == "private"
    assert pool.nodes == ["http://10.0.0.5:8701", "https://node-2.internal"]
    assert pool.log.public_key == key
    assert pool.identity_keys == [key]
    assert pool.kem == "mlkem768-x25519"
    [open_pool] = problems(good.replace("    api_key: env:NODE_TOKEN\n", ""))
    assert (open_pool.key, open_pool.line) == ("providers[0].api_key", 2)
    assert "VEIL_NODE_TOKEN" in open_pool.message

    bad = """providers:
  - name: pcc
    type: private_node
    tier: partner
    partner: acme
    nodes: [node-1:8701, http://a, http://a/]
    log: {url: http://log, public_key: "not-a-key"}
    identity_keys: ["abcd"]
    api_key: env:NODE_TOKEN
"""
    found = {(p.line, p.key): p.message for p in problems(bad)}
    assert "http://" in found[(6, "providers[0].nodes")]
    assert "32 bytes as 64 hex digits" in found[(7, "providers[0].log.public_key")]
    assert "32 bytes as 64 hex digits" in found[(8, "providers[0].identity_keys[0]")]
    [twice] = problems(
        bad.replace("node-1:8701, ", "").replace("not-a-key", key).replace('"abcd"', f'"{key}"')
    )
    assert (twice.key, twice.message) == ("providers[0].nodes", "a node is listed twice")
    [tier] = problems(
        bad.replace("node-1:8701, ", "")
        .replace(", http://a/", "")
        .replace("not-a-key", key)
        .replace('"abcd"', f'"{key}"')
    )
    assert (tier.line, tier.key) == (4, "providers[0].tier")
    assert "private tier" in tier.message
