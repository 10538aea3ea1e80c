"""Counting tokens when an upstream does not say how many it used.

Most upstreams report usage (Veil asks for it when streaming); some OpenAI-compatible
servers do not, and a stream cut short never gets to its usage chunk. Then Veil counts the
tokens itself, with the bundled device model's tokenizer (a 49k-token byte-level BPE, close
to what the partners' tokenizers give for English) plus 4 tokens per message for the chat
template, and records ``token_method: counted``. Without the tokenizer it falls back to the
character estimate and says ``estimated``.

The text is tokenized in memory and dropped; nothing of it is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from veil.chat import ChatRequest, Usage
from veil.routing.router import prompt_tokens

log = logging.getLogger("veil.tokens")

#: Tokens a chat template adds around each message.
PER_MESSAGE = 4


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """llama.cpp prints set-up notes straight to file descriptor 2; keep the log clean."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class TokenCounter:
    def __init__(self) -> None:
        self._vocab: Any = None
        self._lock = threading.Lock()
        self._failed = False

    def load(self) -> None:
        """Load the tokenizer (vocabulary only: about 0.2 s, a few MB)."""
        if self._vocab is not None or self._failed:
            return
        with self._lock:
            if self._vocab is not None:
                return
            try:
                from llama_cpp import Llama

                from veil.providers.llama_cpp import bundled_model_path

                with _quiet_stderr():
                    self._vocab = Llama(
                        model_path=str(bundled_model_path()),
                        vocab_only=True,
                        verbose=False,
                        n_ctx=8,
                    )
            except Exception as exc:  # no tokenizer: estimate instead, and say so once
                self._failed = True
                log.warning("token counter unavailable (%s): estimating", type(exc).__name__)

    def tokens(self, text: str) -> int | None:
        if not text:
            return 0
        self.load()
        if self._vocab is None:
            return None
        return len(self._vocab.tokenize(text.encode(), add_bos=False, special=False))

    def count(self, request: ChatRequest, answer: str, reported: Usage) -> Usage:
        """Usage for a request the upstream did not count: the prompt as sent, the answer as
        delivered. Whatever the upstream did report (a prompt count) is kept."""
        completion = self.tokens(answer)
        if completion is None:
            estimate = -(-len(answer) // 3)
            prompt = reported.prompt_tokens or prompt_tokens(request)
            return Usage(prompt, max(estimate, reported.completion_tokens), "estimated")
        prompt = reported.prompt_tokens
        if not prompt:
            counted = 0
            for message in request.messages:
                n = self.tokens(message.text())
                assert n is not None
                counted += n + PER_MESSAGE
            prompt = counted
        return Usage(prompt, completion, "counted")
