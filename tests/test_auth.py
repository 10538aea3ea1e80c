"""Keys: every /v1 and /admin route needs one; keys are shown once and stored hashed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import db_path
from tests.support.server import ADMIN_KEY, VeilServer, start_server

FAKE_ONLY = """
server: {key_cache_seconds: 0.5}
providers:
  - {name: fake, type: fake}
"""
HI = [{"role": "user", "content": "hello"}]


def veil(
    home: Path, *args: str, admin_key: str | None = ADMIN_KEY
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env["VEIL_HOME"] = str(home)
    if admin_key:
        env["VEIL_ADMIN_KEY"] = admin_key
    return subprocess.run(
        [sys.executable, "-m", "veil", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VeilServer]:
    srv = start_server(tmp_path_factory.mktemp("auth") / "home", FAKE_ONLY)
    yield srv
    srv.stop()


def chat(server: VeilServer, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(
        server.url + "/v1/chat/completions",
        headers=headers,
        json={"model": "fake/echo", "messages": HI},
    )


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/chat/completions", "POST"),
        ("/v1/models", "GET"),
        ("/admin/keys", "GET"),
        ("/admin/keys", "POST"),
    ],
)
def test_no_key_is_401(fake_server: VeilServer, path: str, method: str) -> None:
    r = httpx.request(method, fake_server.url + path, json={})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    "header", ["Bearer veil-not-a-real-key", "Basic dXNlcjpwYXNz", "Bearer", ADMIN_KEY]
)
def test_wrong_key_or_scheme_is_401(fake_server: VeilServer, header: str) -> None:
    r = httpx.get(fake_server.url + "/v1/models", headers={"authorization": header})
    assert r.status_code == 401


def test_official_sdk_with_a_wrong_key_gets_authentication_error(fake_server: VeilServer) -> None:
    with (
        openai.OpenAI(base_url=fake_server.url + "/v1", api_key="veil-wrong", max_retries=0) as c,
        pytest.raises(openai.AuthenticationError),
    ):
        c.models.list()


def test_cli_keys_create_list_revoke(fake_server: VeilServer) -> None:
    created = veil(fake_server.home, "keys", "create", "--tenant", "acme", "--user", "u-42")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("veil-")
    assert len(key) > 40
    assert chat(fake_server, key).status_code == 200

    listed = veil(fake_server.home, "keys", "list")
    assert "acme" in listed.stdout
    assert "active" in listed.stdout
    assert key not in listed.stdout  # only a prefix is ever shown again
    key_id = next(w for w in listed.stdout.split() if w.startswith("key_"))

    revoked = veil(fake_server.home, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    time.sleep(0.7)  # the server trusts a verified key for key_cache_seconds (0.5 here)
    r = chat(fake_server, key)
    assert r.status_code == 401
    assert "revoked" in r.json()["error"]["message"]
    assert "revoked" in veil(fake_server.home, "keys", "list").stdout


def test_cli_revoke_of_unknown_key_fails_clearly(fake_server: VeilServer) -> None:
    result = veil(fake_server.home, "keys", "revoke", "key_nope")
    assert result.returncode == 1
    assert "no API key with id 'key_nope'" in result.stderr


def test_admin_api_issues_lists_and_revokes_keys(fake_server: VeilServer) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.post(fake_server.url + "/admin/keys", headers=admin, json={"tenant": "globex"})
    assert r.status_code == 201, r.text
    issued = r.json()
    assert issued["tenant"] == "globex"
    assert issued["key"].startswith("veil-")
    assert chat(fake_server, issued["key"]).status_code == 200

    listed = httpx.get(
        fake_server.url + "/admin/keys", headers=admin, params={"tenant": "globex"}
    ).json()
    assert [k["id"] for k in listed["data"]] == [issued["id"]]
    assert "key" not in listed["data"][0]

    r = httpx.delete(fake_server.url + f"/admin/keys/{issued['id']}", headers=admin)
    assert r.status_code == 200
    assert r.json()["revoked_at"]
    assert chat(fake_server, issued["key"]).status_code == 401  # at once: same process

    assert (
        httpx.delete(fake_server.url + "/admin/keys/key_missing", headers=admin).status_code == 404
    )


def test_admin_api_rejects_bad_bodies(fake_server: VeilServer) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.post(fake_server.url + "/admin/keys", headers=admin, json={"tenant": ""})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tenant"
    r = httpx.post(
        fake_server.url + "/admin/keys",
        headers={**admin, "content-type": "application/json"},
        content=b"{oops",
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(
        fake_server.url + "/admin/keys", headers=admin, json={"tenant": "t", "role": "god"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "role"


def test_tenant_key_cannot_use_admin_routes(fake_server: VeilServer) -> None:
    key = veil(fake_server.home, "keys", "create", "--tenant", "initech").stdout.strip()
    for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys")):
        r = httpx.request(
            method,
            fake_server.url + path,
            headers={"authorization": f"Bearer {key}"},
            json={"tenant": "x"},
        )
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "admin_required"


def test_keys_are_stored_only_as_hashes(fake_server: VeilServer) -> None:
    key = veil(fake_server.home, "keys", "create", "--tenant", "hashco").stdout.strip()
    for path in fake_server.home.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
            assert key[12:].encode() not in path.read_bytes(), path


def test_generated_admin_key_is_printed_once_and_saved_0600(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = start_server(home, FAKE_ONLY, admin_key=None)
    try:
        key_file = home / "admin_key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert len(key) >= 32
        assert key in first.log
        assert (
            httpx.get(
                first.url + "/admin/keys", headers={"authorization": f"Bearer {key}"}
            ).status_code
            == 200
        )
    finally:
        first.stop()
    assert key.encode() not in db_path(home).read_bytes()

    second = start_server(home, FAKE_ONLY, admin_key=None)
    try:
        assert key not in second.log  # shown once only
        assert (
            httpx.get(
                second.url + "/admin/keys", headers={"authorization": f"Bearer {key}"}
            ).status_code
            == 200
        )
    finally:
        second.stop()


def test_short_admin_key_refuses_to_start(tmp_path: Path) -> None:
    result = veil(tmp_path / "home", "serve", "--port", "1", admin_key="too-short")
    assert result.returncode == 2
    assert "VEIL_ADMIN_KEY" in result.stderr
    assert "32" in result.stderr


def test_dev_mode_without_auth_only_on_loopback(tmp_path: Path) -> None:
    srv = start_server(
        tmp_path / "dev", "server: {auth: none}\nproviders: [{name: fake, type: fake}]\n"
    )
    try:
        assert chat(srv, None).status_code == 200
        assert "authentication is off" in srv.log
    finally:
        srv.stop()
    config = tmp_path / "open.yaml"
    config.write_text("server: {auth: none}\nproviders: [{name: fake, type: fake}]\n")
    result = veil(
        tmp_path / "dev2", "serve", "--config", str(config), "--host", "0.0.0.0", "--port", "1"
    )
    assert result.returncode == 2
    assert "loopback" in result.stderr
