"""``model: "auto"``: the task classifier, ``veil route classify``, the router's plan, and
routing end to end through a real ``veil serve`` with fake providers in every tier."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.cli import run
from tests.support.partner import client
from tests.support.server import VeilServer, key_for, start_server, usage_row
from veil.chat import ChatRequest
from veil.config import parse_config
from veil.errors import ConfigError, InvalidRequest
from veil.providers import build_provider
from veil.routing import Plan, Router
from veil.routing.classifier import (
    Classification,
    default_classifier,
    digest_of,
)
from veil.routing.train import evaluate, load_examples, split
from veil.tasks import CATEGORIES, DIFFICULTIES, Category, Difficulty

TRACEBACK = """My script crashes, please fix it:

Traceback (most recent call last):
  File "report.py", line 12, in <module>
    average = sum(prices) / len(prices)
ZeroDivisionError: division by zero
"""
#: A request a large model should take: several constraints, design, explanation.
COMPLEX_CODE = (
    "Refactor this Python module from threads to asyncio without changing its public API, "
    "add type hints, make the retry logic testable, write pytest tests for the timeout "
    "and cancellation paths, and explain the trade-offs of each change:\n\n"
    "```python\nimport threading, time\n\nclass Poller:\n    def __init__(self, fetch, "
    "interval=5):\n        self.fetch = fetch\n        self.interval = interval\n"
    "        self.results = []\n    def start(self):\n        def loop():\n"
    "            while True:\n                try:\n                    "
    "self.results.append(self.fetch())\n                except Exception:\n"
    "                    time.sleep(1)\n                time.sleep(self.interval)\n"
    "        threading.Thread(target=loop, daemon=True).start()\n```"
)
COMPLEX_STORY = (
    "Write a 3,000-word literary short story in the style of Ursula K. Le Guin about a "
    "generation ship, told from three alternating points of view, with a twist ending "
    "that recasts the first chapter."
)
COMPLEX_ANALYSIS = (
    "Compare Postgres and MySQL for our workload: a write-heavy analytics service with "
    "50 TB of data, strict latency targets and a two-person ops team. Weigh replication, "
    "partitioning, licensing and migration risk, and recommend one with your reasons."
)
SIMPLE_CHAT = "hey, how are you today?"


# ------------------------------------------------------------------ the classifier


UNAMBIGUOUS: list[tuple[str, Category]] = [
    # The example data/routing/README.md gives for each category, filled in.
    (
        "tl;dr: The city council met on Tuesday to discuss the new bike lanes. After two "
        "hours of debate, members voted 7 to 2 to extend the lanes along Main Street, and "
        "work will begin in the spring.",
        "summarize",
    ),
    ("Make this email more polite: 'Send me the report now.'", "rewrite"),
    (
        "List every date mentioned in: 'The contract starts on 3 March 2024 and ends on "
        "2 March 2025; the first payment is due 15 March 2024.'",
        "extract",
    ),
    (
        "Is this review positive or negative? 'The food was cold and the waiter was rude.'",
        "classify",
    ),
    ("I'm nervous about my interview tomorrow", "chat"),
    ("Python function to reverse a string", "code"),
    ("What is 15% of 80?", "math_reasoning"),
    ("A haiku about rain", "creative_writing"),
    ("Capital of Australia?", "knowledge_qa"),
    (COMPLEX_ANALYSIS, "analysis"),
    ("Translate 'good morning' into Spanish", "translate"),
    # More that no reader would label otherwise.
    ("translate 'good morning' into French", "translate"),
    (TRACEBACK, "code"),
    ("write a haiku about rain", "creative_writing"),
    ("Prove that the square root of 2 is irrational.", "math_reasoning"),
    ("hi! how's your day going?", "chat"),
]


@pytest.mark.parametrize(("prompt", "category"), UNAMBIGUOUS, ids=[c for _, c in UNAMBIGUOUS])
def test_unambiguous_prompts_get_their_category(prompt: str, category: Category) -> None:
    assert default_classifier().classify(prompt).category == category


@pytest.mark.parametrize(
    "prompt",
    [
        "hi!",
        "What is the capital of Peru?",
        "write a haiku about rain",
        "translate 'thanks' to Spanish",
    ],
)
def test_short_everyday_requests_are_simple(prompt: str) -> None:
    assert default_classifier().classify(prompt).difficulty == "simple"


@pytest.mark.parametrize("prompt", [COMPLEX_CODE, COMPLEX_STORY, COMPLEX_ANALYSIS])
def test_long_multi_constraint_expert_requests_are_complex(prompt: str) -> None:
    assert default_classifier().classify(prompt).difficulty == "complex"


def test_classification_carries_confidences_between_zero_and_one() -> None:
    c = default_classifier().classify("write a haiku about rain")
    assert c.category in CATEGORIES
    assert c.difficulty in DIFFICULTIES
    assert 1 / len(CATEGORIES) < c.category_confidence <= 1
    assert 0.5 <= c.difficulty_confidence <= 1


def test_the_shipped_model_was_trained_on_the_current_data() -> None:
    fit, _ = split(load_examples())
    digest = digest_of([f"{e.category}|{e.difficulty}|{e.prompt}" for e in fit])
    assert default_classifier().data_digest == digest, (
        "data/routing/prompts changed since src/veil/routing/classifier.npz was built: "
        "run `veil route train` and commit the new model"
    )


def test_held_out_accuracy() -> None:
    _, held = split(load_examples())
    assert len(held) >= 100
    scores = evaluate(default_classifier(), held)
    assert scores.category >= 0.90, f"category accuracy {scores.category:.3f} on {scores.n}"
    assert scores.difficulty >= 0.85, f"difficulty accuracy {scores.difficulty:.3f} on {scores.n}"


def test_every_category_has_labeled_prompts_of_both_difficulties() -> None:
    seen = {(e.category, e.difficulty) for e in load_examples()}
    missing = {(c, d) for c in CATEGORIES for d in DIFFICULTIES} - seen
    assert not missing, f"no labeled prompts for {sorted(missing)} in data/routing/prompts"


# ------------------------------------------------------------------ veil route classify


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_classify_writes_one_line_per_prompt_in_input_order(tmp_path: Path) -> None:
    prompts = tmp_path / "in.jsonl"
    rows = [
        {"id": "b", "prompt": "translate 'good morning' into French"},
        {"id": 7, "prompt": "write a haiku about rain"},
        {"id": "a", "prompt": TRACEBACK},
    ]
    prompts.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]))
    result = run(tmp_path / "home", "route", "classify", "--jsonl", str(prompts))
    assert result.returncode == 0, result.stderr
    out = _lines(result.stdout)
    assert [r["id"] for r in out] == ["b", 7, "a"]
    for r in out:
        assert set(r) == {"id", "category", "difficulty"}
        assert r["category"] in CATEGORIES
        assert r["difficulty"] in DIFFICULTIES
    assert [r["category"] for r in out] == ["translate", "creative_writing", "code"]


def test_classify_output_option_writes_the_file(tmp_path: Path) -> None:
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('{"id": 1, "prompt": "write a haiku about rain"}\n')
    out = tmp_path / "out.jsonl"
    result = run(tmp_path / "home", "route", "classify", "--jsonl", str(prompts), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    [row] = _lines(out.read_text())
    assert row == {"id": 1, "category": "creative_writing", "difficulty": "simple"}


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"id": 2, "prompt": "my secret plan to buy Globex', "not valid JSON"),
        ('{"id": 2, "text": "my secret plan to buy Globex"}', '"prompt" is missing'),
        ('["my secret plan to buy Globex"]', "expected a JSON object"),
    ],
)
def test_a_malformed_line_is_named_by_number_and_never_echoed(
    tmp_path: Path, bad_line: str, reason: str
) -> None:
    prompts = tmp_path / "in.jsonl"
    prompts.write_text('{"id": 1, "prompt": "hi"}\n' + bad_line + "\n")
    out = tmp_path / "out.jsonl"
    result = run(tmp_path / "home", "route", "classify", "--jsonl", str(prompts), "-o", str(out))
    assert result.returncode == 1
    assert "line 2" in result.stderr
    assert reason in result.stderr
    assert "secret plan" not in result.stderr + result.stdout
    assert not out.exists()  # the input is checked before anything is written


def test_a_missing_input_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.jsonl"
    result = run(tmp_path / "home", "route", "classify", "--jsonl", str(missing))
    assert result.returncode == 1
    assert f"cannot read {missing}" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ the router's plan


@dataclass
class FixedClassifier:
    """Answers one classification, and remembers what it was asked to read."""

    category: Category
    difficulty: Difficulty
    read: list[str] = field(default_factory=list)

    def classify(self, text: str) -> Classification:
        self.read.append(text)
        return Classification(self.category, self.difficulty, 1.0, 1.0)


TIERS = """
providers:
  - {name: phone, type: fake, tier: device}
  - {name: node, type: fake, tier: private}
  - {name: claude, type: fake, tier: partner, partner: anthropic}
  - {name: gpt, type: fake, tier: partner, partner: openai}
