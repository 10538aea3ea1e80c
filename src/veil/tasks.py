"""The task categories and difficulties the classifier and the router speak in."""

from __future__ import annotations

from typing import Literal, get_args

Category = Literal[
    "summarize",
    "rewrite",
    "extract",
    "classify",
    "chat",
    "code",
    "math_reasoning",
    "creative_writing",
    "knowledge_qa",
    "analysis",
    "translate",
]
CATEGORIES: tuple[Category, ...] = get_args(Category)
Difficulty = Literal["simple", "complex"]
DIFFICULTIES: tuple[Difficulty, ...] = get_args(Difficulty)
