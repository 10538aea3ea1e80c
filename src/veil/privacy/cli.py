"""``veil pii scan``: find personal data in a JSONL file of messages.

Input lines are ``{"id": ..., "text": "..."}``; output lines are
``{"id": ..., "spans": [{"start", "end", "type"}]}`` in the same order. The whole file is
checked before anything is written, and an error names the line, never its content.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from veil.jsonl import OutputOption, batch_app, run_batch
from veil.privacy.detector import PiiDetector
from veil.privacy.span import ALL_TYPES

pii_app = batch_app("Find personal data in text with Veil's PII detector.")


@pii_app.command()
def scan(
    jsonl: Annotated[
        Path,
        typer.Option("--jsonl", help='Input: one {"id", "text"} JSON object per line.'),
    ],
    output: OutputOption = None,
) -> None:
    """Detect PII in each message of a JSONL file; write one line of spans per message."""

    def load() -> Callable[[str], dict[str, Any]]:
        detector = PiiDetector()
        detector.warm()

        def work(text: str) -> dict[str, Any]:
            spans = detector.detect(text, ALL_TYPES)
            return {"spans": [{"start": s.start, "end": s.end, "type": s.type} for s in spans]}

        return work

    run_batch(jsonl, output, "text", "scanning", load)
