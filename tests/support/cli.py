"""Run the ``veil`` command as a subprocess, with its own home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env["VEIL_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "veil", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=180,
    )
