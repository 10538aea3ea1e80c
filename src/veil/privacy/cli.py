"""``veil pii scan``: find personal data in a JSONL file of messages.

Input lines are ``{"id": ..., "text": "..."}``; output lines are
``{"id": ..., "spans": [{"start", "end", "type"}]}`` in the same order. The whole file is
checked before anything is written, and an error names the line, never its content.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, TextIO

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from veil.privacy.detector import PiiDetector
from veil.privacy.span import ALL_TYPES

pii_app = typer.Typer(
    help="Find personal data in text with Veil's PII detector.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals hold message text
)
PROGRESS_MIN_LINES = 20


@pii_app.callback()
def _group() -> None:
    """Find personal data in text with Veil's PII detector."""


class BadLine(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")


def read_messages(lines: TextIO) -> list[tuple[Any, str]]:
    """``(id, text)`` for each non-blank line; ``BadLine`` for the first malformed one."""
    messages: list[tuple[Any, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise BadLine(number, "not valid JSON") from None
        if not isinstance(obj, dict):
            raise BadLine(number, 'expected a JSON object {"id": ..., "text": "..."}')
        if "id" not in obj or not isinstance(obj["id"], str | int) or isinstance(obj["id"], bool):
            raise BadLine(number, '"id" is missing or is not a string or an integer')
        if not isinstance(obj.get("text"), str):
            raise BadLine(number, '"text" is missing or is not a string')
        messages.append((obj["id"], obj["text"]))
    return messages


@pii_app.command()
def scan(
    jsonl: Annotated[
        Path,
        typer.Option("--jsonl", help='Input: one {"id", "text"} JSON object per line.'),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the results here instead of to stdout."),
    ] = None,
) -> None:
    """Detect PII in each message of a JSONL file; write one line of spans per message."""
    err = Console(stderr=True, soft_wrap=True)
    try:
        with jsonl.open(encoding="utf-8") as lines:
            messages = read_messages(lines)
    except OSError as exc:
        err.print(f"[red]error[/red] cannot read {jsonl}: {exc.strerror}", highlight=False)
        raise typer.Exit(1) from None
    except UnicodeDecodeError:
        err.print(f"[red]error[/red] {jsonl} is not UTF-8 text", highlight=False)
        raise typer.Exit(1) from None
    except BadLine as exc:
        err.print(f"[red]error[/red] {jsonl}: {exc}", highlight=False)
        raise typer.Exit(1) from None

    detector = PiiDetector()
    detector.warm()
    out: TextIO
    try:
        out = output.open("w", encoding="utf-8") if output is not None else sys.stdout
    except OSError as exc:
        err.print(f"[red]error[/red] cannot write {output}: {exc.strerror}", highlight=False)
        raise typer.Exit(1) from None
    try:
        with Progress(
            TextColumn("scanning"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=len(messages) <= PROGRESS_MIN_LINES,
        ) as progress:
            task = progress.add_task("scan", total=len(messages))
            for message_id, text in messages:
                spans = detector.detect(text, ALL_TYPES)
                row = {
                    "id": message_id,
                    "spans": [{"start": s.start, "end": s.end, "type": s.type} for s in spans],
                }
                out.write(orjson.dumps(row).decode() + "\n")
                progress.advance(task)
    finally:
        if out is not sys.stdout:
            out.close()
