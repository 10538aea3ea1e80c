"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against a real
gateway with a private node and a partner. Screenshots are kept in
``$VEIL_TEST_ARTIFACTS/dashboard`` (default ``test-artifacts/dashboard``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dashboard import EMAIL, PHONE, Stack, start_stack
from tests.support.server import ADMIN_KEY
from tests.support.upstream import Upstream

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get("VEIL_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts")
)
#: Chromium as root in a sandboxless container, with nothing phoning home.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--headless=new",
]
#: The page refreshes every 5 s and the usage writer flushes about every second.
SEEN = 20_000

if not Path(CHROMIUM).exists():
    pytest.skip(
        "needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("dashboard-ui"), upstream)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield pg
    snap(pg, request.node.name)
    context.close()
    # A script error, or a CSP violation, fails the test that caused it.
    assert [e for e in errors if "401" not in e] == []


def snap(page: Page, name: str) -> None:
    folder = ARTIFACTS / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def login(page: Page, stack: Stack, key: str) -> None:
    page.goto(stack.url + "/dashboard")
    page.get_by_label("API key").fill(key)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("who")).to_be_visible()


def number(page: Page, test_id: str) -> int:
    return int(page.get_by_test_id(test_id).inner_text().replace(",", ""))


def test_a_wrong_key_is_refused_and_the_admin_key_logs_in(page: Page, stack: Stack) -> None:
    page.goto(stack.url + "/dashboard")
    page.get_by_label("API key").fill("veil-not-a-key")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_have_text("That key was not accepted.")
    expect(page.locator("#app")).to_be_hidden()
    page.get_by_label("API key").fill(ADMIN_KEY)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("who")).to_have_text("Admin")
    expect(page.get_by_test_id("total-requests")).to_be_visible()
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0  # the key is forgotten


def test_counts_change_as_requests_are_sent(page: Page, stack: Stack) -> None:
    login(page, stack, ADMIN_KEY)
    page.get_by_test_id("window").select_option("1h")
    expect(page.get_by_test_id("total-requests")).to_be_visible()
    page.wait_for_timeout(1500)  # let anything in flight land before the baseline
    before = {
        k: number(page, f"total-{k}")
        for k in ("requests", "on_device", "private", "partner", "refused")
    }
    alice = stack.keys["alice"]
    for i in range(3):
        assert stack.chat(alice, "small", f"hello {i}").status_code == 200
    assert stack.chat(alice, "big", "on the node").status_code == 200
    sent = stack.chat(alice, "gpt-4o", f"write to {EMAIL} or {PHONE}", consent="openai")
    assert sent.status_code == 200
    assert stack.chat(alice, "gpt-4o-direct", "not from here", consent="openai").status_code == 403

    expect(page.get_by_test_id("total-requests")).to_have_text(
        f"{before['requests'] + 6:,}", timeout=SEEN
    )
    assert number(page, "total-on_device") == before["on_device"] + 3
    assert number(page, "total-private") == before["private"] + 1
    assert number(page, "total-partner") == before["partner"] + 1
    assert number(page, "total-refused") == before["refused"] + 1
    chart = page.locator("#chart-series svg")
    expect(chart).to_have_attribute("role", "img")
    assert "partner" in (chart.get_attribute("aria-label") or "")
    snap(page, "overview")

    page.get_by_role("link", name="What left the device").click()
    row = page.get_by_test_id("partner-row-openai")
    expect(row).to_contain_text("EMAIL_ADDRESS")
    expect(row).to_contain_text("PHONE_NUMBER")
    snap(page, "what-left-the-device")
    page.get_by_role("link", name="Policy & safety").click()
    expect(page.get_by_test_id("denial-row-openai-on-azure-only")).to_be_visible()


