"""Every error a caller can meet: OpenAI's shape, the right status, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.server import VeilServer

HI = [{"role": "user", "content": "hello"}]


@pytest.fixture
def http(server: VeilServer, admin_headers: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=admin_headers, timeout=60) as c:
        yield c


@pytest.fixture(autouse=True)
def still_serving(server: VeilServer, admin_headers: dict[str, str]) -> Iterator[None]:
    yield
    # After every error, the same server answers a good request.
    r = httpx.post(
        server.url + "/v1/chat/completions",
        headers=admin_headers,
        json={"model": "fake/echo", "messages": HI},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert server.process.poll() is None


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["message"]
    assert r.headers.get("x-request-id")
    assert r.headers.get("x-veil-tier")
    return dict(body["error"])


def chat(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"messages": HI, **body})


def test_malformed_json_is_400(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", content=b'{"model": "device", "messages": [')
    err = error_of(r, 400)
    assert (err["type"], err["code"]) == ("invalid_request_error", "invalid_json")


def test_body_that_is_not_an_object_is_400(http: httpx.Client) -> None:
    err = error_of(http.post("/v1/chat/completions", content=b"[1, 2]"), 400)
    assert err["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "device", "temperature": "hot"}, "temperature"),
        ({"model": "device", "temperature": 3}, "temperature"),
        ({"model": "device", "max_tokens": 0}, "max_tokens"),
        ({"model": "device", "top_p": 1.5}, "top_p"),
        ({"model": "device", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "device", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "device", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "device", "messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
        ({"model": "device", "messages": []}, "messages"),
        ({"model": 7}, "model"),
        ({"model": "device", "n": 2}, "n"),
        ({"model": "device", "stream": "yes"}, "stream"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    err = error_of(chat(http, **body), 400)
    assert err["param"] == param
    assert param.split("[")[0] in err["message"]


def test_missing_model_is_400(http: httpx.Client) -> None:
    err = error_of(http.post("/v1/chat/completions", json={"messages": HI}), 400)
    assert err["param"] == "model"
    assert "missing required parameter" in err["message"]


def test_unknown_argument_is_400_naming_it(http: httpx.Client) -> None:
    err = error_of(chat(http, model="device", temprature=0.2), 400)
    assert err["param"] == "temprature"
    assert "unrecognized request argument" in err["message"]


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=HI)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"  # type: ignore[index]


def test_unknown_route_is_404_in_openai_shape(http: httpx.Client) -> None:
    err = error_of(http.get("/v1/nothing-here"), 404)
    assert err["type"] == "invalid_request_error"


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    big = "x" * (4 * 1024 * 1024 + 1)
    r = http.post(
        "/v1/chat/completions",
        json={"model": "device", "messages": [{"role": "user", "content": big}]},
    )
    err = error_of(r, 413)
    assert err["code"] == "request_too_large"


def test_chunked_body_over_the_limit_is_413(http: httpx.Client) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"model": "device", "messages": [{"role": "user", "content": "'
        for _ in range(80):
            yield b"y" * 65536
        yield b'"}]}'

    err = error_of(http.post("/v1/chat/completions", content=body()), 413)
    assert err["code"] == "request_too_large"


def test_upstream_429_is_429_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="private-429", messages=HI)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.response.headers["x-veil-provider"] == "upstream"


def test_fake_429_is_429_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="fake/error-429", messages=HI)
    assert info.value.response.headers["retry-after"] == "2"


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("private-500", 502, "upstream_error"),
        ("private-bad-json", 502, "upstream_error"),
        ("private-401", 502, "upstream_auth"),
        ("private-503", 503, "upstream_unavailable"),
        ("unreachable", 503, "upstream_unavailable"),
        ("private-slow", 504, "upstream_timeout"),
        ("fake/error-500", 502, "upstream_error"),
        ("fake/timeout", 504, "upstream_timeout"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failures_map_to_5xx(
    http: httpx.Client, model: str, status: int, code: str, stream: bool
) -> None:
    err = error_of(chat(http, model=model, stream=stream), status)
    assert err["code"] == code
    assert err["type"] == "api_error"


def test_upstream_400_is_passed_as_400_without_its_message(http: httpx.Client) -> None:
    r = chat(http, model="private-400")
    err = error_of(r, 400)
    assert err["code"] == "test_400"
    assert err["param"] == "messages"
    assert "it saw" not in err["message"]  # the upstream's message may quote the prompt


def test_stream_cut_mid_way_ends_with_an_error_event(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="private-cut", messages=HI, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.append(chunk)
    assert received, "the chunks before the cut were delivered"
    assert "closed the stream" in info.value.message


def test_fake_stream_cut_mid_way(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake/cut", messages=[{"role": "user", "content": "a b c d e"}], stream=True
    )
    with pytest.raises(openai.APIError):
        list(stream)


def test_method_not_allowed_is_405(http: httpx.Client) -> None:
    error_of(http.get("/v1/chat/completions"), 405)


@pytest.mark.parametrize(
    ("kwargs", "error", "status"),
    [
        ({"model": "device", "temperature": 5}, openai.BadRequestError, 400),
        ({"model": "nope"}, openai.NotFoundError, 404),
        (
            {"model": "device", "messages": [{"role": "user", "content": "x" * (5 << 20)}]},
            openai.APIStatusError,
            413,
        ),
        ({"model": "private-429"}, openai.RateLimitError, 429),
        ({"model": "private-500"}, openai.InternalServerError, 502),
        ({"model": "unreachable"}, openai.InternalServerError, 503),
        ({"model": "private-slow"}, openai.InternalServerError, 504),
    ],
)
def test_official_sdk_raises_the_matching_error(
    client: openai.OpenAI, kwargs: dict[str, Any], error: type[openai.APIStatusError], status: int
) -> None:
    with pytest.raises(error) as info:
        client.chat.completions.create(**{"messages": HI, **kwargs})
    assert info.value.status_code == status
    assert info.value.response.headers["x-request-id"]


def test_fake_flaky_fails_every_other_call_and_a_retry_hides_it(
    server: VeilServer, client: openai.OpenAI
) -> None:
    def failures() -> float:
        metrics = httpx.get(server.url + "/metrics").text
        line = 'veil_upstream_attempts_total{model="flaky",outcome="upstream_unavailable",'
        found = [float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines() if x.startswith(line)]
        return sum(found)

    before = failures()
    for _ in range(4):
        assert client.chat.completions.create(model="fake/flaky", messages=HI).choices
    assert failures() - before in (3, 4)  # every other call failed, and was retried
