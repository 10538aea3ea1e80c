"""The task categories and difficulties (defined in ``veil.tasks``, which config also uses)."""

from veil.tasks import CATEGORIES, DIFFICULTIES, Category, Difficulty

__all__ = ["CATEGORIES", "DIFFICULTIES", "Category", "Difficulty"]
