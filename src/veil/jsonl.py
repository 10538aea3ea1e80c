"""Reading the JSONL inputs of the batch commands (``veil pii scan``, ``veil route classify``).

Lines are ``{"id": ..., "<field>": "..."}``. The whole file is read and checked before any
work starts, and an error names the line, never its content.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TextIO

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

#: Inputs shorter than this get no progress bar.
PROGRESS_MIN_LINES = 20

OutputOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write the results here instead of to stdout."),
]


def batch_app(help_text: str) -> typer.Typer:
    """A command group of batch commands; locals are never shown (they hold message text)."""
    app = typer.Typer(
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
    )

    @app.callback(help=help_text)
    def _group() -> None:
        pass

    return app


class BadLine(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")


def read_messages(lines: TextIO, field: str = "text") -> list[tuple[Any, str]]:
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
            raise BadLine(number, f'expected a JSON object {{"id": ..., "{field}": "..."}}')
        if "id" not in obj or not isinstance(obj["id"], str | int) or isinstance(obj["id"], bool):
            raise BadLine(number, '"id" is missing or is not a string or an integer')
        if not isinstance(obj.get(field), str):
            raise BadLine(number, f'"{field}" is missing or is not a string')
        messages.append((obj["id"], obj[field]))
    return messages


def run_batch(
    jsonl: Path,
    output: Path | None,
    field: str,
    verb: str,
    load: Callable[[], Callable[[str], dict[str, Any]]],
) -> None:
    """Read ``jsonl``, then write ``{"id", **work(text)}`` per line to ``output`` (or
    stdout) in input order, with a progress bar on stderr for long inputs. ``load`` builds
    ``work`` (it may be slow: a model); it runs only once the input has been checked."""
    err = Console(stderr=True, soft_wrap=True)
    try:
        with jsonl.open(encoding="utf-8") as lines:
            messages = read_messages(lines, field)
    except OSError as exc:
        err.print(f"[red]error[/red] cannot read {jsonl}: {exc.strerror}", highlight=False)
        raise typer.Exit(1) from None
    except UnicodeDecodeError:
        err.print(f"[red]error[/red] {jsonl} is not UTF-8 text", highlight=False)
        raise typer.Exit(1) from None
    except BadLine as exc:
        err.print(f"[red]error[/red] {jsonl}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    work = load()
    out: TextIO
    try:
        out = output.open("w", encoding="utf-8") if output is not None else sys.stdout
    except OSError as exc:
        err.print(f"[red]error[/red] cannot write {output}: {exc.strerror}", highlight=False)
        raise typer.Exit(1) from None
    try:
        with Progress(
            TextColumn(verb),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=len(messages) <= PROGRESS_MIN_LINES,
        ) as progress:
            task = progress.add_task(verb, total=len(messages))
            for message_id, text in messages:
                out.write(orjson.dumps({"id": message_id, **work(text)}).decode() + "\n")
                progress.advance(task)
    finally:
        if out is not sys.stdout:
            out.close()