models:
  - {name: big-private, deployments: [{provider: node, model: echo}]}
  - {name: claude-x, deployments: [{provider: claude, model: echo}], fallbacks: [gpt-x, big-private]}
  - {name: gpt-x, deployments: [{provider: gpt, model: echo}]}
default_model: gpt-x
tenants:
  - {name: calm, routing: {on_no_consent: stay_private}}
"""
#: No private tier: partners are chosen by preference and defaults.
PARTNERS = """
providers:
  - {name: phone, type: fake, tier: device}
  - {name: pa, type: fake, tier: partner, partner: a-ai}
  - {name: pb, type: fake, tier: partner, partner: b-ai}
  - {name: pc, type: fake, tier: partner, partner: c-ai}
  - {name: pd, type: fake, tier: partner, partner: d-ai}
models:
  - {name: m-a, deployments: [{provider: pa, model: echo}]}
  - {name: m-b, deployments: [{provider: pb, model: echo}]}
  - {name: m-c, deployments: [{provider: pc, model: echo}]}
  - {name: m-d, aliases: [d-alias], deployments: [{provider: pd, model: echo}]}
default_model: m-d
routing:
  partner_defaults: {code: m-c, "*": m-b}
tenants:
  - {name: acme, routing: {partner_defaults: {code: m-b}}}
