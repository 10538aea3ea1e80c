"""Model preferences per task category: the store, `/v1/preferences` and `veil prefs`."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from tests.support.cli import run
from tests.support.server import VeilServer, key_for
from veil.auth import pseudonym
from veil.errors import InvalidRequest
from veil.routing import PreferenceStore
from veil.store import db
from veil.tasks import CATEGORIES

SALT = "test-salt"
KNOWN = {"claude-sonnet", "gpt-4o", "llama-3.3"}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = db.make_engine(f"sqlite:///{tmp_path / 'veil.db'}")
    db.migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: Engine) -> PreferenceStore:
    return PreferenceStore(engine, SALT, cache_seconds=60, known_model=KNOWN.__contains__)


# ------------------------------------------------------------------------ the store


def test_replace_sets_the_whole_mapping_in_category_order(store: PreferenceStore) -> None:
    assert store.get("acme", "u-1") == {}
    saved = store.replace("acme", "u-1", {"creative_writing": "gpt-4o", "code": "claude-sonnet"})
    assert list(saved.items()) == [("code", "claude-sonnet"), ("creative_writing", "gpt-4o")]
    assert store.get("acme", "u-1") == saved
    assert store.replace("acme", "u-1", {"translate": "llama-3.3"}) == {"translate": "llama-3.3"}
    assert store.get("acme", "u-1") == {"translate": "llama-3.3"}  # `code` is gone
    assert store.replace("acme", "u-1", {}) == {}
    assert store.get("acme", "u-1") == {}


def test_star_stands_for_every_other_category_and_comes_last(store: PreferenceStore) -> None:
    saved = store.replace("acme", "u-1", {"*": "gpt-4o", "code": "claude-sonnet"})
    assert list(saved) == ["code", "*"]
    assert list(store.get("acme", "u-1")) == ["code", "*"]


def test_clear_counts_and_only_touches_that_user(store: PreferenceStore) -> None:
    store.replace("acme", "u-1", {"code": "claude-sonnet", "chat": "gpt-4o"})
    store.replace("acme", "u-2", {"code": "gpt-4o"})
    store.replace("globex", "u-1", {"code": "llama-3.3"})
    assert store.clear("acme", "u-1") == 2
    assert store.clear("acme", "u-1") == 0
    assert store.get("acme", "u-1") == {}
    assert store.get("acme", "u-2") == {"code": "gpt-4o"}
    assert store.get("globex", "u-1") == {"code": "llama-3.3"}


@pytest.mark.parametrize(
    ("prefs", "says"),
    [
        ({"coding": "gpt-4o"}, "'coding' is not a task category; the categories are summarize,"),
        ({"code": ""}, "the model for 'code' must be a name of 1-256 characters"),
        ({"code": "   "}, "the model for 'code' must be a name of 1-256 characters"),
        ({"code": "x" * 257}, "the model for 'code' must be a name of 1-256 characters"),
        ({"code": 7}, "the model for 'code' must be a name of 1-256 characters"),
        ({"code": "auto"}, "cannot be 'auto'"),
        ({"code": "device"}, "cannot be 'device'"),
        ({"code": "gpt-5-nope"}, "'gpt-5-nope' (for 'code') does not exist; GET /v1/models"),
    ],
)
def test_invalid_preferences_are_refused_and_change_nothing(
    store: PreferenceStore, prefs: dict[str, object], says: str
) -> None:
    store.replace("acme", "u-1", {"chat": "gpt-4o"})
    with pytest.raises(InvalidRequest) as info:
        store.replace("acme", "u-1", prefs)  # type: ignore[arg-type]
    assert says in info.value.message
    assert info.value.param == "preferences"
    assert store.get("acme", "u-1") == {"chat": "gpt-4o"}


def test_the_category_error_lists_every_category(store: PreferenceStore) -> None:
    with pytest.raises(InvalidRequest) as info:
        store.replace("acme", "u-1", {"poetry": "gpt-4o"})
    assert all(c in info.value.message for c in CATEGORIES)


def test_without_a_model_check_any_name_but_auto_is_kept(engine: Engine) -> None:
    store = PreferenceStore(engine, SALT)
    assert store.replace("acme", "u-1", {"code": "anything"}) == {"code": "anything"}
    with pytest.raises(InvalidRequest, match="auto"):
        store.replace("acme", "u-1", {"code": "auto"})


@pytest.mark.parametrize(
    ("tenant", "user", "param"),
    [("bad tenant!", "u-1", "tenant"), ("", "u-1", "tenant"), ("acme", "", "user")],
)
def test_tenant_and_user_are_checked(
    store: PreferenceStore, tenant: str, user: str, param: str
) -> None:
    for call in (
        lambda: store.get(tenant, user),
        lambda: store.replace(tenant, user, {"code": "gpt-4o"}),
        lambda: store.clear(tenant, user),
    ):
        with pytest.raises(InvalidRequest) as info:
            call()
        assert info.value.param == param


def test_cached_is_empty_without_a_user_and_asks_no_database(tmp_path: Path) -> None:
    nowhere = db.make_engine(f"sqlite:///{tmp_path / 'missing' / 'veil.db'}")
    try:
        store = PreferenceStore(nowhere, SALT)
        assert asyncio.run(store.cached("acme", None)) == {}
    finally:
        nowhere.dispose()


def test_cache_is_dropped_on_change_here_and_expires_for_other_processes(
    engine: Engine, store: PreferenceStore
) -> None:
    other = PreferenceStore(engine, SALT)  # as the CLI, in another process, would
    store.replace("acme", "u-1", {"code": "claude-sonnet"})
    assert asyncio.run(store.cached("acme", "u-1")) == {"code": "claude-sonnet"}

    other.replace("acme", "u-1", {"code": "gpt-4o"})
    assert asyncio.run(store.cached("acme", "u-1")) == {"code": "claude-sonnet"}  # until expiry
    uncached = PreferenceStore(engine, SALT, cache_seconds=0)
    assert asyncio.run(uncached.cached("acme", "u-1")) == {"code": "gpt-4o"}

    store.replace("acme", "u-1", {"code": "llama-3.3"})
    assert asyncio.run(store.cached("acme", "u-1")) == {"code": "llama-3.3"}  # at once
    store.clear("acme", "u-1")
    assert asyncio.run(store.cached("acme", "u-1")) == {}


def test_a_caller_cannot_change_the_cached_mapping(store: PreferenceStore) -> None:
    store.replace("acme", "u-1", {"code": "claude-sonnet"})
    asyncio.run(store.cached("acme", "u-1"))["code"] = "gpt-4o"
    assert asyncio.run(store.cached("acme", "u-1")) == {"code": "claude-sonnet"}


def test_users_are_stored_only_as_pseudonyms(
    tmp_path: Path, engine: Engine, store: PreferenceStore
) -> None:
    user = "jane.doe-8812@example.org"
    store.replace("acme", user, {"code": "claude-sonnet", "creative_writing": "gpt-4o"})
    engine.dispose()
    files = [p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("veil.db")]
    hashed = pseudonym(SALT, user)
    assert hashed is not None
    assert any(hashed.encode() in data for data in files)  # the rows are there
    assert not any(user.encode() in data for data in files)


# ------------------------------------------------------------------------ the API


def api(server: VeilServer, key: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30)


def test_put_replaces_and_get_returns_the_preferences(server: VeilServer) -> None:
    with api(server, key_for(server, "prefs-a", user="alice")) as http:
        assert http.get("/v1/preferences").json() == {"object": "preferences", "preferences": {}}
        r = http.put(
            "/v1/preferences",
            json={"preferences": {"creative_writing": "private-echo", "code": "private"}},
        )
        assert r.status_code == 200, r.text
        want = {"code": "private", "creative_writing": "private-echo"}
        assert r.json() == {"object": "preferences", "preferences": want}
        assert list(http.get("/v1/preferences").json()["preferences"]) == [
            "code",
            "creative_writing",
        ]
        r = http.put("/v1/preferences", json={"preferences": {"chat": "fake/echo"}})
        assert r.status_code == 200, r.text
        assert http.get("/v1/preferences").json()["preferences"] == {"chat": "fake/echo"}


def test_an_app_key_names_the_user_and_tenants_are_isolated(server: VeilServer) -> None:
    with (
        api(server, key_for(server, "prefs-b")) as app_b,
        api(server, key_for(server, "prefs-c")) as app_c,
        api(server, key_for(server, "prefs-b", user="u-1")) as user_b,
    ):
        r = app_b.put("/v1/preferences", params={"user": "u-1"}, json={"preferences": {}})
        assert r.status_code == 200
        r = app_b.put(
            "/v1/preferences", params={"user": "u-1"}, json={"preferences": {"code": "private"}}
        )
        assert r.status_code == 200, r.text
        assert user_b.get("/v1/preferences").json()["preferences"] == {"code": "private"}
        # The same user id in another tenant is another user.
        assert app_c.get("/v1/preferences", params={"user": "u-1"}).json()["preferences"] == {}
        r = app_c.put(
            "/v1/preferences", params={"user": "u-1"}, json={"preferences": {"code": "fake/echo"}}
        )
        assert r.status_code == 200, r.text
        assert user_b.get("/v1/preferences").json()["preferences"] == {"code": "private"}
        # An app key must name the user.
        r = app_b.get("/v1/preferences")
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "user"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"preferences": {"coding": "private"}}, "'coding' is not a task category"),
        ({"preferences": {"code": "no-such-model"}}, "GET /v1/models lists the models"),
        ({"preferences": {"code": "auto"}}, "cannot be 'auto'"),
        ({"preferences": {"code": 3}}, None),
        ({"preferences": {"code": "private"}, "user": "bob"}, None),
        ({"prefs": {"code": "private"}}, None),
    ],
)
def test_bad_preferences_are_400_and_keep_the_old_ones(
    server: VeilServer, body: dict[str, object], says: str | None
) -> None:
    with api(server, key_for(server, "prefs-d", user="dora")) as http:
        http.put("/v1/preferences", json={"preferences": {"chat": "private"}})
        r = http.put("/v1/preferences", json=body)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error"
        if says is not None:
            assert says in error["message"]
            assert error["param"] == "preferences"
        assert http.get("/v1/preferences").json()["preferences"] == {"chat": "private"}


def test_preferences_need_a_key_and_a_user_key_acts_for_its_user_only(
    server: VeilServer,
) -> None:
    with api(server, None) as anonymous:
        assert anonymous.get("/v1/preferences").status_code == 401
        assert anonymous.put("/v1/preferences", json={"preferences": {}}).status_code == 401
    with api(server, key_for(server, "prefs-e", user="erin")) as http:
        r = http.get("/v1/preferences", params={"user": "frank"})
        assert r.status_code == 403
        assert r.json()["error"]["param"] == "user"
        r = http.put("/v1/preferences", params={"user": "frank"}, json={"preferences": {}})
        assert r.status_code == 403
        assert http.get("/v1/preferences", params={"user": "erin"}).status_code == 200


# ------------------------------------------------------------------------ the CLI


def test_prefs_cli_set_merges_show_and_clear(tmp_path: Path) -> None:
    config = tmp_path / "veil.yaml"
    config.write_text("providers: [{name: fake, type: fake}]\n")
    who = ("--tenant", "acme", "--user", "u-1", "--config", str(config))

    result = run(tmp_path, "prefs", "set", *who, "code=fake/echo", "chat=fake/echo")
    assert result.returncode == 0, result.stderr
    result = run(tmp_path, "prefs", "set", *who, "creative_writing=fake/echo", "chat=")
    assert result.returncode == 0, result.stderr
    shown = run(tmp_path, "prefs", "show", *who)
    assert shown.returncode == 0, shown.stderr
    assert "code" in shown.stdout
    assert "creative_writing" in shown.stdout
    assert "chat" not in shown.stdout  # `chat=` removed it

    bad = run(tmp_path, "prefs", "set", *who, "poetry=fake/echo")
    assert bad.returncode == 1
    assert "'poetry' is not a task category; the categories are summarize" in bad.stderr
    bad = run(tmp_path, "prefs", "set", *who, "code=fake/nope")
    assert bad.returncode == 1
    assert "the model 'fake/nope' (for 'code') does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = run(tmp_path, "prefs", "set", *who, "code")
    assert bad.returncode == 1
    assert "CATEGORY=MODEL" in bad.stderr

    with closing(sqlite3.connect(tmp_path / "veil.db")) as conn:
        rows = conn.execute("SELECT tenant, user_hash, category, model FROM preferences").fetchall()
    assert sorted(r[2:] for r in rows) == [("code", "fake/echo"), ("creative_writing", "fake/echo")]
    assert all(r[1] != "u-1" and len(r[1]) == 32 for r in rows)

    cleared = run(tmp_path, "prefs", "clear", *who)
    assert cleared.returncode == 0, cleared.stderr
    assert "Cleared 2 preferences" in cleared.stderr
    assert "No preferences" in run(tmp_path, "prefs", "show", *who).stderr
