"""One real deployment for the dashboard's tests: a gateway with a device model, an attested
private node (its transparency log and serving engine beside it), a partner on Azure and one
its hosting contract forbids, two tenants with prices and a revenue-share contract, and the
local safety classifier flagging (never blocking) — all real processes on loopback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.nodes import (
    Proc,
    append,
    keygen,
    log_key,
    measure,
    node_args,
    serve_log,
    serve_node,
)
from tests.support.server import ADMIN_KEY, VeilServer, key_for, start_server
from tests.support.upstream import Upstream

EMAIL = "dana.lopez@example.org"
PHONE = "+1 415 555 0177"


def stack_config(upstream: Upstream, pool: str) -> str:
    partner = f'type: openai_compatible, tier: partner, base_url: "{upstream.base_url}"'
    return f"""
server: {{key_cache_seconds: 0}}
providers:
  - {{name: phone, type: fake, tier: device}}
{pool}
  - {{name: openai-azure, {partner}, partner: openai, cloud: azure, region: eu}}
  - {{name: openai-direct, {partner}, partner: openai, cloud: openai, region: us}}
models:
  - name: small
    deployments: [{{provider: phone, model: echo}}]
    price: {{input: 0.1, output: 0.2}}
  - name: big
    deployments: [{{provider: pcc, model: echo}}]
    price: {{input: 1, output: 2}}
  - name: gpt-4o
    deployments: [{{provider: openai-direct, model: echo}}, {{provider: openai-azure, model: echo}}]
    price: {{input: 5, output: 15}}
    cost: {{input: 2.5, output: 10}}
  - name: gpt-4o-direct
    deployments: [{{provider: openai-direct, model: echo}}]
tenants:
  - {{name: acme}}
  - {{name: globex}}
policy:
  hosting:
    - {{name: openai-on-azure-only, partner: openai, allowed_clouds: [azure]}}
contracts:
  - name: azure-hosting
    match: {{partner: openai}}
    shares: [{{party: azure, percent: 20, of: revenue, payer: openai}}]
safety:
  enabled: true
  output: false
  policy:
    categories:
      "*": {{action: flag, threshold: 0.5}}
"""


@dataclass
class Stack:
    server: VeilServer
    measurement: str
    procs: list[Proc] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def http(self, key: str = ADMIN_KEY) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url, headers={"authorization": f"Bearer {key}"}, timeout=30
        )

    def chat(
        self, key: str, model: str, content: str, *, consent: str | None = None, **extra: Any
    ) -> httpx.Response:
        headers = {"x-veil-consent": consent} if consent else {}
        with self.http(key) as c:
            return c.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": content}], **extra},
                headers=headers,
            )

    def stop(self) -> None:
        self.server.stop()
        for proc in self.procs:
            proc.stop()


def start_stack(tmp: Path, upstream: Upstream) -> Stack:
    """Everything above, started; keys: ``acme`` (app key), ``alice`` (acme's user),
    ``globex``."""
    weights = tmp / "weights.safetensors"
    weights.write_bytes(b"model weights for the dashboard's node " * 64)
    identity = tmp / "node.key"
    public = keygen(identity)
    node = serve_node(tmp, "node", identity, node_args(upstream.base_url, weights))
    procs = [node.proc]
    try:
        released = measure(upstream.base_url, weights)
        logdir = tmp / "log"
        append(logdir, released, "1.0")
        log = serve_log(logdir)
        procs.append(log)
        pool = (
            "  - name: pcc\n"
            "    type: private_node\n"
            f"    nodes: [{node.proc.url}]\n"
            f"    log: {{url: {log.url}, public_key: {log_key(logdir)}}}\n"
            f"    identity_keys: [{public}]\n"
            "    refresh: 0.3"
        )
        server = start_server(tmp / "gw", stack_config(upstream, pool))
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    stack = Stack(server, released, procs)
    stack.keys = {
        "acme": key_for(server, "acme"),
        "alice": key_for(server, "acme", "alice"),
        "globex": key_for(server, "globex"),
    }
    return stack