"""


def make_router(config: str, classifier: FixedClassifier | None = None) -> Router:
    parsed = parse_config(config)
    providers = {p.name: build_provider(p) for p in parsed.providers}
    return Router(parsed, providers, classifier)


def ask(text: str, model: str = "auto", **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    )


def names(plan: Plan) -> list[str]:
    return [c.model.name for c in plan.candidates]


def rules(plan: Plan) -> list[str]:
    return [c.rule for c in plan.candidates]


def test_a_simple_task_the_device_is_skilled_at_goes_to_the_device_first() -> None:
    router = make_router(TIERS, FixedClassifier("chat", "simple"))
    plan = router.plan(ask("hi"), "acme")
    assert router.device is not None
    assert plan.candidates[0].model is router.device
    assert names(plan) == ["phone/echo", "big-private", "gpt-x"]
    assert rules(plan)[0] == "simple chat fits on the device"
    assert rules(plan)[1] == "failover from the device; private tier first"
    assert plan.classification == Classification("chat", "simple", 1.0, 1.0)
    assert plan.reason(plan.candidates[0]) == (
        "auto: chat/simple -> device phone/echo (simple chat fits on the device)"
    )


def test_a_complex_task_goes_private_first_and_the_device_comes_last() -> None:
    router = make_router(TIERS, FixedClassifier("chat", "complex"))
    plan = router.plan(ask("hi"), "acme")
    assert names(plan) == ["big-private", "gpt-x", "phone/echo"]
    assert rules(plan) == [
        "too complex for the device; private tier first",
        "too complex for the device; default model",
        "last resort: the device",
    ]
    # What stays when the user has not consented to the partner.
    fallbacks = router.private_fallbacks(ask("hi"))
    assert [c.model.name for c in fallbacks] == ["big-private", "phone/echo"]


@pytest.mark.parametrize(
    ("skills", "first", "rule"),
    [
        (None, "big-private", "code is not a device skill; private tier first"),
        ("[code]", "phone/echo", "simple code fits on the device"),
    ],
)
def test_device_skills_decide_which_simple_tasks_the_device_takes(
    skills: str | None, first: str, rule: str
) -> None:
    config = TIERS + (f"routing: {{device_skills: {skills}}}\n" if skills else "")
    plan = make_router(config, FixedClassifier("code", "simple")).plan(ask("x"), "acme")
    assert (plan.candidates[0].model.name, plan.candidates[0].rule) == (first, rule)


def test_the_classifier_reads_only_the_last_user_message() -> None:
    classifier = FixedClassifier("chat", "simple")
    request = ChatRequest.model_validate(
        {
            "model": "auto",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "an earlier question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "the task"},
            ],
        }
    )
    make_router(TIERS, classifier).plan(request, "acme")
    assert classifier.read == ["the task"]


def test_without_a_private_tier_preference_then_tenant_then_global_default() -> None:
    router = make_router(PARTNERS, FixedClassifier("code", "complex"))
    plan = router.plan(ask("x"), "acme", {"code": "m-a"})
    assert names(plan) == ["m-a", "m-b", "m-c", "m-d", "phone/echo"]
    assert rules(plan) == [
        "code is not a device skill; user prefers m-a for code",
        "code is not a device skill; tenant acme's default for code",
        "code is not a device skill; default for code",
        "code is not a device skill; default model",
        "last resort: the device",
    ]
    assert plan.reason(plan.candidates[0]) == (
        "auto: code/complex -> partner m-a (code is not a device skill; user prefers m-a for code)"
    )


def test_defaults_fall_back_to_the_star_category_and_the_global_mapping() -> None:
    router = make_router(PARTNERS, FixedClassifier("analysis", "complex"))
    # No preference; acme has no default for analysis; the global "*" is m-b.
    assert names(router.plan(ask("x"), "acme")) == ["m-b", "m-d", "phone/echo"]
    # A tenant the config does not list gets the global defaults only.
    coder = make_router(PARTNERS, FixedClassifier("code", "complex"))
    assert names(coder.plan(ask("x"), "globex")) == ["m-c", "m-d", "phone/echo"]


def test_a_star_preference_covers_every_category_and_aliases_resolve() -> None:
    router = make_router(PARTNERS, FixedClassifier("chat", "complex"))
    plan = router.plan(ask("x"), "acme", {"*": "d-alias"})
    assert names(plan)[0] == "m-d"
    assert rules(plan)[0] == "too complex for the device; user prefers m-d for chat"


def test_a_preference_for_a_removed_model_is_ignored() -> None:
    router = make_router(PARTNERS, FixedClassifier("code", "complex"))
    plan = router.plan(ask("x"), "acme", {"code": "retired-model"})
    assert names(plan) == ["m-b", "m-c", "m-d", "phone/echo"]


def test_a_private_model_whose_window_is_too_small_is_skipped() -> None:
    config = TIERS.replace(
        "models:\n",
        "models:\n  - {name: small-private, context_window: 50, "
        "deployments: [{provider: node, model: echo}]}\n",
    )
    router = make_router(config, FixedClassifier("chat", "complex"))
    short = router.plan(ask("hello", max_tokens=10), "acme")
    assert short.tokens <= 50
    assert names(short)[:2] == ["small-private", "big-private"]
    long = router.plan(ask("word " * 60, max_tokens=10), "acme")
    assert long.tokens > 50
    assert "small-private" not in names(long)
    long_fallbacks = router.private_fallbacks(ask("word " * 60, max_tokens=10))
    assert "small-private" not in [c.model.name for c in long_fallbacks]
    assert names(long)[0] == "big-private"
    # Without max_tokens the answer reserve alone outgrows the window.
    assert "small-private" not in names(router.plan(ask("hello"), "acme"))


def test_a_request_too_long_for_the_device_window_never_reaches_the_device() -> None:
    parsed = parse_config(TIERS)
    providers = {p.name: build_provider(p) for p in parsed.providers}
    providers["phone"].context_window = 400  # as a llama.cpp device reports its n_ctx
    router = Router(parsed, providers, FixedClassifier("chat", "simple"))
    assert router.plan(ask("hello"), "acme").candidates[0].model is router.device
    plan = router.plan(ask("word " * 200), "acme")
    assert plan.tokens > 400
    assert names(plan) == ["big-private", "gpt-x"]
    assert rules(plan)[0] == f"too long for the device ({plan.tokens} tokens); private tier first"
    fallbacks = router.private_fallbacks(ask("word " * 200))
    assert [c.model.name for c in fallbacks] == ["big-private"]


def test_routing_private_sets_the_private_tier_and_its_order() -> None:
    config = TIERS.replace(
        "models:\n",
        "models:\n  - {name: other-private, deployments: [{provider: node, model: echo}]}\n",
    )
    router = make_router(config, FixedClassifier("chat", "complex"))
    assert names(router.plan(ask("x"), "acme"))[:2] == ["other-private", "big-private"]
    ordered = make_router(
        config + "routing: {private: [big-private]}\n", FixedClassifier("chat", "complex")
    )
    assert names(ordered.plan(ask("x"), "acme")) == ["big-private", "gpt-x", "phone/echo"]


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("routing: {private: [big-private, nope]}", "routing.private[1]"),
        ("routing: {partner_defaults: {code: nope}}", "routing.partner_defaults.code"),
        (
            "tenants: [{name: acme, routing: {partner_defaults: {'*': nope}}}]",
            "tenants[0].routing.partner_defaults.*",
        ),
        (
            "models: [{name: m, deployments: [{provider: node, model: echo}], fallbacks: [nope]}]",
            "models[0].fallbacks[0]",
        ),
        ("default_model: nope", "default_model"),
    ],
)
def test_an_unknown_model_in_routing_is_a_config_error_naming_the_key(extra: str, key: str) -> None:
    config = (
        "providers:\n  - {name: phone, type: fake, tier: device}\n"
        "  - {name: node, type: fake, tier: private}\n"
    )
    if not extra.startswith("models:"):
        config += "models: [{name: big-private, deployments: [{provider: node, model: echo}]}]\n"
    with pytest.raises(ConfigError) as info:
        make_router(config + extra + "\n")
    assert [p.key for p in info.value.problems] == [key]
    assert "no model named 'nope'" in str(info.value)


def test_routing_private_refuses_a_model_that_is_not_private() -> None:
    with pytest.raises(ConfigError) as info:
        make_router(TIERS + "routing: {private: [gpt-x]}\n")
    assert [p.key for p in info.value.problems] == ["routing.private[0]"]


def test_a_named_model_is_followed_by_its_fallbacks_and_is_not_classified() -> None:
    classifier = FixedClassifier("chat", "simple")
    plan = make_router(TIERS, classifier).plan(ask("x", model="claude-x"), "acme")
    assert names(plan) == ["claude-x", "gpt-x", "big-private"]
    assert rules(plan) == ["model named in request", "fallback of claude-x", "fallback of claude-x"]
    assert plan.classification is None
    assert plan.reason(plan.candidates[1]) == "claude-x: fallback of claude-x"
    assert classifier.read == []


def test_on_no_consent_is_the_tenants_own_or_the_global_setting() -> None:
    router = make_router(TIERS)
    assert router.on_no_consent("calm") == "stay_private"
    assert router.on_no_consent("acme") == "refuse"
    flipped = make_router(
        TIERS.replace("on_no_consent: stay_private", "on_no_consent: refuse")
        + "routing: {on_no_consent: stay_private}\n"
    )
    assert flipped.on_no_consent("calm") == "refuse"
    assert flipped.on_no_consent("acme") == "stay_private"


# ------------------------------------------------------------------ end to end


TIERED_SERVER = """
server: {key_cache_seconds: 0}
providers:
  - {name: phone, type: fake, tier: device}
  - {name: node, type: fake, tier: private}
