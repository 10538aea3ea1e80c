"""The local content-safety classifier, on its held-out set.

Run from the repository root (a few seconds)::

    .venv/bin/python bench/safety.py [--heldout DIR]

Reports, on ``data/safety/heldout`` (never trained on; see data/safety/README.md) and at
the classifier's own thresholds: recall on unsafe requests (any label reached counts), the
false-positive rate on safe ones (any label reached), recall per category (by that
category's own head) and for the two prompt attacks; the figures cross-validation on the
training data predicted; and the latency of ``LocalModerator.judge`` on one core — p50 and
p99 over the held-out requests, and on a 10,000-word document.

Targets: recall at least 0.85 at a false-positive rate of at most 0.05, p50 at most 5 ms.
The exit code is 0 whether or not the targets are met.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from veil.safety import ALL_CATEGORIES, ATTACKS, Screen  # noqa: E402
from veil.safety.classifier import default_moderator  # noqa: E402
from veil.safety.train import HELDOUT_DIR, evaluate, load_examples  # noqa: E402

RECALL_TARGET = 0.85
FPR_TARGET = 0.05
P50_TARGET_MS = 5.0


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _cv(cv: dict[str, float], label: str) -> str:
    key = "recall " + label
    return f"   CV {cv[key]:.3f}" if key in cv else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heldout", type=Path, default=HELDOUT_DIR)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    held = load_examples(args.heldout)
    moderator = default_moderator()
    report = evaluate(moderator, held)

    # Latency: every held-out request, 20 rounds, one core.
    screens = [Screen(e.prompt, e.documents) for e in held]
    samples: list[float] = []
    for _ in range(20):
        for screen in screens:
            started = time.perf_counter()
            moderator.judge(screen)
            samples.append(time.perf_counter() - started)
    samples.sort()
    long_document = Screen(
        "Please summarize the attached report.", ["The quarterly figures were fine. " * 2_000]
    )
    long_samples = []
    for _ in range(20):
        started = time.perf_counter()
        moderator.judge(long_document)
        long_samples.append(time.perf_counter() - started)

    p50 = samples[len(samples) // 2] * 1000
    p99 = samples[int(len(samples) * 0.99)] * 1000
    cv = moderator.model.cv
    with_documents = sum(bool(e.documents) for e in held)
    print(
        f"safety classifier: {len(held)} held-out requests "
        f"({report.n_unsafe} unsafe, {report.n_safe} safe, {with_documents} with documents)"
    )
    print(f"  heads: {', '.join(moderator.categories)}")
    missing = [c for c in ALL_CATEGORIES if c not in moderator.categories]
    print(f"  no head (too few training examples): {', '.join(missing) or 'none'}")
    print("at the classifier's own thresholds:")
    print(
        f"  recall on unsafe       {report.recall:.3f}   (target >= {RECALL_TARGET}: "
        f"{_met(report.recall >= RECALL_TARGET)})"
    )
    print(
        f"  false positives, safe  {report.fpr:.3f}   (target <= {FPR_TARGET}: "
        f"{_met(report.fpr <= FPR_TARGET)})"
    )
    if cv:
        print(
            f"  cross-validated on the training data: recall {cv['recall']:.3f}, "
            f"false positives {cv['fpr']:.3f} (benign routing prompts {cv['fpr_routing']:.3f})"
        )
    print("  per category (its own head; an example may carry several), held out and CV:")
    for label in ALL_CATEGORIES:
        if label in ATTACKS or label not in report.per_label:
            continue
        caught, total = report.per_label[label]
        rate = f"{caught / total:.3f}" if label in moderator.categories else "no head"
        print(f"    {label:24} {rate:>7}  ({total}){_cv(cv, label)}")
    print("  attacks:")
    for label in ATTACKS:
        caught, total = report.per_label.get(label, (0, 0))
        rate = f"{caught / total:.3f}" if total else "-"
        print(f"    {label:24} {rate:>7}  ({total}){_cv(cv, label)}")
    print("judge latency, one core:")
    print(
        f"  p50 {p50:.3f} ms, p99 {p99:.3f} ms   (target p50 <= {P50_TARGET_MS:g} ms: "
        f"{_met(p50 <= P50_TARGET_MS)})"
    )
    print(f"  10,000-word document: p50 {statistics.median(long_samples) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
