"""Content safety: what is unsafe, who judges it, and what Veil does about it.

Categories are OpenAI's moderation categories (``CATEGORIES``), reported as well on Azure AI
Content Safety's four harm categories with severities (``AZURE_CATEGORIES``), plus two
prompt attacks (``ATTACKS``): a jailbreak in the user's own prompt, and instructions
injected through text the user supplies (documents, emails, tool results).

A moderator (``Moderator``) turns a ``Screen`` — the user's own text and the documents it
carries — into a ``Verdict``: a probability per category it judges. The local classifier
(``veil.safety.classifier``) judges every category without a network; remote moderators
(``veil.safety.remote``) ask OpenAI, Azure AI Content Safety or a Llama Guard model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

#: OpenAI's moderation categories (``omni-moderation``), in its order.
CATEGORIES: Final[tuple[str, ...]] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
#: Attacks on the model rather than harm in the text.
ATTACKS: Final[tuple[str, ...]] = ("jailbreak", "indirect_injection")
ALL_CATEGORIES: Final[tuple[str, ...]] = CATEGORIES + ATTACKS

#: Azure AI Content Safety's four harm categories, and the OpenAI categories each covers.
AZURE_CATEGORIES: Final[dict[str, tuple[str, ...]]] = {
    "Hate": ("hate", "hate/threatening", "harassment", "harassment/threatening"),
    "SelfHarm": ("self-harm", "self-harm/intent", "self-harm/instructions"),
    "Sexual": ("sexual", "sexual/minors"),
    "Violence": ("violence", "violence/graphic", "illicit/violent", "harassment/threatening"),
}
#: Azure's ``FourSeverityLevels``: the least score that reaches each severity.
SEVERITY_FLOORS: Final[tuple[tuple[int, float], ...]] = ((6, 0.9), (4, 0.7), (2, 0.5))


def severity(score: float) -> int:
    """A probability as an Azure severity: 0, 2, 4 or 6."""
    for level, floor in SEVERITY_FLOORS:
        if score >= floor:
            return level
    return 0


def score_of_severity(level: int) -> float:
    """The least probability an Azure severity stands for (0 → 0.0, 2 → 0.5, …, 7 → 0.9)."""
    if level <= 0:
        return 0.0
    for floor_level, floor in SEVERITY_FLOORS:
        if level >= floor_level:
            return floor
    return 0.5


@dataclass(frozen=True, slots=True)
class Screen:
    """What is judged: the user's own words, and the documents they supplied (tool results,
    pasted emails or files) in which instructions may hide."""

    prompt: str
    documents: Sequence[str] = ()


@dataclass(slots=True)
class Verdict:
    """A probability (0..1) per category a moderator judged; categories it did not judge
    are absent, never 0."""

    scores: dict[str, float] = field(default_factory=dict)
    #: Which moderators contributed.
    sources: list[str] = field(default_factory=list)

    def merge(self, other: Verdict) -> Verdict:
        """The worst of both, category by category."""
        scores = dict(self.scores)
        for name, value in other.scores.items():
            if value > scores.get(name, -1.0):
                scores[name] = value
        return Verdict(scores, [*self.sources, *other.sources])

    def azure(self) -> dict[str, int]:
        """Severity per Azure harm category (the worst of the categories it covers)."""
        return {
            name: severity(max((self.scores.get(c, 0.0) for c in covered), default=0.0))
            for name, covered in AZURE_CATEGORIES.items()
        }


class Moderator(Protocol):
    """Judges a screen. ``categories`` are those it can judge; it raises
    ``veil.errors.UpstreamError`` (or a subclass) when it cannot answer."""

    name: str
    categories: tuple[str, ...]

    async def moderate(self, screen: Screen) -> Verdict: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
