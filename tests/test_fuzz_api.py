"""Schemathesis against the real gateway's ``/openapi.json``: every operation, with bodies,
parameters and headers generated from the schema (valid and invalid), answers without a
5xx, and every error is Veil's JSON error shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support.server import ADMIN_KEY, VeilServer, start_server

#: Generated requests per operation.
EXAMPLES = 60
CONFIG = """
providers:
  - {name: phone, type: fake, tier: device}
models:
  - {name: small, deployments: [{provider: phone, model: echo}]}
tenants:
  - {name: acme}
safety:
  enabled: true
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VeilServer]:
    srv = start_server(tmp_path_factory.mktemp("fuzz") / "home", CONFIG)
    yield srv
    srv.stop()


def _fuzz(operation: Any, server: VeilServer, seen: dict[str, set[int]]) -> None:
    name = f"{operation.method.upper()} {operation.path}"

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        # The schema's bearer scheme makes schemathesis invent a token; a made-up one only
        # ever meets the 401 (tests/test_auth.py covers that), so use the real key.
        case.headers = {
            k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
        }
        case.headers["authorization"] = f"Bearer {ADMIN_KEY}"
        response = case.call(base_url=server.url, timeout=30)
        seen.setdefault(name, set()).add(response.status_code)
        assert response.status_code < 500, (name, response.status_code, response.text[:300])
        if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
            error = response.json().get("error")
            assert isinstance(error, dict), (name, response.text[:300])
            assert isinstance(error.get("message"), str)

    run()


def test_no_operation_answers_5xx(server: VeilServer) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20  # every route is in the schema, the dashboard's too
    seen: dict[str, set[int]] = {}
    for operation in operations:
        _fuzz(operation, server, seen)
    assert set(seen) == {f"{o.method.upper()} {o.path}" for o in operations}
    assert any(200 <= c < 300 for codes in seen.values() for c in codes)
    assert "Traceback" not in server.log
