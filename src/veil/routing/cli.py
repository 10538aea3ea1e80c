"""``veil route``: the task classifier from the command line.

``classify`` reads ``{"id", "prompt"}`` lines and writes ``{"id", "category",
"difficulty"}`` lines in the same order; ``train`` rebuilds the shipped classifier from the
labeled prompts in ``data/routing/prompts`` and reports its held-out accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from veil.jsonl import OutputOption, batch_app, run_batch

route_app = batch_app("The task classifier behind model: auto.")


@route_app.command()
def classify(
    jsonl: Annotated[
        Path,
        typer.Option("--jsonl", help='Input: one {"id", "prompt"} JSON object per line.'),
    ],
    output: OutputOption = None,
) -> None:
    """Classify each prompt's task category and difficulty."""

    def load() -> Callable[[str], dict[str, Any]]:
        from veil.routing.classifier import default_classifier

        classifier = default_classifier()

        def work(text: str) -> dict[str, Any]:
            c = classifier.classify(text)
            return {"category": c.category, "difficulty": c.difficulty}

        return work

    run_batch(jsonl, output, "prompt", "classifying", load)


@route_app.command()
def train(
    data: Annotated[
        Path | None,
        typer.Option(help="Directory of labeled *.jsonl prompts (default: data/routing/prompts)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the model (default: the shipped one)."),
    ] = None,
) -> None:
    """Train the task classifier on the labeled prompts (one in five held out)."""
    from veil.routing import train as training
    from veil.routing.classifier import MODEL_PATH, TaskClassifier

    err = Console(stderr=True, soft_wrap=True)
    try:
        examples = training.load_examples(data or training.DATA_DIR)
    except (OSError, ValueError) as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    fit, held = training.split(examples)
    with err.status(f"training on {len(fit)} prompts ({len(held)} held out)"):
        model = training.train(fit)
    path = output or MODEL_PATH
    model.save(path)
    classifier = TaskClassifier(path)
    scores = training.evaluate(classifier, held)
    err.print(
        f"wrote {path}: {len(model.vocabulary)} features; held out: category accuracy "
        f"{scores.category:.3f}, difficulty accuracy {scores.difficulty:.3f}",
        highlight=False,
    )
