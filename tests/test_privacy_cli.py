"""`veil pii scan`: JSONL in, spans out; bad lines named by number, never by content."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from veil.privacy.cli import pii_app

runner = CliRunner()


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_scan_writes_one_line_of_spans_per_message(tmp_path: Path) -> None:
    src = write(
        tmp_path / "in.jsonl",
        [
            json.dumps({"id": "a", "text": "Mail maria@gmail.com or call (415) 555-0132."}),
            "",
            json.dumps({"id": 7, "text": "Q3 revenue grew 12%."}),
        ],
    )
    result = runner.invoke(pii_app, ["scan", "--jsonl", str(src)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows == [
        {
            "id": "a",
            "spans": [
                {"start": 5, "end": 20, "type": "EMAIL_ADDRESS"},
                {"start": 29, "end": 43, "type": "PHONE_NUMBER"},
            ],
        },
        {"id": 7, "spans": []},
    ]


def test_scan_writes_to_an_output_file(tmp_path: Path) -> None:
    src = write(
        tmp_path / "in.jsonl",
        [json.dumps({"id": str(i), "text": f"host 10.0.0.{i}"}) for i in range(1, 31)],
    )
    out = tmp_path / "out.jsonl"
    result = runner.invoke(pii_app, ["scan", "--jsonl", str(src), "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [str(i) for i in range(1, 31)]
    assert all(r["spans"][0]["type"] == "IP_ADDRESS" for r in rows)


def test_a_malformed_line_is_named_and_its_content_is_not_shown(tmp_path: Path) -> None:
    secret = "maria@gmail.com 4111 1111 1111 1111"
    cases = {
        '{"id": "x", "text": "' + secret: "line 2: not valid JSON",
        json.dumps([secret]): "line 2: expected a JSON object",
        json.dumps({"text": secret}): 'line 2: "id" is missing',
        json.dumps(
            {"id": "x", "text": 42, "note": secret}
        ): 'line 2: "text" is missing or is not a string',
    }
    for bad, message in cases.items():
        src = write(tmp_path / "in.jsonl", [json.dumps({"id": "ok", "text": "fine"}), bad])
        result = runner.invoke(pii_app, ["scan", "--jsonl", str(src)])
        assert result.exit_code == 1
        assert message in result.stderr
        assert "maria" not in result.output
        assert "4111" not in result.output
        assert result.stdout == ""  # nothing is written before the whole file is checked


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(pii_app, ["scan", "--jsonl", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 1
    assert "cannot read" in result.stderr


def test_scan_runs_as_a_module_entry_point(tmp_path: Path) -> None:
    src = write(tmp_path / "in.jsonl", [json.dumps({"id": 1, "text": "born on 12/03/1985"})])
    code = "from veil.privacy.cli import pii_app; pii_app()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "scan", "--jsonl", str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "id": 1,
        "spans": [{"start": 8, "end": 18, "type": "DATE_OF_BIRTH"}],
    }
