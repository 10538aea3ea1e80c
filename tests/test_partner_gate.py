"""Nothing leaves for a partner without consent, policy, personal-data protection and
identity stripping — end to end, through a real `veil serve` and a real partner upstream."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.partner import client
from tests.support.server import ADMIN_KEY, VeilServer, key_for, start_server, usage_row
from tests.support.upstream import Upstream

EMAIL = "jane.doe@example.org"
PHONE = "+1 415 555 0132"
CARD = "4111 1111 1111 1111"


def gate_config(upstream: Upstream) -> str:
    partner = (
        "type: openai_compatible, tier: partner, partner: acme-ai, cloud: azure, region: eu, "
        f'base_url: "{upstream.base_url}"'
    )
    return f"""
server: {{key_cache_seconds: 0}}
providers:
  - {{name: device, type: llama_cpp, model_path: bundled, n_ctx: 512}}
  - {{name: acme-eu, {partner}}}
  - {{name: acme-eu-pseudo, {partner}, send_user_pseudonym: true}}
  - {{name: acme-direct, type: openai_compatible, tier: partner, partner: acme-ai, cloud: acme,
     region: us, base_url: "{upstream.base_url}", send_user_pseudonym: true}}
models:
  - {{name: partner-echo, deployments: [{{provider: acme-eu, model: echo}}]}}
  - {{name: partner-direct, deployments: [{{provider: acme-direct, model: echo}}]}}
  - {{name: partner-pseudo, deployments: [{{provider: acme-eu-pseudo, model: echo}}]}}
  - {{name: partner-chain, deployments: [{{provider: acme-direct, model: echo}}, {{provider: acme-eu, model: echo}}]}}
tenants:
  - {{name: strict, privacy: {{mode: block}}}}
  - {{name: redacting, privacy: {{mode: redact, types: [EMAIL_ADDRESS]}}}}
  - {{name: hosted}}
policy:
  hosting:
    - {{name: acme-only-on-azure, partner: acme-ai, allowed_clouds: [azure]}}