def test_filter_by_tenant_and_a_tenant_sees_its_own_only(
    page: Page, browser: Browser, stack: Stack
) -> None:
    assert stack.chat(stack.keys["globex"], "small", "globex says hi").status_code == 200
    login(page, stack, ADMIN_KEY)
    page.get_by_test_id("window").select_option("1h")
    expect(page.get_by_test_id("tenant-filter").locator("option[value=globex]")).to_have_count(
        1, timeout=SEEN
    )
    every = number(page, "total-requests")
    page.get_by_test_id("tenant-filter").select_option("globex")
    expect(page.get_by_test_id("scope")).to_have_text("Tenant globex")
    # globex sent one request in this module, the one above; acme sent all the others.
    expect(page.get_by_test_id("total-requests")).to_have_text("1")
    expect(page.get_by_test_id("total-on_device")).to_have_text("1")
    expect(page.get_by_test_id("total-partner")).to_have_text("0")
    expect(page.locator("[data-testid^=model-row-]")).to_have_count(1)
    page.get_by_role("link", name="Money").click()
    expect(page.get_by_test_id("spend-row-small")).to_be_visible()  # a tenant's spend is by model
    expect(page.locator("#parties")).to_contain_text("all tenants together")

    context = browser.new_context()
    acme = context.new_page()
    try:
        login(acme, stack, stack.keys["acme"])
        acme.get_by_test_id("window").select_option("1h")
        expect(acme.get_by_test_id("who")).to_have_text("Tenant acme")
        expect(acme.get_by_test_id("tenant-filter")).to_be_hidden()
        expect(acme.get_by_test_id("scope")).to_have_text("Tenant acme")
        # Everything but globex's one request, which is not counted here.
        expect(acme.get_by_test_id("total-requests")).to_have_text(f"{every - 1:,}")
        snap(acme, "tenant-acme")
        expect(acme.get_by_role("link", name="Circuit breakers")).to_be_hidden()
        # The page cannot be talked into another tenant either.
        status = acme.evaluate(
            """key => fetch('/dashboard/api/overview?tenant=globex',
                      {headers: {authorization: 'Bearer ' + key}}).then(r => r.status)""",
            stack.keys["acme"],
        )
        assert status == 403
    finally:
        context.close()


def test_open_a_nodes_attestation(page: Page, stack: Stack) -> None:
    login(page, stack, stack.keys["globex"])
    page.get_by_role("link", name="Private nodes").click()
    node = page.get_by_test_id("node-row-0")
    expect(node.get_by_test_id("node-summary-state")).to_have_text("attested", timeout=SEEN)
    expect(page.get_by_test_id("log-tree-size")).to_have_text("1")  # one release in the log
    expect(page.get_by_test_id("log-root-hash")).not_to_be_empty()
    # Closed, the node shows its measurement abbreviated; opened, in full.
    abbreviated = node.get_by_test_id("node-summary-measurement")
    expect(abbreviated).to_have_text(f"{stack.measurement[:12]}…{stack.measurement[-6:]}")
    expect(node.get_by_test_id("node-measurement")).to_be_hidden()
    node.locator("summary").click()
    expect(node.get_by_test_id("node-measurement")).to_have_text(stack.measurement)
    expect(node.get_by_test_id("node-release")).to_contain_text("veil-node 1.0")
    expect(node.get_by_test_id("node-attestation-expires")).not_to_be_empty()
    # The node is redrawn on every refresh (its "last checked" moves): it stays open.
    updated = page.locator("#updated").inner_text()
    expect(page.locator("#updated")).not_to_have_text(updated, timeout=SEEN)
    expect(node.get_by_test_id("node-measurement")).to_be_visible()


