"""``veil moderate``: Veil's local safety classifier over a JSONL file of prompts.

Input lines are ``{"id": ..., "prompt": "...", "documents": ["...", ...]}`` (``documents``
optional: text the user supplied, where injected instructions hide). Output lines are
``{"id": ..., "flagged": bool, "categories": [...]}`` in the same order, where
``categories`` lists every label whose score reaches the classifier's threshold for it —
OpenAI's categories and the prompt attacks (``jailbreak``, ``indirect_injection``) alike,
so ``flagged`` is true for an attack too (unlike ``POST /v1/moderations``, whose
``flagged`` keeps OpenAI's meaning). With ``--scores``, ``"scores"`` adds the probability
of each label the classifier judges; a label it has no trained head for is absent.

The whole file is checked before anything is written, and an error names the line, never
its content.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from veil.jsonl import BadLine, OutputOption, run_batch
from veil.safety import ALL_CATEGORIES, Screen


def moderate(
    jsonl: Annotated[
        Path,
        typer.Option(
            "--jsonl",
            help='Input: one {"id", "prompt"} JSON object per line, optionally "documents".',
        ),
    ],
    output: OutputOption = None,
    scores: Annotated[
        bool, typer.Option("--scores", help="Also write each label's score.")
    ] = False,
) -> None:
    """Flag unsafe prompts and prompt attacks in a JSONL file, one result line per prompt."""

    def load() -> Callable[[str], dict[str, Any]]:
        from veil.safety.classifier import default_moderator

        # run_batch hands ``work`` the prompt alone, once per line and in file order; the
        # documents of the same lines are read here and handed out in that order.
        documents = _documents(jsonl)
        try:
            moderator = default_moderator()
        except RuntimeError as exc:  # its weights are missing or unreadable
            Console(stderr=True, soft_wrap=True).print(f"[red]error[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None

        def work(prompt: str) -> dict[str, Any]:
            verdict = moderator.judge(Screen(prompt, next(documents)))
            crossed = set(moderator.flagged(verdict))
            flagged = [label for label in ALL_CATEGORIES if label in crossed]
            row: dict[str, Any] = {"flagged": bool(flagged), "categories": flagged}
            if scores:
                row["scores"] = {
                    label: round(verdict.scores[label], 4)
                    for label in ALL_CATEGORIES
                    if label in verdict.scores
                }
            return row

        return work

    run_batch(jsonl, output, "prompt", "moderating", load)


def _documents(jsonl: Path) -> Iterator[tuple[str, ...]]:
    """The ``documents`` of each non-blank line, checked before any line is judged. The file
    has already been read and checked once by ``run_batch``: every line is a JSON object."""
    found: list[tuple[str, ...]] = []
    try:
        with jsonl.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                docs = orjson.loads(line).get("documents")
                if docs is None:
                    found.append(())
                elif isinstance(docs, list) and all(isinstance(d, str) for d in docs):
                    found.append(tuple(docs))
                else:
                    raise BadLine(number, '"documents" is not a list of strings')
    except (OSError, UnicodeDecodeError, orjson.JSONDecodeError, BadLine) as exc:
        # Only BadLine is expected: the file was readable and valid a moment ago.
        reason = str(exc) if isinstance(exc, BadLine) else "changed while it was read"
        Console(stderr=True, soft_wrap=True).print(
            f"[red]error[/red] {jsonl}: {reason}", highlight=False
        )
        raise typer.Exit(1) from None
    return iter(found)
