"""The persistent transparency log: the store on disk, its HTTP API, and ``veil log``
serve/append/verify end to end, with the monitor refusing rollbacks, forks and wrong keys."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tests.support.cli import run
from tests.support.local import free_port
from veil.attestation.log import (
    LogStore,
    create_app,
    measurement_entry,
    sth_from_json,
    unb64,
)
from veil.attestation.merkle import leaf_hash, verify_inclusion, verify_tree_head


def _entry(i: int) -> bytes:
    return measurement_entry(hashlib.sha256(b"release %d" % i).hexdigest(), "node", f"1.{i}")


def _fill(directory: Path, start: int, stop: int) -> None:
    with LogStore(directory) as store:
        for i in range(start, stop):
            store.append(_entry(i))


def test_store_round_trips_entries_tree_and_key(tmp_path: Path) -> None:
    with LogStore(tmp_path) as store:
        index, signed = store.append(_entry(0))
        for i in range(1, 5):
            store.append(_entry(i))
        assert index == 0
        assert signed.head.size == 1
        root = store.sth().head.root
    assert stat.S_IMODE((tmp_path / "log_key").stat().st_mode) == 0o600

    with LogStore(tmp_path) as again:
        assert again.size == 5
        assert again.sth().head.root == root
        assert again.entries(1, 3) == [_entry(1), _entry(2)]
        assert verify_tree_head(again.sth(), again.public_key)
        assert (tmp_path / "log_key.pub").read_text().strip() == (
            again.public_key.public_bytes_raw().hex()
        )
        proof = again.inclusion(3, 5)
        assert verify_inclusion(leaf_hash(_entry(3)), 3, 5, proof, root)


def test_a_torn_last_record_is_cut_off_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _fill(tmp_path, 0, 2)
    entries = tmp_path / "entries"
    good = entries.stat().st_size
    with entries.open("ab") as f:  # a crash part-way through a third record
        f.write(b"\x00\x00\x00\x50" + _entry(2)[:20])

    reader = LogStore(tmp_path, writer=False)
    assert reader.size == 2
    assert entries.stat().st_size > good

    with caplog.at_level(logging.WARNING), LogStore(tmp_path) as store:
        assert store.size == 2
        assert entries.stat().st_size == good
        assert store.append(_entry(2))[0] == 2
    assert "torn last record" in caplog.text
    with LogStore(tmp_path) as store:
        assert store.entries(0, 3) == [_entry(0), _entry(1), _entry(2)]


def test_a_reader_picks_up_what_the_writer_appends(tmp_path: Path) -> None:
    _fill(tmp_path, 0, 1)
    reader = LogStore(tmp_path, writer=False)
    _fill(tmp_path, 1, 3)
    assert reader.size == 1
    assert reader.refresh()
    assert reader.size == 3
    with LogStore(tmp_path) as writer:
        assert reader.sth().head.root == writer.sth().head.root


def test_http_api_serves_proofs_and_names_bad_parameters(tmp_path: Path) -> None:
    _fill(tmp_path, 0, 4)
    store = LogStore(tmp_path, writer=False)
    with TestClient(create_app(store)) as client:
        signed = sth_from_json(client.get("/log/v1/sth").json())
        assert signed.head.size == 4
        assert verify_tree_head(signed, store.public_key)

        body = client.get("/log/v1/proof/inclusion", params={"index": 2, "tree_size": 4}).json()
        path = [unb64(h) for h in body["inclusion_path"]]
        assert verify_inclusion(leaf_hash(_entry(2)), 2, 4, path, signed.head.root)

        got = client.get("/log/v1/entries", params={"start": 1, "end": 3}).json()["entries"]
        assert [unb64(e["leaf_input"]) for e in got] == [_entry(1), _entry(2)]
        assert unb64(got[0]["leaf_hash"]) == leaf_hash(_entry(1))

        for path_, params, name in [
            ("/log/v1/proof/inclusion", {"index": 4, "tree_size": 4}, "index"),
            ("/log/v1/proof/inclusion", {"index": 0, "tree_size": 9}, "tree_size"),
            ("/log/v1/proof/inclusion", {"tree_size": 4}, "index"),
            ("/log/v1/proof/consistency", {"first": "x", "second": 2}, "first"),
            ("/log/v1/proof/consistency", {"first": 1, "second": 5}, "second"),
            ("/log/v1/entries", {"start": 0, "end": 5}, "end"),
            ("/log/v1/entries", {"start": -1, "end": 2}, "start"),
        ]:
            response = client.get(path_, params=params)
            assert response.status_code == 400, (path_, params)
            assert response.json()["parameter"] == name, (path_, params)


@contextmanager
def _serving(home: Path, directory: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env["VEIL_HOME"] = str(home)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veil",
            "log",
            "serve",
            "--dir",
            str(directory),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/log/v1/sth", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, "veil log serve exited"
                assert time.monotonic() < deadline, "veil log serve did not start"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _append(home: Path, directory: Path, i: int) -> subprocess.CompletedProcess[str]:
    digest = hashlib.sha256(b"release %d" % i).hexdigest()
    return run(
        home, "log", "append", "--dir", str(directory), "--measurement", digest,
        "--name", "node", "--version", f"1.{i}",
    )  # fmt: skip


def _verify(home: Path, url: str, key_file: Path, state: Path) -> subprocess.CompletedProcess[str]:
    return run(
        home, "log", "verify", "--url", url, "--key-file", str(key_file), "--state", str(state)
    )


def test_verify_follows_a_growing_log_and_refuses_a_rollback(tmp_path: Path) -> None:
    home, directory, state = tmp_path / "home", tmp_path / "log", tmp_path / "state.json"
    appended = _append(home, directory, 0)
    assert appended.returncode == 0, appended.stderr
    assert "index 0" in appended.stdout
    assert "tree_size 1" in appended.stdout
    _fill(directory, 1, 2)
    old_copy = tmp_path / "old"
    shutil.copytree(directory, old_copy)
    key_file = directory / "log_key.pub"

    with _serving(home, directory) as url:
        first = _verify(home, url, key_file, state)
        assert first.returncode == 0, first.stderr
        assert "tree_size 2" in first.stdout
        _fill(directory, 2, 5)  # the running server re-reads the grown file
        grown = _verify(home, url, key_file, state)
        assert grown.returncode == 0, grown.stderr
        assert "tree_size 5" in grown.stdout
        third = hashlib.sha256(b"release 3").hexdigest()
        included = run(
            home, "log", "verify", "--url", url, "--key-file", str(key_file),
            "--measurement", third,
        )  # fmt: skip
        assert included.returncode == 0, included.stderr
        assert "is entry 3" in included.stdout
        missing = run(
            home, "log", "verify", "--url", url, "--key-file", str(key_file),
            "--measurement", "0" * 64,
        )  # fmt: skip
        assert missing.returncode == 1
        assert "not_included" in missing.stderr
        assert _saved_size(state) == 5

    with _serving(home, old_copy) as url:
        rolled_back = _verify(home, url, key_file, state)
    assert rolled_back.returncode == 1
    assert "rollback" in rolled_back.stderr
    assert _saved_size(state) == 5  # a refused tree head is not saved


def test_verify_refuses_a_fork_and_a_wrong_key(tmp_path: Path) -> None:
    home, directory, state = tmp_path / "home", tmp_path / "log", tmp_path / "state.json"
    _fill(directory, 0, 3)
    forked = tmp_path / "forked"
    forked.mkdir()
    shutil.copy(directory / "log_key", forked / "log_key")
    with LogStore(forked) as store:  # same key, different history
        for i in range(10, 14):
            store.append(_entry(i))
    key_file = directory / "log_key.pub"

    with _serving(home, directory) as url:
        assert _verify(home, url, key_file, state).returncode == 0
    with _serving(home, forked) as url:
        fork = _verify(home, url, key_file, state)
        other_key = tmp_path / "other.pub"
        LogStore(tmp_path / "other", writer=False)
        shutil.copy(tmp_path / "other" / "log_key.pub", other_key)
        wrong = _verify(home, url, other_key, tmp_path / "fresh-state.json")
    assert fork.returncode == 1
    assert "fork" in fork.stderr
    assert wrong.returncode == 1
    assert "bad_signature" in wrong.stderr


def _saved_size(path: Path) -> int:
    return sth_from_json(json.loads(path.read_text())).head.size
