"""The task classifier behind ``model: auto``, on the held-out split of its labeled prompts.

Run from the repository root (a few seconds)::

    .venv/bin/python bench/routing.py [--data DIR]

Reports category and difficulty accuracy on the held-out fifth of ``data/routing/prompts``
(never trained on; see data/routing/README.md), per category; the share of held-out
requests the router keeps on the device with the default device skills (the bundled
device model and a private tier), against the share the labels say could stay there; the two ways
of getting it wrong (a complex task sent to the device, a simple device-skill task sent
away); and the classifier's latency on one core — p50 and p99 over the held-out prompts,
and on a 10,000-word prompt.

Targets: category accuracy at least 0.90, difficulty accuracy at least 0.85, p50 at most
2 ms. The exit code is 0 whether or not the targets are met.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

from veil.chat import ChatRequest  # noqa: E402
from veil.config import parse_config  # noqa: E402
from veil.providers import build_provider  # noqa: E402
from veil.routing import Router  # noqa: E402
from veil.routing.classifier import default_classifier  # noqa: E402
from veil.routing.train import DATA_DIR, load_examples, split  # noqa: E402
from veil.tasks import CATEGORIES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    train, held = split(load_examples(args.data))
    classifier = default_classifier()
    # The bundled device model (not loaded: only its context window matters here) and a
    # private tier, so "kept on the device" counts the router's own choices.
    config = parse_config(
        "providers: [{name: device, type: llama_cpp}, {name: node, type: fake}]\n"
        "models: [{name: private, deployments: [{provider: node, model: echo}]}]\n"
    )
    router = Router(config, {p.name: build_provider(p) for p in config.providers}, classifier)
    skills = set(config.routing.device_skills)

    right_category: Counter[str] = Counter()
    total: Counter[str] = Counter()
    right_difficulty = 0
    on_device = could_stay = complex_on_device = simple_sent_away = 0
    for e in held:
        c = classifier.classify(e.prompt)
        total[e.category] += 1
        right_category[e.category] += c.category == e.category
        right_difficulty += c.difficulty == e.difficulty
        request = ChatRequest.model_validate(
            {"model": "auto", "messages": [{"role": "user", "content": e.prompt}]}
        )
        device = router.plan(request, "bench").candidates[0].model is router.device
        ideal = e.difficulty == "simple" and e.category in skills
        on_device += device
        could_stay += ideal
        complex_on_device += device and e.difficulty == "complex"
        simple_sent_away += ideal and not device

    # Latency: every held-out prompt, 20 rounds, one core.
    samples: list[float] = []
    for _ in range(20):
        for e in held:
            started = time.perf_counter()
            classifier.classify(e.prompt)
            samples.append(time.perf_counter() - started)
    samples.sort()
    long_prompt = "Please summarize the following report. " + "word " * 10_000
    long_samples = []
    for _ in range(50):
        started = time.perf_counter()
        classifier.classify(long_prompt)
        long_samples.append(time.perf_counter() - started)

    n = len(held)
    category_accuracy = sum(right_category.values()) / n
    difficulty_accuracy = right_difficulty / n
    p50 = samples[len(samples) // 2] * 1000
    p99 = samples[int(len(samples) * 0.99)] * 1000
    print(f"task classifier: {len(train)} training prompts, {n} held out")
    print(f"  category accuracy    {category_accuracy:.3f}   (target >= 0.90)")
    print(f"  difficulty accuracy  {difficulty_accuracy:.3f}   (target >= 0.85)")
    print("  per category:")
    for name in CATEGORIES:
        if total[name]:
            print(f"    {name:17} {right_category[name] / total[name]:.3f}  ({total[name]})")
    print(f"routing, device and private tiers (device skills: {', '.join(sorted(skills))}):")
    print(f"  kept on the device   {on_device / n:.1%} of held-out requests")
    print(f"  could stay (labels)  {could_stay / n:.1%} (simple and a device skill)")
    print(f"  complex sent to the device       {complex_on_device / n:.1%}")
    print(f"  simple device-skill sent away    {simple_sent_away / n:.1%}")
    print("classifier latency, one core:")
    print(f"  p50 {p50:.3f} ms, p99 {p99:.3f} ms   (target p50 <= 2 ms)")
    print(f"  10,000-word prompt: p50 {statistics.median(long_samples) * 1000:.3f} ms")


if __name__ == "__main__":
    main()
