"""``veil safety``: the local content-safety classifier from the command line.

``clusters`` rebuilds the word clusters it reads unseen words by (from the embedding
model). ``train`` rebuilds the shipped classifier from the labeled requests in
``data/safety/prompts`` (and the benign prompts of ``data/routing/prompts``) and reports
how it does on ``data/safety/heldout``, which it never trains on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from veil.jsonl import batch_app

safety_app = batch_app("The local content-safety classifier.")


@contextmanager
def _stages(err: Console) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar per stage: ``progress(stage, done, total)``."""
    columns = (TextColumn("{task.description:>16}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=err, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        yield progress


@safety_app.command()
def clusters(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the table (default: the shipped one)."),
    ] = None,
) -> None:
    """Rebuild the word clusters the classifier reads unseen words by (needs the embedding
    model's package; then retrain: veil safety train)."""
    from veil.embeddings.minilm import ModelMissing
    from veil.safety import clusters as word_clusters

    err = Console(stderr=True, soft_wrap=True)
    started = time.perf_counter()
    try:
        with _stages(err) as progress:
            rows = word_clusters.build(progress)
    except ModelMissing as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    path = output or word_clusters.CLUSTERS_PATH
    word_clusters.save(rows, path)
    err.print(
        f"wrote {path}: {len(rows)} words in {word_clusters.FINE} and {word_clusters.COARSE} "
        f"clusters, in {time.perf_counter() - started:.0f} s",
        highlight=False,
    )


@safety_app.command()
def train(
    data: Annotated[
        Path | None,
        typer.Option(help="Directory of labeled *.jsonl requests (default: data/safety/prompts)."),
    ] = None,
    benign: Annotated[
        Path | None,
        typer.Option(help="Directory of benign *.jsonl prompts (default: data/routing/prompts)."),
    ] = None,
    heldout: Annotated[
        Path | None,
        typer.Option(help="Directory of held-out *.jsonl requests (default: data/safety/heldout)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the model (default: the shipped one)."),
    ] = None,
) -> None:
    """Train the safety classifier; report held-out recall and false-positive rate."""
    from veil.safety import train as training
    from veil.safety.classifier import MODEL_PATH, LocalModerator, load_model

    err = Console(stderr=True, soft_wrap=True)
    try:
        examples = training.load_examples(data or training.DATA_DIR)
        safe = training.load_benign(benign or training.ROUTING_DIR)
        held_dir = heldout or training.HELDOUT_DIR
        held = training.load_examples(held_dir) if any(held_dir.glob("*.jsonl")) else []
    except (OSError, ValueError) as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    for problem in training.problems(examples):
        err.print(f"[yellow]warning[/yellow] {problem}", highlight=False)
    started = time.perf_counter()
    with _stages(err) as progress:
        model = training.train(examples, safe, progress=progress)
    path = output or MODEL_PATH
    model.save(path)
    err.print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in "
        f"{time.perf_counter() - started:.0f} s: {len(model.vocabulary)} features, "
        f"{len(examples)} labeled requests and {len(safe)} benign prompts; heads: "
        + ", ".join(model.labels),
        highlight=False,
    )
    err.print(
        f"cross-validated on the training data: recall {model.cv['recall']:.3f}, "
        f"false positives {model.cv['fpr']:.3f} (routing prompts {model.cv['fpr_routing']:.3f})",
        highlight=False,
    )
    if not held:
        err.print(f"no held-out requests in {held_dir}", highlight=False)
        return
    moderator = LocalModerator(model=load_model(path))
    report = training.evaluate(moderator, held)
    table = Table("held out", "caught", "of", "rate")
    table.add_row("unsafe (any label)", "", str(report.n_unsafe), f"{report.recall:.3f}")
    table.add_row("safe, flagged", "", str(report.n_safe), f"{report.fpr:.3f}")
    for label, (caught, total) in report.per_label.items():
        rate = f"{caught / total:.3f}" if label in moderator.categories else "no head"
        table.add_row(label, str(caught), str(total), rate)
    err.print(table)
