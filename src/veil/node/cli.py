"""``veil node``: make a node's identity key, print its measurement, serve it.

A release goes like this: ``veil node measure`` on the release build prints the
measurement; ``veil log append`` publishes it; each node host runs ``veil node keygen``
once and the operator enrolls the printed public key in the gateway's ``identity_keys``;
``veil node serve`` runs the node.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console

from veil.config import loopback_host

node_app = typer.Typer(help="Private compute nodes: attested, sealed, stateless.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

TOKEN_ENV = "VEIL_NODE_TOKEN"  # noqa: S105 - the name of the variable, not a token
DEFAULT_NAME = "veil-node"

IdentityOption = Annotated[
    Path, typer.Option("--identity", help="The node's identity key file (veil node keygen).")
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="A GGUF file or 'bundled' to run in-process; with --upstream, the model's "
        "weights (file or directory) on this host, for the measurement.",
    ),
]
UpstreamOption = Annotated[
    str | None,
    typer.Option(
        "--upstream", help="An OpenAI-compatible server on this host (vLLM, llama.cpp server)."
    ),
]
UpstreamModelOption = Annotated[
    str | None, typer.Option(help="The model name to ask --upstream for.")
]
NCtxOption = Annotated[int, typer.Option(help="Context window of an in-process model.")]
SkewOption = Annotated[
    float, typer.Option(help="Clock window for sealed requests, seconds.", min=1)
]
LifetimeOption = Annotated[
    float, typer.Option(help="Seconds an attestation document is valid.", min=10)
]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error[/red] {message}")
    return typer.Exit(2)


class _Setup:
    """What ``--model``/``--upstream`` decide: the measured config, the model to hash, and
    how to build the provider."""

    def __init__(
        self,
        model: str | None,
        upstream: str | None,
        upstream_model: str | None,
        n_ctx: int,
        lifetime: float,
        max_skew: float,
    ) -> None:
        from veil.providers.llama_cpp import BUNDLED_NAME, resolve_model_path

        self.upstream = upstream.rstrip("/") if upstream else None
        if self.upstream is not None:
            parts = urlsplit(self.upstream)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _fail(f"--upstream must be an http(s) URL, not {upstream!r}")
            if not loopback_host(parts.hostname):
                raise _fail(
                    "--upstream must be on this host (a loopback address): a node never "
                    f"sends a request to another machine, and {parts.hostname} is not loopback"
                )
            if not upstream_model:
                raise _fail("--upstream needs --upstream-model, the name to ask it for")
            if model is None or model == "bundled":
                raise _fail(
                    "--upstream needs --model PATH: the weights the engine serves, so the "
                    "measurement covers the model"
                )
        model = model or "bundled"
        self.path = resolve_model_path(model)
        if not self.path.exists():
            raise _fail(f"model not found: {self.path}")
        if self.upstream is not None:
            self.model_name = str(upstream_model)
        elif model == "bundled":
            self.model_name = BUNDLED_NAME
        else:
            self.model_name = self.path.stem
        self.model_arg = model
        self.n_ctx = n_ctx
        self.lifetime = lifetime
        self.max_skew = max_skew

    def measured_config(self) -> dict[str, Any]:
        """The node's configuration as measured: everything that changes how a request is
        handled, nothing secret, nothing about where it listens."""
        config: dict[str, Any] = {
            "mode": "upstream" if self.upstream else "in_process",
            "model": self.model_name,
            "lifetime": self.lifetime,
            "max_skew": self.max_skew,
        }
        if self.upstream:
            config["upstream"] = self.upstream
        else:
            config["n_ctx"] = self.n_ctx
        return config

    def provider(self, n_threads: int | None) -> Any:
        from veil.config import LlamaCppProviderConfig, OpenAICompatibleProviderConfig

        if self.upstream is not None:
            from veil.providers.openai_compatible import OpenAICompatibleProvider

            return OpenAICompatibleProvider(
                OpenAICompatibleProviderConfig(
                    type="openai_compatible", name="node-upstream", base_url=self.upstream
                )
            )
        from veil.providers.llama_cpp import LlamaCppProvider

        return LlamaCppProvider(
            LlamaCppProviderConfig(
                type="llama_cpp",
                name="node",
                tier="private",
                model_path=self.model_arg,
                n_ctx=self.n_ctx,
                n_threads=n_threads,
            )
        )


def load_identity(path: Path) -> Ed25519PrivateKey:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise _fail(
            f"no identity key at {path}: make one with veil node keygen --identity {path}"
        ) from None
    except OSError as e:
        raise _fail(f"cannot read {path}: {e.strerror}") from None
    if path.stat().st_mode & 0o077:
        raise _fail(f"{path} is readable by others: chmod 600 {path}")
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text))
    except ValueError:
        raise _fail(f"{path} is not an identity key (32 bytes as 64 hex digits)") from None


@node_app.command()
def keygen(identity: IdentityOption) -> None:
    """Make the node's Ed25519 identity key (mode 0600); print the public key to enroll."""
    key = Ed25519PrivateKey.generate()
    secret = key.private_bytes_raw().hex()
    try:
        fd = os.open(identity, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _fail(f"{identity} exists: a node keeps its identity key; remove it first") from None
    except OSError as e:
        raise _fail(f"cannot create {identity}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    public = key.public_key().public_bytes_raw().hex()
    err.print(f"identity key written to {identity}; enroll its public key in the gateway's")
    err.print("providers[].identity_keys:")
    out.print(public)


@node_app.command()
def measure(
    model: ModelOption = None,
    upstream: UpstreamOption = None,
    upstream_model: UpstreamModelOption = None,
    n_ctx: NCtxOption = 4096,
    lifetime: LifetimeOption = 3600.0,
    max_skew: SkewOption = 60.0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print the measurement only.")
    ] = False,
) -> None:
    """Print the measurement a node with these options would attest (for veil log append)."""
    from veil.node.measure import measure as take

    setup = _Setup(model, upstream, upstream_model, n_ctx, lifetime, max_skew)
    with err.status(f"Hashing the code and {setup.path.name}…"):
        m = take(setup.measured_config(), setup.path)
    if not quiet:
        err.print(f"code    {m.code}")
        err.print(f"config  {m.config}")
        err.print(f"model   {m.model}  ({setup.model_name})")
    out.print(m.value)


@node_app.command()
def serve(
    identity: IdentityOption,
    model: ModelOption = None,
    upstream: UpstreamOption = None,
    upstream_model: UpstreamModelOption = None,
    n_ctx: NCtxOption = 4096,
    n_threads: Annotated[int | None, typer.Option(help="Threads for an in-process model.")] = None,
    lifetime: LifetimeOption = 3600.0,
    max_skew: SkewOption = 60.0,
    name: Annotated[str, typer.Option(help="The node's name in its documents.")] = DEFAULT_NAME,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8701,
) -> None:
    """Run a private compute node. Set VEIL_NODE_TOKEN to require a bearer token (required
    on a non-loopback address)."""
    import uvicorn

    from veil.node.measure import measure as take
    from veil.node.server import Node, NodeIdentity

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not loopback_host(host):
        raise _fail(
            f"{host} is not a loopback address: set {TOKEN_ENV} so only the gateway may "
            "send requests"
        )
    key = load_identity(identity)
    setup = _Setup(model, upstream, upstream_model, n_ctx, lifetime, max_skew)
    with err.status(f"Measuring the code and {setup.path.name}…"):
        m = take(setup.measured_config(), setup.path)
    provider = setup.provider(n_threads)
    if upstream is None:
        with err.status(f"Loading {setup.model_name}…"):
            provider.prepare()
    node = Node(
        NodeIdentity(name, setup.model_name, m.value, key),
        provider,
        setup.model_name,
        lifetime=lifetime,
        max_skew=max_skew,
        token=token,
    )
    node.attestation()
    err.print(f"measurement {m.value}")
    err.print(f"identity    {key.public_key().public_bytes_raw().hex()}")
    err.print(
        f"model       {setup.model_name}" + (f" via {setup.upstream}" if setup.upstream else "")
    )
    err.print(f"Listening on http://{host}:{port}/node/v1  (Ctrl-C to stop)")
    uvicorn.run(node.app(), host=host, port=port, log_level="warning", access_log=False)
