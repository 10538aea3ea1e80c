"""Every route, by who may call it: none without a key (but the public ones), admin routes
never with a tenant's key, a tenant's key never into another tenant or another user; a
request can never choose where it is sent; header limits; no secret or content in logs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import ADMIN_KEY, VeilServer, key_for, start_server, usage_row
from tests.support.upstream import Upstream

#: Who may call each operation of /openapi.json. A new route fails
#: ``test_every_route_is_classified`` until it is listed here, and so tested below.
PUBLIC = {"GET /healthz", "GET /readyz", "GET /metrics"}
ADMIN = {
    "POST /admin/keys",
    "GET /admin/keys",
    "DELETE /admin/keys/{key_id}",
    "GET /admin/nodes",
    "GET /admin/releases",
    "GET /admin/statements",
    "GET /admin/consent-events",
}
KEY = {
    "POST /v1/chat/completions",
    "GET /v1/models",
    "GET /v1/models/{model_id}",
    "POST /v1/moderations",
    "POST /v1/consents",
    "GET /v1/consents",
    "DELETE /v1/consents/{partner}",
    "GET /v1/preferences",
    "PUT /v1/preferences",
    "GET /admin/usage",
    "GET /dashboard/api/session",
    "GET /dashboard/api/overview",
    "GET /dashboard/api/nodes",
    "GET /v1/privacy/report",
}
SECRET = "sk-upstream-secret-3141592653"


def _config(upstream: Upstream) -> str:
    return f"""
server: {{key_cache_seconds: 0, max_header_bytes: 8192}}
providers:
  - {{name: phone, type: fake, tier: device}}
  - {{name: up, type: openai_compatible, base_url: "{upstream.base_url}", api_key: {SECRET}}}
models:
  - {{name: small, deployments: [{{provider: phone, model: echo}}]}}
  - {{name: remote, deployments: [{{provider: up, model: echo}}]}}
tenants:
  - {{name: acme}}
  - {{name: globex}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[VeilServer]:
    srv = start_server(tmp_path_factory.mktemp("isolation") / "home", _config(upstream))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keys(server: VeilServer) -> dict[str, str]:
    return {
        "acme": key_for(server, "acme"),
        "alice": key_for(server, "acme", "alice"),
        "globex": key_for(server, "globex"),
        "bob-globex": key_for(server, "globex", "bob"),
    }


def _operations(server: VeilServer) -> set[str]:
    spec = httpx.get(server.url + "/openapi.json").json()
    return {f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops}


def _call(server: VeilServer, operation: str, key: str | None, **kw: object) -> httpx.Response:
    method, path = operation.split(" ", 1)
    path = path.replace("{key_id}", "nokey").replace("{model_id}", "small")
    path = path.replace("{partner}", "openai")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


def test_every_route_is_classified(server: VeilServer) -> None:
    operations = _operations(server)
    assert operations == PUBLIC | ADMIN | KEY, "classify the new route in tests/test_isolation.py"


@pytest.mark.parametrize("operation", sorted(ADMIN | KEY))
def test_no_key_no_access(server: VeilServer, operation: str) -> None:
    r = _call(server, operation, None)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "missing_api_key"
    bad = _call(server, operation, "veil-0000000000000000000000000000000000000000000")
    assert bad.status_code == 401


@pytest.mark.parametrize("operation", sorted(ADMIN))
def test_a_tenants_key_never_opens_an_admin_route(
    server: VeilServer, keys: dict[str, str], operation: str
) -> None:
    for who in ("acme", "alice"):
        r = _call(server, operation, keys[who], json={"tenant": "acme"})
        assert r.status_code == 403, (who, r.text)
        assert r.json()["error"]["code"] == "admin_required"


@pytest.mark.parametrize("operation", sorted(PUBLIC))
def test_public_routes_hold_no_tenant_data(
    server: VeilServer, keys: dict[str, str], operation: str
) -> None:
    r = _call(server, operation, None)
    assert r.status_code == 200
    for tenant in ("acme", "globex", "alice"):
        assert tenant not in r.text


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/admin/usage", {"period": "2026-11", "tenant": "globex"}),
        ("/dashboard/api/overview", {"tenant": "globex"}),
        ("/v1/privacy/report", {"tenant": "globex", "user": "bob"}),
    ],
)
def test_a_tenants_key_never_reads_another_tenant(
    server: VeilServer, keys: dict[str, str], path: str, params: dict[str, str]
) -> None:
    for who in ("acme", "alice"):
        r = httpx.get(
            server.url + path, params=params, headers={"authorization": f"Bearer {keys[who]}"}
        )
        assert r.status_code == 403, (who, path, r.text)
        assert r.json()["error"]["param"] == "tenant"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/consents", None),
        ("POST", "/v1/consents", {"partner": "openai", "user": "carol"}),
        ("DELETE", "/v1/consents/openai", None),
        ("GET", "/v1/preferences", None),
        ("PUT", "/v1/preferences", {"preferences": {}}),
        ("GET", "/v1/privacy/report", None),
    ],
)
def test_a_users_key_never_acts_for_another_user(
    server: VeilServer, keys: dict[str, str], method: str, path: str, body: dict[str, str] | None
) -> None:
    r = httpx.request(
        method,
        server.url + path,
        params={"user": "carol"},
        json=body,
        headers={"authorization": f"Bearer {keys['alice']}"},
    )
    assert r.status_code == 403, (path, r.text)