def test_export_the_privacy_report(page: Page, stack: Stack, tmp_path: Path) -> None:
    alice = stack.keys["alice"]
    secret = f"private-thought-{uuid.uuid4().hex[:10]}"
    ids = {
        tier: stack.chat(alice, model, f"{secret} {EMAIL} {PHONE}", consent="openai").headers[
            "x-request-id"
        ]
        for tier, model in (("device", "small"), ("private", "big"), ("partner", "gpt-4o"))
    }
    login(page, stack, alice)
    expect(page.get_by_test_id("who")).to_have_text("alice (tenant acme)")
    page.get_by_role("link", name="Privacy report").click()
    expect(page.get_by_test_id(f"privacy-row-{ids['partner']}")).to_be_visible(timeout=SEEN)
    expect(page.get_by_test_id(f"privacy-row-{ids['private']}")).to_be_visible()
    expect(page.get_by_test_id(f"privacy-row-{ids['device']}")).to_have_count(0)
    expect(page.get_by_test_id(f"privacy-row-{ids['partner']}")).to_contain_text("openai")
    expect(page.get_by_label("User")).to_be_hidden()  # a user's key reports on its own user

    with page.expect_download() as info:
        page.get_by_test_id("export-json").click()
    path = tmp_path / "report.json"
    info.value.save_as(path)
    assert re.fullmatch(r"veil-privacy-report-\d{8}\.json", info.value.suggested_filename)
    report = json.loads(path.read_text())
    assert (report["object"], report["user"], report["tenant"]) == (
        "privacy_report",
        "alice",
        "acme",
    )
    rows = {r["id"]: r for r in report["data"]}
    assert ids["device"] not in rows
    assert rows[ids["partner"]]["values_replaced"] == 2
    assert rows[ids["private"]]["node_measurement"] == stack.measurement
    for text in (secret, EMAIL, PHONE):
        assert text not in path.read_text()
        assert text not in page.content()


def test_an_app_key_asks_for_a_users_report(page: Page, stack: Stack) -> None:
    assert stack.chat(stack.keys["alice"], "big", "for the report").status_code == 200
    login(page, stack, stack.keys["acme"])
    page.get_by_role("link", name="Privacy report").click()
    page.get_by_label("User").fill("alice")
    page.get_by_test_id("privacy-show").click()
    expect(page.locator("[data-testid^=privacy-row-]").first).to_be_visible(timeout=SEEN)
    expect(page.get_by_test_id("privacy-private")).not_to_have_text("0")


def test_keyboard_and_labels(page: Page, stack: Stack) -> None:
    page.goto(stack.url + "/dashboard")
    expect(page.get_by_test_id("login-key")).to_be_focused()
    page.evaluate("document.activeElement.blur()")
    for _ in range(4):  # the skip link, then the key
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "login-key":
            break
    expect(page.get_by_test_id("login-key")).to_be_focused()
    page.keyboard.type(ADMIN_KEY)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("who")).to_have_text("Admin")
    expect(page.locator("#h-overview")).to_be_focused()
    for control in page.locator("input, select").all():
        ident = control.get_attribute("id")
        assert ident
        assert page.locator(f"label[for={ident}]").count() == 1, ident
    expect(page.locator("#chart-series svg")).to_have_attribute("role", "img")
    for chart in page.locator("svg").all():
        assert chart.get_attribute("role") == "img"
        assert chart.get_attribute("aria-label")
    # A view opened from the keyboard takes the focus; Tab goes on into it, Enter opens a node.
    page.get_by_role("link", name="Private nodes").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#h-nodes")).to_be_focused()
    node = page.get_by_test_id("node-row-0")
    expect(node).to_be_visible(timeout=SEEN)
    page.keyboard.press("Tab")
    expect(node.locator("summary")).to_be_focused()
    page.keyboard.press("Enter")
    expect(node.get_by_test_id("node-measurement")).to_be_visible()
    # A refresh redraws the node and gives the focus back to it.
    updated = page.locator("#updated").inner_text()
    expect(page.locator("#updated")).not_to_have_text(updated, timeout=SEEN)
    expect(node.locator("summary")).to_be_focused()


def test_a_phone_sized_screen_never_scrolls_sideways(page: Page, stack: Stack) -> None:
    page.set_viewport_size({"width": 390, "height": 800})
    login(page, stack, ADMIN_KEY)
    views = {
        "Overview": "#by-model table",
        "What left the device": "#partners table",
        "Latency": "#latency table",
        "Private nodes": "[data-testid=node-row-0]",
    }
    for view, drawn in views.items():
        page.get_by_role("link", name=view, exact=True).click()
        expect(page.locator(".view:not([hidden]) h2")).to_have_text(view)
        expect(page.locator(drawn)).to_be_visible(timeout=SEEN)
        # Wide tables scroll inside their own box; the page itself stays 390 px wide.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, view