models:
  - {name: broken-private, deployments: [{provider: node, model: error-503}]}
  - {name: big-private, deployments: [{provider: node, model: echo}]}
routing:
  retries: {attempts: 1, backoff: 0}
  breaker: {failures: 1000}
"""
PARTNER_SERVER = """
server: {key_cache_seconds: 0}
providers:
  - {name: phone, type: fake, tier: device}
  - {name: claude, type: fake, tier: partner, partner: anthropic}
  - {name: gpt, type: fake, tier: partner, partner: openai}
models:
  - {name: claude-x, deployments: [{provider: claude, model: echo}]}
  - {name: gpt-x, deployments: [{provider: gpt, model: echo}]}
routing:
  partner_defaults: {"*": claude-x}
tenants:
  - {name: acme, routing: {partner_defaults: {creative_writing: gpt-x}}}
  - {name: calm, routing: {on_no_consent: stay_private}}
"""


@pytest.fixture(scope="module")
def tiered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VeilServer]:
    srv = start_server(tmp_path_factory.mktemp("tiered") / "home", TIERED_SERVER)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def partners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VeilServer]:
    srv = start_server(tmp_path_factory.mktemp("partners") / "home", PARTNER_SERVER)
    yield srv
    srv.stop()


def expect_class(prompt: str, category: Category, difficulty: Difficulty) -> None:
    """The routing tests below rely on how the shipped classifier sees their prompts."""
    c = default_classifier().classify(prompt)
    assert (c.category, c.difficulty) == (category, difficulty), (
        f"the classifier now calls this prompt {c.category}/{c.difficulty}; pick a clearer one"
    )


def echoed(prompt: str) -> str:
    """What the fake provider's ``echo`` answers: the words of the last user message."""
    return " ".join(prompt.split())