"""


@pytest.fixture(scope="module")
def gate_server(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[VeilServer]:
    srv = start_server(tmp_path_factory.mktemp("gate") / "home", gate_config(upstream))
    yield srv
    srv.stop()


@pytest.fixture
def http_for(gate_server: VeilServer) -> Iterator[Any]:
    """httpx clients with a given key, closed after the test."""
    opened: list[httpx.Client] = []

    def make(key: str) -> httpx.Client:
        opened.append(
            httpx.Client(base_url=gate_server.url, headers={"authorization": f"Bearer {key}"})
        )
        return opened[-1]

    yield make
    for c in opened:
        c.close()


def personal(text: str = "") -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write to {EMAIL} or call {PHONE}. {text}".strip()}]


def test_no_consent_is_403_and_nothing_is_sent(gate_server: VeilServer, upstream: Upstream) -> None:
    before = len(upstream.received)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(gate_server).chat.completions.create(model="partner-echo", messages=personal())
    assert info.value.code == "consent_required"
    assert "acme-ai" in info.value.message
    assert len(upstream.received) == before


def test_consent_per_request_sends_placeholders_and_restores_the_answer(
    gate_server: VeilServer, upstream: Upstream
) -> None:
    before = len(upstream.received)
    raw = client(gate_server, consent="acme-ai").chat.completions.with_raw_response.create(
        model="partner-echo", messages=personal(), user="user-77"
    )
    answer = raw.parse().choices[0].message.content or ""
    [sent] = upstream.received[before:]
    sent_text = json.dumps(sent.body)
    assert EMAIL not in sent_text
    assert PHONE not in sent_text
    assert "<EMAIL_ADDRESS_1>" in sent_text
    assert "<PHONE_NUMBER_1>" in sent_text
    assert "user" not in sent.body  # identity stripped
    assert EMAIL in answer
    assert PHONE in answer
    assert raw.headers["x-veil-redactions"] == "2"
    assert raw.headers["x-veil-tier"] == "partner"
    row = usage_row(gate_server, raw.headers["x-request-id"])
    assert (row["partner"], row["cloud"], row["consent"]) == ("acme-ai", "azure", "request")
    assert json.loads(row["redactions"]) == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}


def test_streamed_answer_is_restored(gate_server: VeilServer, upstream: Upstream) -> None:
    before = len(upstream.received)
    chunks = list(
        client(gate_server, consent="*").chat.completions.create(
            model="partner-echo", messages=personal("Card " + CARD + "."), stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert EMAIL in text
    assert PHONE in text
    assert CARD in text
    [sent] = upstream.received[before:]
    assert CARD not in json.dumps(sent.body)


def test_same_value_gets_the_same_placeholder_across_messages(
    gate_server: VeilServer, upstream: Upstream
) -> None:
    before = len(upstream.received)
    client(gate_server, consent="acme-ai").chat.completions.create(
        model="partner-echo",
        messages=[
            {"role": "system", "content": f"The user is {EMAIL}."},
            {"role": "assistant", "content": f"Noted, {EMAIL}."},
            {"role": "user", "content": f"Email {EMAIL} and jim@example.net"},
        ],
    )
    [sent] = upstream.received[before:]
    contents = [m["content"] for m in sent.body["messages"]]
    assert all("<EMAIL_ADDRESS_1>" in c for c in contents)
    assert "<EMAIL_ADDRESS_2>" in contents[2]


def test_standing_consent_grant_use_revoke_and_audit(
    gate_server: VeilServer, upstream: Upstream, http_for: Any
) -> None:
    key = key_for(gate_server, "hosted", user="alice-123")
    sdk = client(gate_server, key)
    http = http_for(key)
    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(model="partner-echo", messages=personal())

    r = http.post("/v1/consents", json={"partner": "acme-ai"})
    assert r.status_code == 201, r.text
    raw = sdk.chat.completions.with_raw_response.create(model="partner-echo", messages=personal())
    assert EMAIL in (raw.parse().choices[0].message.content or "")
    assert usage_row(gate_server, raw.headers["x-request-id"])["consent"] == "standing"
    assert [c["partner"] for c in http.get("/v1/consents").json()["data"]] == ["acme-ai"]

    assert http.delete("/v1/consents/acme-ai").status_code == 200
    with pytest.raises(openai.PermissionDeniedError):  # at once
        sdk.chat.completions.create(model="partner-echo", messages=personal())
    assert http.delete("/v1/consents/acme-ai").status_code == 404

    events = httpx.get(
        gate_server.url + "/admin/consent-events",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        params={"tenant": "hosted"},
    ).json()["data"]
    assert [(e["action"], e["partner"], e["scope"]) for e in events] == [
        ("grant", "acme-ai", "standing"),
        ("revoke", "acme-ai", "standing"),
    ]
    assert all(e["user_hash"] != "alice-123" and len(e["user_hash"]) == 32 for e in events)
    # A tenant key cannot read the audit trail, nor act for another user.
    assert http.get("/admin/consent-events").status_code == 403
    assert http.post("/v1/consents", json={"partner": "x", "user": "bob"}).status_code == 403


def test_app_key_names_the_user_for_consent(gate_server: VeilServer, http_for: Any) -> None:
    key = key_for(gate_server, "hosted")
    http = http_for(key)
    assert http.post("/v1/consents", json={"partner": "acme-ai"}).json()["error"]["param"] == "user"
    assert http.post("/v1/consents", json={"partner": "acme-ai", "user": "u-9"}).status_code == 201
    sdk = client(gate_server, key)
    ok = sdk.chat.completions.create(model="partner-echo", messages=personal(), user="u-9")
    assert EMAIL in (ok.choices[0].message.content or "")
    with pytest.raises(openai.PermissionDeniedError):  # another user of the same app
        sdk.chat.completions.create(model="partner-echo", messages=personal(), user="u-10")


def test_hosting_policy_denies_by_rule_name(gate_server: VeilServer, upstream: Upstream) -> None:
    before = len(upstream.received)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(gate_server, consent="*").chat.completions.create(
            model="partner-direct", messages=personal()
        )
    assert info.value.code == "policy_denied"
    assert "acme-only-on-azure" in info.value.message
    assert len(upstream.received) == before


def test_disallowed_deployments_are_skipped_and_said(
    gate_server: VeilServer, upstream: Upstream
) -> None:
    raw = client(gate_server, consent="*").chat.completions.with_raw_response.create(
        model="partner-chain", messages=personal()
    )
    assert raw.headers["x-veil-provider"] == "acme-eu"
    assert "acme-direct by acme-only-on-azure" in raw.headers["x-veil-route-reason"]
    row = usage_row(gate_server, raw.headers["x-request-id"])
    assert "acme-only-on-azure" in row["policy"]


def test_block_mode_refuses_personal_data(gate_server: VeilServer, upstream: Upstream) -> None:
    key = key_for(gate_server, "strict")
    before = len(upstream.received)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client(gate_server, key, consent="*").chat.completions.create(
            model="partner-echo", messages=personal()
        )
    assert info.value.code == "pii_blocked"
    assert EMAIL not in info.value.message
    assert len(upstream.received) == before
    clean = client(gate_server, key, consent="*").chat.completions.create(
        model="partner-echo", messages=[{"role": "user", "content": "What is a haiku?"}]
    )
    assert clean.choices[0].message.content


def test_redact_mode_replaces_only_configured_types_and_does_not_restore(
    gate_server: VeilServer, upstream: Upstream
) -> None:
    key = key_for(gate_server, "redacting")
    before = len(upstream.received)
    answer = client(gate_server, key, consent="*").chat.completions.create(
        model="partner-echo", messages=personal()
    )
    [sent] = upstream.received[before:]
    assert EMAIL not in json.dumps(sent.body)
    assert PHONE in json.dumps(sent.body)  # not a configured type for this tenant
    assert EMAIL not in (answer.choices[0].message.content or "")


def test_user_pseudonym_per_partner_when_configured(
    gate_server: VeilServer, upstream: Upstream
) -> None:
    before = len(upstream.received)
    sdk = client(gate_server, consent="acme-ai")
    for user in ("alice", "alice", "bob"):
        sdk.chat.completions.create(model="partner-pseudo", messages=personal(), user=user)
    sent = [r.body.get("user") for r in upstream.received[before:]]
    assert sent[0] == sent[1] != sent[2]
    assert all(isinstance(u, str) and u.startswith("veil-") and "alice" not in u for u in sent)


def test_device_requests_are_not_touched(gate_server: VeilServer) -> None:
    raw = client(gate_server).chat.completions.with_raw_response.create(
        model="device", messages=personal(), max_tokens=4
    )
    assert raw.headers["x-veil-tier"] == "device"
    assert "x-veil-redactions" not in raw.headers


def test_personal_data_canaries_never_reach_the_partner_nor_disk(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> None:
    server = start_server(tmp_path_factory.mktemp("pii-canary") / "home", gate_config(upstream))
    tag = uuid.uuid4().hex[:10]
    email = f"canary.{tag}@example.com"
    phone = f"+1 212 555 {int(tag[:4], 16) % 10000:04d}"
    ip = f"10.{int(tag[:2], 16)}.{int(tag[2:4], 16)}.{int(tag[4:6], 16)}"
    text = f"Reach me at {email}, phone {phone}; my server is {ip}."
    before = len(upstream.received)
    try:
        sdk = client(server, consent="acme-ai")
        plain = sdk.chat.completions.create(
            model="partner-echo", messages=[{"role": "user", "content": text}], user=f"user-{tag}"
        )
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in sdk.chat.completions.create(
                model="partner-echo", messages=[{"role": "user", "content": text}], stream=True
            )
            if c.choices
        )
    finally:
        server.stop()
    for answer in (plain.choices[0].message.content or "", streamed):
        assert email in answer
        assert phone in answer
        assert ip in answer
    sent = json.dumps([r.body for r in upstream.received[before:]])
    for value in (email, phone, ip, f"user-{tag}"):
        assert value not in sent  # never left the gateway
    written = server.log_path.read_bytes() + b"".join(
        p.read_bytes() for p in server.home.rglob("*") if p.is_file()
    )
    for value in (email, phone, ip, tag):
        assert value.encode() not in written  # never stored, never logged


def test_client_headers_and_address_are_not_forwarded(
    gate_server: VeilServer, upstream: Upstream
) -> None:
    before = len(upstream.received)
    with httpx.Client(base_url=gate_server.url) as http:
        r = http.post(
            "/v1/chat/completions",
            headers={
                "authorization": f"Bearer {ADMIN_KEY}",
                "x-veil-consent": "acme-ai",
                "x-forwarded-for": "203.0.113.7",
                "cookie": "session=abc",
                "x-app-user": "alice",
                "user-agent": "AliceApp/1.0",
            },
            json={"model": "partner-echo", "messages": [{"role": "user", "content": "hello"}]},
        )
    assert r.status_code == 200, r.text
    [sent] = upstream.received[before:]
    names = {k.lower() for k in sent.headers}
    assert not names & {"x-forwarded-for", "cookie", "x-app-user", "x-veil-consent", "forwarded"}
    assert "AliceApp" not in sent.headers.get("user-agent", "")
    assert ADMIN_KEY not in str(dict(sent.headers))


def test_a_partner_is_never_asked_to_store_the_conversation(
    gate_server: VeilServer, upstream: Upstream
) -> None:
    before = len(upstream.received)
    client(gate_server, consent="*").chat.completions.create(
        model="partner-echo",
        messages=[{"role": "user", "content": "hello"}],
        store=True,
        metadata={"session": "s-1"},
        prompt_cache_key="user-42-cache",
        safety_identifier="user-42",
    )
    [sent] = upstream.received[before:]
    assert not {"store", "metadata", "prompt_cache_key", "safety_identifier", "user"} & set(
        sent.body
    )
