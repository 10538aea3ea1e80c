"""The Azure OpenAI provider end to end: the official SDK → `veil serve` → a local Azure.

Azure is addressed by deployment (in the URL, with ``api-version``), with the key in an
``api-key`` header; its streams open with a ``prompt_filter_results`` chunk that callers
never see; its content filter is a 400 with code ``content_filter``. ``store`` and
``metadata`` are never sent: the local Azure, like Azure's GA API, refuses fields it does
not know.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from tests.support.openai_server import TOOL_CALLS, USAGE, OpenAIServer, function_calls
from tests.support.partner import assert_error_mapped, over_upstream_errors, partner_client
from tests.support.server import ADMIN_KEY, VeilServer, start_server
from veil.config import AzureOpenAIProviderConfig
from veil.providers.azure_openai import AzureOpenAIProvider

AZURE_KEY = "azure-test-key-0123456789abcdef"
BEHAVIOURS = ["ok", "echo", "tools", "content-filter", "cut"]
ERRORS = [400, 401, 403, 429, 500, 503]
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def azure() -> Iterator[OpenAIServer]:
    server = OpenAIServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def veil(tmp_path_factory: pytest.TempPathFactory, azure: OpenAIServer) -> Iterator[VeilServer]:
    names = BEHAVIOURS + [f"error-{s}" for s in ERRORS]
    models = "\n".join(
        f"  - {{name: azure-{n}, deployments: [{{provider: az, model: {n}}}]}}" for n in names
    )
    config = f"""
providers:
  - name: az
    type: azure_openai
    base_url: "{azure.origin}"
    api_key: env:TEST_AZURE_KEY
    timeout: {{connect: 2, read: 5, total: 30}}
  - name: az-preview
    type: azure_openai
    base_url: "{azure.origin}/"
    api_key: env:TEST_AZURE_KEY
    api_version: 2025-01-01-preview
models:
{models}
  - {{name: azure-preview, deployments: [{{provider: az-preview, model: ok}}]}}
"""
    home = tmp_path_factory.mktemp("veil-azure") / "home"
    server = start_server(home, config, env={"TEST_AZURE_KEY": AZURE_KEY})
    yield server
    server.stop()


@pytest.fixture
def client(veil: VeilServer) -> Iterator[openai.OpenAI]:
    with partner_client(veil) as sdk:
        yield sdk


def test_deployment_url_api_version_and_api_key(client: openai.OpenAI, azure: OpenAIServer) -> None:
    got, raw = azure.capture(
        lambda: client.chat.completions.with_raw_response.create(
            model="azure-ok",
            messages=HI,
            max_tokens=20,
            store=True,
            metadata={"team": "search"},
        )
    )
    completion = raw.parse()
    assert got.path == "/openai/deployments/ok/chat/completions"
    assert got.query == {"api-version": "2024-10-21"}
    assert got.headers["api-key"] == AZURE_KEY
    assert "authorization" not in got.headers
    assert ADMIN_KEY not in str(got.headers)
    assert "model" not in got.body  # the deployment is in the URL
    assert "store" not in got.body  # Azure stores nothing unless asked; GA versions refuse it
    assert "metadata" not in got.body
    assert got.body["max_tokens"] == 20
    assert got.body["messages"] == HI
    assert completion.choices[0].message.content == "Hello from upstream."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "azure-ok"
    assert completion.usage is not None
    assert completion.usage.total_tokens == USAGE["total_tokens"]
    assert raw.headers["x-veil-provider"] == "az"


def test_configured_api_version_is_used(client: openai.OpenAI, azure: OpenAIServer) -> None:
    got, _ = azure.capture(
        lambda: client.chat.completions.create(model="azure-preview", messages=HI)
    )
    assert got.path == "/openai/deployments/ok/chat/completions"  # no double slash
    assert got.query == {"api-version": "2025-01-01-preview"}


def test_stream_skips_the_prompt_filter_chunk(client: openai.OpenAI, azure: OpenAIServer) -> None:
    got, chunks = azure.capture(
        lambda: list(
            client.chat.completions.create(
                model="azure-echo",
                messages=[{"role": "user", "content": "one two three"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    )
    assert got.body["stream_options"] == {"include_usage": True}
    # Every chunk the caller sees has choices, except the one usage chunk at the end.
    assert all(c.choices for c in chunks[:-1])
    deltas = [c.choices[0].delta.content for c in chunks[:-1] if c.choices[0].delta.content]
    assert deltas == ["echo:", " one", " two", " three"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == USAGE["completion_tokens"]
    assert len({c.id for c in chunks}) == 1


def test_stream_without_include_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="azure-ok", messages=HI, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from upstream."


def test_tool_calls(client: openai.OpenAI) -> None:
    tool: ChatCompletionFunctionToolParam = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {}},
    }
    completion = client.chat.completions.create(
        model="azure-tools",
        messages=HI,
        tools=[tool],
    )
    calls = function_calls(completion.choices[0].message)
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == TOOL_CALLS
    chunks = list(
        client.chat.completions.create(
            model="azure-tools",
            messages=HI,
            tools=[tool],
            stream=True,
        )
    )
    streamed: dict[int, list[str]] = {}
    for chunk in chunks:
        for call in chunk.choices[0].delta.tool_calls or []:
            entry = streamed.setdefault(call.index, ["", "", ""])
            entry[0] += call.id or ""
            entry[1] += (call.function and call.function.name) or ""
            entry[2] += (call.function and call.function.arguments) or ""
    assert [tuple(streamed[i]) for i in sorted(streamed)] == TOOL_CALLS
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_content_filter_is_a_400_content_filter(client: openai.OpenAI, stream: bool) -> None:
    secret = "my secret prompt"
    with pytest.raises(openai.BadRequestError) as info:
        result = client.chat.completions.create(
            model="azure-content-filter",
            messages=[{"role": "user", "content": secret}],
            stream=stream,
        )
        list(result)
    assert info.value.code == "content_filter"
    assert secret not in info.value.response.text
    assert "filtered" not in info.value.response.text  # Azure's message is not passed on


@over_upstream_errors("test_error", "test_429")
def test_upstream_errors_are_mapped_without_their_message(
    client: openai.OpenAI, status: int, error: type[openai.APIStatusError], code: str, stream: bool
) -> None:
    err = assert_error_mapped(
        client, f"azure-error-{status}", status, error, code, stream, "upstream says no"
    )
    if status == 429:
        assert err.response.headers["retry-after"] == "7"


def test_truncated_stream_is_an_error(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="azure-cut", messages=HI, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_deployment_names_are_quoted_into_the_path() -> None:
    provider = AzureOpenAIProvider(
        AzureOpenAIProviderConfig(
            type="azure_openai", name="a", base_url="https://x.openai.azure.com", api_key="k"
        )
    )
    assert provider._url_for("gpt 4o/mini") == (
        "https://x.openai.azure.com/openai/deployments/gpt%204o%2Fmini/chat/completions"
        "?api-version=2024-10-21"
    )
    assert provider._headers["api-key"] == "k"
    assert "authorization" not in provider._headers