def auto(sdk: openai.OpenAI, prompt: str) -> Any:
    return sdk.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": prompt}]
    )


def assert_private_row(server: VeilServer, request_id: str, prompt: str) -> Any:
    row = usage_row(server, request_id)
    for column, value in dict(row).items():
        assert prompt[:20] not in str(value), f"the prompt is stored in usage.{column}"
    return row


def test_a_simple_chat_is_served_on_the_device(tiered: VeilServer) -> None:
    expect_class(SIMPLE_CHAT, "chat", "simple")
    raw = auto(client(tiered), SIMPLE_CHAT)
    assert raw.headers["x-veil-tier"] == "device"
    assert raw.headers["x-veil-provider"] == "phone"
    assert raw.headers["x-veil-route-reason"].startswith(
        "auto: chat/simple -> device phone/echo (simple chat fits on the device)"
    )
    completion = raw.parse()
    assert completion.model == "phone/echo"
    assert completion.choices[0].message.content == echoed(SIMPLE_CHAT)
    row = assert_private_row(tiered, raw.headers["x-request-id"], SIMPLE_CHAT)
    assert (row["category"], row["difficulty"], row["attempts"]) == ("chat", "simple", 1)
    assert (row["tier"], row["model"], row["status"]) == ("device", "phone/echo", 200)


