"""What every partner provider's integration tests share: the consented SDK client and the
check that an upstream error reaches the caller mapped, and without the upstream's words."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import openai
import pytest

from tests.support.server import ADMIN_KEY, VeilServer

#: Upstream HTTP status → the status Veil answers with.
MAPPED_STATUS = {400: 400, 401: 502, 403: 502, 429: 429, 500: 502, 503: 503}
SECRET = "my secret prompt"
F = TypeVar("F", bound=Callable[..., Any])


def over_upstream_errors(bad_request: str, rate_limited: str) -> Callable[[F], F]:
    """Parametrize a test over the upstream statuses every partner maps — ``(status, the
    SDK error the caller gets, Veil's code)`` — and over plain and streamed requests. Only
    the codes of a 400 and a 429 differ between partners (they are the upstream's own)."""
    cases = pytest.mark.parametrize(
        ("status", "error", "code"),
        [
            (400, openai.BadRequestError, bad_request),
            (401, openai.InternalServerError, "upstream_auth"),
            (403, openai.InternalServerError, "upstream_auth"),
            (429, openai.RateLimitError, rate_limited),
            (500, openai.InternalServerError, "upstream_error"),
            (503, openai.InternalServerError, "upstream_unavailable"),
        ],
    )
    streams = pytest.mark.parametrize("stream", [False, True])

    def apply(test: F) -> F:
        return cases(streams(test))  # type: ignore[no-any-return]

    return apply


_OPEN: list[openai.OpenAI] = []


def client(server: VeilServer, key: str = ADMIN_KEY, consent: str | None = None) -> openai.OpenAI:
    """An SDK client for ``key``, sending ``x-veil-consent: consent``; closed after the test
    (by ``close_clients``, an autouse fixture in conftest)."""
    headers = {"x-veil-consent": consent} if consent else {}
    _OPEN.append(
        openai.OpenAI(
            base_url=server.url + "/v1",
            api_key=key,
            max_retries=0,
            timeout=30,
            default_headers=headers,
        )
    )
    return _OPEN[-1]


def close_clients() -> None:
    while _OPEN:
        _OPEN.pop().close()


def partner_client(veil: VeilServer) -> openai.OpenAI:
    """An SDK client that consents to every partner (use it as a context manager)."""
    return openai.OpenAI(
        base_url=veil.url + "/v1",
        api_key=ADMIN_KEY,
        max_retries=0,
        timeout=30,
        default_headers={"x-veil-consent": "*"},
    )


def assert_error_mapped(
    client: openai.OpenAI,
    model: str,
    status: int,
    error: type[openai.APIStatusError],
    code: str,
    stream: bool,
    upstream_words: str,
) -> openai.APIStatusError:
    with pytest.raises(error) as info:
        result = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": SECRET}], stream=stream
        )
        list(result)
    assert info.value.status_code == MAPPED_STATUS[status]
    assert info.value.code == code
    assert SECRET not in info.value.response.text
    assert upstream_words not in info.value.response.text
    return info.value
