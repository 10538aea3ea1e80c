"""``veil log``: serve, append to and monitor the transparency log of node measurements.

``verify`` is the monitor: it accepts a log's new signed tree head only if the log's key
signed it and, given ``--state`` with the last tree head it accepted, a consistency proof
shows the new tree extends that one; with ``--measurement`` it also proves that release's
entry is in the tree. It exits 1 naming the refusal (``bad_signature``, ``fork``,
``rollback``, ``not_included``), 2 on a usage or network error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from veil.attestation.log import (
    MAX_ENTRIES_PER_REQUEST,
    LogError,
    LogStore,
    create_app,
    load_public_key,
    measurement_entry,
    sth_from_json,
    sth_to_json,
    unb64,
)
from veil.attestation.merkle import Monitor, SignedTreeHead, leaf_hash, verify_inclusion

log_app = typer.Typer(help="The transparency log of released node measurements.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DirOption = Annotated[Path, typer.Option("--dir", help="The log's directory.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error[/red] {message}")
    return typer.Exit(code)


def _show(signed: SignedTreeHead) -> None:
    data = sth_to_json(signed)
    out.print(
        f"tree_size {data['tree_size']}  root_hash {data['root_hash']}  "
        f"timestamp_ms {data['timestamp_ms']}"
    )


@log_app.command()
def serve(
    directory: DirOption,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8090,
) -> None:
    """Serve the log read-only over HTTP; it picks up appends made by veil log append."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        store = LogStore(directory, writer=False)
    except (LogError, OSError) as e:
        raise _fail(str(e)) from None
    uvicorn.run(create_app(store), host=host, port=port, log_level="warning")


@log_app.command()
def append(
    directory: DirOption,
    measurement: Annotated[str, typer.Option(help="The release's SHA-256 measurement, hex.")],
    name: Annotated[str, typer.Option(help="The release's name.")],
    version: Annotated[str, typer.Option(help="The release's version.")],
) -> None:
    """Append a release measurement; print its index and the new tree head."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        entry = measurement_entry(measurement, name, version)
        with LogStore(directory) as store:
            index, signed = store.append(entry)
    except (LogError, OSError) as e:
        raise _fail(str(e)) from None
    out.print(f"index {index}")
    _show(signed)


def _get(client: httpx.Client, path: str, **params: int) -> Any:
    try:
        response = client.get(path, params=params)
    except httpx.HTTPError as e:
        raise _fail(f"cannot fetch {path}: {e}") from None
    if response.status_code != 200:
        raise _fail(f"{path} answered {response.status_code}: {response.text[:200]}")
    try:
        return response.json()
    except ValueError:
        raise _fail(f"{path} did not answer JSON") from None


def _prove_included(client: httpx.Client, signed: SignedTreeHead, measurement: str) -> int:
    """The index of the entry with ``measurement``, proven under ``signed``; exit 1 if none."""
    size = signed.head.size
    for start in range(0, size, MAX_ENTRIES_PER_REQUEST):
        end = min(size, start + MAX_ENTRIES_PER_REQUEST)
        body = _get(client, "/log/v1/entries", start=start, end=end)
        try:
            leaves = [unb64(e["leaf_input"]) for e in body["entries"]]
            records = [json.loads(leaf) for leaf in leaves]
        except (KeyError, TypeError, ValueError) as e:
            raise _fail(f"malformed entries: {e}", 1) from None
        for offset, (leaf, record) in enumerate(zip(leaves, records, strict=True)):
            if isinstance(record, dict) and record.get("measurement") == measurement:
                index = start + offset
                got = _get(client, "/log/v1/proof/inclusion", index=index, tree_size=size)
                try:
                    path = [unb64(h) for h in got["inclusion_path"]]
                except (KeyError, TypeError, ValueError) as e:
                    raise _fail(f"malformed inclusion proof: {e}", 1) from None
                if not verify_inclusion(leaf_hash(leaf), index, size, path, signed.head.root):
                    err.print(f"[red]refused[/red] not_included: entry {index} is not proven")
                    raise typer.Exit(1)
                return index
    err.print(f"[red]refused[/red] not_included: no entry has measurement {measurement}")
    raise typer.Exit(1)


@log_app.command()
def verify(
    url: Annotated[str, typer.Option(help="The log server's base URL.")],
    key: Annotated[str | None, typer.Option(help="The log's public key, hex.")] = None,
    key_file: Annotated[
        Path | None, typer.Option(help="A file holding the log's public key, hex.")
    ] = None,
    state: Annotated[
        Path | None, typer.Option(help="Where the last verified tree head is kept.")
    ] = None,
    measurement: Annotated[
        str | None, typer.Option(help="Also prove this release measurement is in the log.")
    ] = None,
) -> None:
    """Check the log's current tree head: signed by its key and extending the last one."""
    if (key is None) == (key_file is None):
        raise _fail("give exactly one of --key and --key-file")
    try:
        public = load_public_key(key_file.read_text() if key_file is not None else str(key))
    except (LogError, OSError) as e:
        raise _fail(str(e)) from None

    last: SignedTreeHead | None = None
    if state is not None and state.exists():
        try:
            last = sth_from_json(json.loads(state.read_text()))
        except (OSError, ValueError) as e:
            raise _fail(f"cannot read the state file {state}: {e}") from None
    try:
        monitor = Monitor(public, trusted=last)
    except ValueError:
        raise _fail(f"the tree head in {state} is not signed by this key", 1) from None

    with httpx.Client(base_url=url.rstrip("/"), timeout=30) as client:
        try:
            signed = sth_from_json(_get(client, "/log/v1/sth"))
        except ValueError as e:
            raise _fail(f"malformed tree head: {e}", 1) from None
        proof: list[bytes] = []
        if last is not None and signed.head.size > last.head.size:
            body = _get(
                client,
                "/log/v1/proof/consistency",
                first=last.head.size,
                second=signed.head.size,
            )
            try:
                proof = [unb64(h) for h in body["consistency"]]
            except (KeyError, TypeError, ValueError) as e:
                raise _fail(f"malformed consistency proof: {e}", 1) from None

        verdict = monitor.observe(signed, proof)
        if verdict.refusal is not None:
            err.print(f"[red]refused[/red] {verdict.refusal.value}: {verdict.detail}")
            raise typer.Exit(1)
        if measurement is not None:
            index = _prove_included(client, signed, measurement)
            out.print(f"measurement {measurement} is entry {index}")
    if state is not None:
        tmp = state.with_name(state.name + ".tmp")
        tmp.write_text(json.dumps(sth_to_json(signed)) + "\n")
        tmp.replace(state)
    out.print(f"verified: {verdict.detail}")
    _show(signed)