def test_a_complex_request_goes_private_and_fails_over_within_the_tier(
    tiered: VeilServer,
) -> None:
    expect_class(COMPLEX_CODE, "code", "complex")
    raw = auto(client(tiered), COMPLEX_CODE)
    assert raw.headers["x-veil-tier"] == "private"
    assert raw.headers["x-veil-provider"] == "node"
    reason = raw.headers["x-veil-route-reason"]
    assert reason.startswith(
        "auto: code/complex -> private big-private (code is not a device skill; private tier first)"
    )
    assert reason.endswith("failed over")
    assert raw.parse().choices[0].message.content == echoed(COMPLEX_CODE)
    row = assert_private_row(tiered, raw.headers["x-request-id"], COMPLEX_CODE)
    # broken-private: the first attempt and one retry; then big-private.
    assert (row["category"], row["difficulty"], row["attempts"]) == ("code", "complex", 3)
    assert (row["tier"], row["model"]) == ("private", "big-private")
    assert COMPLEX_CODE[:40] not in tiered.log


def test_a_named_model_records_no_task(tiered: VeilServer) -> None:
    raw = client(tiered).chat.completions.with_raw_response.create(
        model="big-private", messages=[{"role": "user", "content": SIMPLE_CHAT}]
    )
    assert raw.headers["x-veil-route-reason"].startswith("big-private: model named in request")
    row = usage_row(tiered, raw.headers["x-request-id"])
    assert (row["category"], row["difficulty"], row["attempts"]) == (None, None, 1)


