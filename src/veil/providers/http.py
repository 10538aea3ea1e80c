"""The one HTTP layer every remote provider uses: pools, timeouts, SSE, error mapping.

aiohttp rather than httpx: in ``bench/overhead.py`` the gateway's own cost per request is
the headline figure, and aiohttp's client spends markedly less CPU per request than
httpx's (see docs/architecture.md). Low-level exceptions are converted to Veil's error tree
here, at the boundary; upstream error bodies are parsed for a code but never passed on
verbatim, because an upstream may quote the prompt back in its message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from veil.config import Timeouts
from veil.errors import (
    BodyTooLarge,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    VeilError,
)
from veil.providers.base import CONNECT_TIMEOUT

ErrorCode = Callable[[bytes], tuple[str | None, str | None]]


class HttpClient:
    def __init__(
        self,
        provider: str,
        timeouts: Timeouts,
        max_connections: int,
        error_code: ErrorCode | None = None,
    ) -> None:
        """``error_code`` reads ``(code, param)`` out of an error body in the upstream's
        own shape; the default reads OpenAI's ``{"error": {"code", "param"}}``."""
        self._provider = provider
        self._error_code = error_code or openai_error_code
        self._timeout_default = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._connect_timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _timeout(self) -> aiohttp.ClientTimeout:
        """The session's timeouts, with the deployment's connect timeout if it has one."""
        connect = CONNECT_TIMEOUT.get()
        if connect is None:
            return self._timeout_default
        timeout = self._connect_timeouts.get(connect)
        if timeout is None:
            base = self._timeout_default
            timeout = aiohttp.ClientTimeout(
                total=base.total, sock_connect=connect, sock_read=base.sock_read
            )
            self._connect_timeouts[connect] = timeout
        return timeout

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        # Veil never forwards the caller's cookies, proxies or auth to an upstream.
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout_default,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            skip_auto_headers=("User-Agent",),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamUnavailable(f"provider {self._provider} is not started")
        return self._session

    async def post_json(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> dict[str, Any]:
        """POST a JSON body and return the JSON answer, or raise a mapped ``VeilError``."""
        try:
            async with self.session.post(
                url, data=orjson.dumps(body), headers=headers, timeout=self._timeout()
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise self.status_error(resp.status, resp.headers, raw)
        except VeilError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self.transport_error(exc) from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"provider {self._provider} answered with invalid JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError(f"provider {self._provider} answered with unexpected JSON")
        return data

    @asynccontextmanager
    async def post_sse(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """POST and yield an iterator over the ``data:`` payloads of the SSE answer."""
        try:
            async with self.session.post(
                url, data=orjson.dumps(body), headers=headers, timeout=self._timeout()
            ) as resp:
                if resp.status >= 400:
                    raise self.status_error(resp.status, resp.headers, await resp.read())
                yield self._events(resp)
        except VeilError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self.transport_error(exc) from None

    async def _events(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for line in resp.content:
                if line.startswith(b"data:"):
                    yield line[5:].strip()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self.transport_error(exc) from None

    def transport_error(self, exc: BaseException) -> UpstreamError:
        name = self._provider
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return UpstreamTimeout(f"provider {name} did not answer in time")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamUnavailable(f"cannot connect to provider {name}")
        if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
            return UpstreamError(f"provider {name} closed the connection before answering")
        return UpstreamError(f"provider {name} failed: {type(exc).__name__}")

    def status_error(self, status: int, headers: Mapping[str, str], raw: bytes) -> VeilError:
        name = self._provider
        code, param = self._error_code(raw)
        if status == 429:
            return RateLimited(
                f"provider {name} is rate limiting (HTTP 429)",
                code=code or "upstream_rate_limited",
                retry_after=_retry_after(headers),
            )
        if status == 413:
            return BodyTooLarge(
                f"provider {name} found the request too large (HTTP 413)",
                code=code or "request_too_large",
            )
        if status in (400, 422):
            return InvalidRequest(
                f"provider {name} rejected the request (HTTP {status}"
                + (f", code {code})" if code else ")"),
                code=code or "upstream_rejected",
                param=param,
            )
        if status in (408, 504):
            return UpstreamTimeout(f"provider {name} timed out (HTTP {status})")
        if status in (503, 529):  # 529: Anthropic's "overloaded, retry later"
            return UpstreamUnavailable(
                f"provider {name} is unavailable (HTTP {status})",
                retry_after=_retry_after(headers) if "retry-after" in headers else None,
            )
        if status == 404:
            return UpstreamError(
                f"provider {name} does not know this model or deployment (HTTP 404)",
                code="upstream_not_found",
            )
        if status in (401, 403):
            return UpstreamError(
                f"provider {name} refused Veil's credentials (HTTP {status})", code="upstream_auth"
            )
        return UpstreamError(f"provider {name} returned HTTP {status}")


def openai_error_code(raw: bytes) -> tuple[str | None, str | None]:
    """OpenAI's error ``code`` and ``param`` (identifiers, never its message)."""
    try:
        err = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None, None
    if not isinstance(err, dict):
        return None, None
    code, param = err.get("code"), err.get("param")
    return (code if _identifier(code) else None), (param if _identifier(param) else None)


def identifier(value: Any) -> str | None:
    """``value`` if it looks like an identifier (an error code, a field name), else None."""
    return value if _identifier(value) else None


def _identifier(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= 64
        and value.replace("_", "").replace(".", "").replace("-", "").isalnum()
    )


def _retry_after(headers: Mapping[str, str]) -> float:
    try:
        return max(1.0, float(headers.get("retry-after", "1")))
    except ValueError:
        return 1.0
