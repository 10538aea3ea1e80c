"""Where Veil keeps its state: ``$VEIL_HOME`` (default ``~/.veil``)."""

from __future__ import annotations

import os
from pathlib import Path


def veil_home() -> Path:
    """The state directory, created with mode 0700 if it does not exist."""
    home = Path(os.environ.get("VEIL_HOME") or Path.home() / ".veil").expanduser()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home


def default_database_url(home: Path) -> str:
    return f"sqlite:///{home / 'veil.db'}"
