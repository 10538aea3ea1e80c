"""A node's measurement: one SHA-256 over what decides how it treats a request.

The measurement is ``SHA-256`` of these lines (UTF-8, each ending in ``\\n``)::

    veil-node-measurement/v1
    code <SHA-256 of the code manifest>
    config <SHA-256 of the node's configuration as canonical JSON, secrets excluded>
    model <SHA-256 of the model: the file, or a directory's manifest>

The code manifest lists every file of the installed ``veil`` package (bytecode caches
excluded) as ``<path>\\0<SHA-256 of its bytes>\\n`` sorted by path, then the Python version
and the versions of the packages that handle requests on the node. A manifest of a model
directory (a serving engine's safetensors) lists its files the same way.

What it leaves out, on purpose: where the node listens, its identity key file and its
token (secrets) — none of them change what happens to a request.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import veil

MEASUREMENT_VERSION = "veil-node-measurement/v1"
#: Packages whose code runs on a request's path through a node, besides veil itself.
RUNTIME_PACKAGES = (
    "cryptography",
    "llama-cpp-python",
    "aiohttp",
    "orjson",
    "pydantic",
    "starlette",
    "uvicorn",
)
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _manifest(root: Path, *, skip_caches: bool) -> list[str]:
    lines = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        parts = path.relative_to(root).parts
        if skip_caches and ("__pycache__" in parts or path.suffix == ".pyc"):
            continue
        lines.append(f"{'/'.join(parts)}\0{file_digest(path)}\n")
    return lines


def code_digest() -> str:
    """SHA-256 of the installed veil package and the runtime it depends on."""
    root = Path(veil.__file__).resolve().parent
    lines = _manifest(root, skip_caches=True)
    lines.append(f"python\0{sys.version_info.major}.{sys.version_info.minor}\n")
    for name in RUNTIME_PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "absent"
        lines.append(f"package\0{name}\0{version}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def model_digest(path: Path) -> str:
    """SHA-256 of a model file, or of a model directory's manifest."""
    if path.is_dir():
        return hashlib.sha256("".join(_manifest(path, skip_caches=False)).encode()).hexdigest()
    return file_digest(path)


def config_digest(config: dict[str, Any]) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Measurement:
    code: str
    config: str
    model: str

    @property
    def value(self) -> str:
        text = (
            f"{MEASUREMENT_VERSION}\ncode {self.code}\nconfig {self.config}\nmodel {self.model}\n"
        )
        return hashlib.sha256(text.encode()).hexdigest()


def measure(config: dict[str, Any], model: Path) -> Measurement:
    return Measurement(code_digest(), config_digest(config), model_digest(model))