def test_the_users_preference_picks_the_partner_and_other_categories_use_defaults(
    partners: VeilServer,
) -> None:
    expect_class(COMPLEX_CODE, "code", "complex")
    expect_class(COMPLEX_STORY, "creative_writing", "complex")
    expect_class(COMPLEX_ANALYSIS, "analysis", "complex")
    key = key_for(partners, "acme", "u-prefs")
    put = httpx.put(
        partners.url + "/v1/preferences",
        headers={"authorization": f"Bearer {key}"},
        json={"preferences": {"code": "gpt-x"}},
    )
    assert put.status_code == 200, put.text
    sdk = client(partners, key, consent="*")

    raw = auto(sdk, COMPLEX_CODE)
    assert (raw.headers["x-veil-tier"], raw.headers["x-veil-provider"]) == ("partner", "gpt")
    assert "user prefers gpt-x for code" in raw.headers["x-veil-route-reason"]
    assert raw.parse().choices[0].message.content == echoed(COMPLEX_CODE)
    row = usage_row(partners, raw.headers["x-request-id"])
    assert (row["category"], row["partner"], row["consent"]) == ("code", "openai", "request")

    raw = auto(sdk, COMPLEX_STORY)
    assert raw.headers["x-veil-provider"] == "gpt"
    assert "tenant acme's default for creative_writing" in raw.headers["x-veil-route-reason"]

    raw = auto(sdk, COMPLEX_ANALYSIS)
    assert raw.headers["x-veil-provider"] == "claude"
    assert "; default for analysis" in raw.headers["x-veil-route-reason"]


def test_without_consent_auto_refuses_by_default(partners: VeilServer) -> None:
    expect_class(COMPLEX_CODE, "code", "complex")
    sdk = client(partners, key_for(partners, "acme", "u-no-consent"))
    with pytest.raises(openai.PermissionDeniedError) as info:
        auto(sdk, COMPLEX_CODE)
    assert info.value.code == "consent_required"
    assert "anthropic" in info.value.message
    row = usage_row(partners, info.value.response.headers["x-request-id"])
    assert (row["status"], row["error_code"]) == (403, "consent_required")
    assert (row["category"], row["difficulty"], row["attempts"]) == ("code", "complex", 0)
    assert row["provider"] is None


def test_a_stay_private_tenant_is_answered_on_the_device_without_consent(
    partners: VeilServer,
) -> None:
    expect_class(COMPLEX_CODE, "code", "complex")
    key = key_for(partners, "calm", "u-calm")
    raw = auto(client(partners, key), COMPLEX_CODE)
    assert raw.headers["x-veil-tier"] == "device"
    assert raw.headers["x-veil-provider"] == "phone"
    assert raw.headers["x-veil-consent-missing"] == "anthropic"
    assert "stayed private" in raw.headers["x-veil-route-reason"]
    assert raw.parse().choices[0].message.content == echoed(COMPLEX_CODE)
    row = assert_private_row(partners, raw.headers["x-request-id"], COMPLEX_CODE)
    assert (row["tier"], row["partner"], row["category"]) == ("device", None, "code")

    # With a standing consent the same request goes to the partner.
    grant = httpx.post(
        partners.url + "/v1/consents",
        headers={"authorization": f"Bearer {key}"},
        json={"partner": "anthropic"},
    )
    assert grant.status_code == 201, grant.text
    raw = auto(client(partners, key), COMPLEX_CODE)
    assert raw.headers["x-veil-provider"] == "claude"
    assert "x-veil-consent-missing" not in raw.headers
    assert usage_row(partners, raw.headers["x-request-id"])["consent"] == "standing"


def device_only_router() -> Router:
    """The bundled llama.cpp device alone (not loaded: only its window and its limits count)."""
    parsed = parse_config("providers: [{name: device, type: llama_cpp, n_ctx: 400}]\n")
    providers = {p.name: build_provider(p) for p in parsed.providers}
    return Router(parsed, providers, FixedClassifier("code", "complex"))


def test_auto_without_a_model_that_can_do_the_request_says_why() -> None:
    router = device_only_router()
    assert names(router.plan(ask("hello", max_tokens=10), "acme")) == ["smollm2-135m-instruct"]
    with pytest.raises(InvalidRequest) as too_long:
        router.plan(ask("word " * 400), "acme")
    assert too_long.value.code == "context_length_exceeded"
    assert "tokens" in too_long.value.message
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(InvalidRequest) as unsupported:
        router.plan(ask("hello", max_tokens=10, tools=[tool]), "acme")
    assert unsupported.value.code == "unsupported_parameter"
    assert "tools" in unsupported.value.message