def test_the_same_user_id_in_two_tenants_is_two_people(
    server: VeilServer, keys: dict[str, str]
) -> None:
    acme = {"authorization": f"Bearer {keys['acme']}"}
    globex = {"authorization": f"Bearer {keys['globex']}"}
    granted = httpx.post(
        server.url + "/v1/consents", json={"partner": "openai", "user": "dana"}, headers=acme
    )
    assert granted.status_code == 201, granted.text
    mine = httpx.get(server.url + "/v1/consents", params={"user": "dana"}, headers=acme).json()
    theirs = httpx.get(server.url + "/v1/consents", params={"user": "dana"}, headers=globex).json()
    assert [c["partner"] for c in mine["data"]] == ["openai"]
    assert theirs["data"] == []
    put = httpx.put(
        server.url + "/v1/preferences",
        params={"user": "dana"},
        json={"preferences": {"*": "small"}},
        headers=acme,
    )
    assert put.status_code == 200, put.text
    other = httpx.get(server.url + "/v1/preferences", params={"user": "dana"}, headers=globex)
    assert other.json()["preferences"] == {}


@pytest.mark.parametrize(
    "body_extra",
    [
        {"base_url": "http://127.0.0.1:9/v1"},
        {"api_base": "http://127.0.0.1:9/v1"},
        {"provider": {"base_url": "http://127.0.0.1:9"}},
        {"extra_body": {"url": "http://127.0.0.1:9"}},
    ],
)
def test_a_request_cannot_choose_where_it_is_sent(
    server: VeilServer, keys: dict[str, str], body_extra: dict[str, object]
) -> None:
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "remote", "messages": [{"role": "user", "content": "hi"}], **body_extra},
        headers={
            "authorization": f"Bearer {keys['acme']}",
            "x-base-url": "http://127.0.0.1:9",
            "x-veil-provider": "elsewhere",
            "host": "evil.test",
        },
    )
    assert r.status_code == 400  # unknown fields are refused, never forwarded
    assert r.json()["error"]["param"] == next(iter(body_extra))


def test_headers_only_steer_nothing_and_the_upstream_is_the_configured_one(
    server: VeilServer, keys: dict[str, str], upstream: Upstream
) -> None:
    received, r = upstream.capture(
        lambda: httpx.post(
            server.url + "/v1/chat/completions",
            json={"model": "remote", "messages": [{"role": "user", "content": "hi"}]},
            headers={
                "authorization": f"Bearer {keys['acme']}",
                "x-base-url": "http://127.0.0.1:9",
                "x-forwarded-host": "evil.test",
            },
        )
    )
    assert r.status_code == 200
    assert r.headers["x-veil-provider"] == "up"
    assert received.headers["authorization"] == f"Bearer {SECRET}"  # the config's key
    assert "x-base-url" not in received.headers
    assert "x-forwarded-host" not in received.headers


def test_headers_over_the_limit_are_431(server: VeilServer, keys: dict[str, str]) -> None:
    big = {"authorization": f"Bearer {keys['acme']}", "x-padding": "a" * 9000}
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "small", "messages": [{"role": "user", "content": "hi"}]},
        headers=big,
    )
    assert r.status_code == 431
    assert r.json()["error"]["code"] == "headers_too_large"
    many = {f"x-h{i}": "v" * 40 for i in range(300)}
    assert httpx.get(server.url + "/healthz", headers=many).status_code == 431
    assert httpx.get(server.url + "/healthz", headers={"x-ok": "a" * 4000}).status_code == 200


def test_logs_hold_no_secret_key_or_content(
    server: VeilServer, keys: dict[str, str], tmp_path: Path
) -> None:
    canary = "log-canary-2718281828"
    headers = {"authorization": f"Bearer {keys['acme']}"}
    for body in (
        {"model": "remote", "messages": [{"role": "user", "content": canary}]},
        {"model": "nope", "messages": [{"role": "user", "content": canary}]},
        {
            "model": "small",
            "messages": [{"role": "user", "content": canary}],
            "temperature": canary,
        },
        {"model": "small", "messages": [{"role": "user", "content": canary}], "stream": True},
    ):
        httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers)
    httpx.post(
        server.url + "/v1/chat/completions",
        content=b'{"model": "' + canary.encode(),
        headers=headers,
    )
    r = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "remote", "messages": [{"role": "user", "content": "x"}]},
        headers=headers,
    )
    usage_row(server, r.headers["x-request-id"])  # the writer has flushed: logs are current
    log = server.log
    for secret in (canary, SECRET, ADMIN_KEY, *keys.values()):
        assert secret not in log, secret[:12]
    db = (server.home / "veil.db").read_bytes()
    for secret in (canary, SECRET, ADMIN_KEY, *keys.values()):
        assert secret.encode() not in db, secret[:12]
