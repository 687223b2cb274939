"""Module-scoped fixtures for tests that talk to a real server through the official openai client:
SmolLM2 on one thread behind an in-process server on 127.0.0.1. Import them into a test module
(``from openai_server import KEY, base_url, client, model``) to get one server per module."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from server_helpers import running

import edgeinfer as ei
from edgeinfer.server import ServerOptions

KEY = "openai-test-key"
# two tools for the tool-calling tests, and their parameters' schemas by name
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string"}}}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["a", "b"],
                   "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}
TOOLS = [WEATHER, ADD]
TOOL_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def model(smollm2_path):
    # one thread: on 2 cores shared with clients (and other processes) a second llama.cpp thread mostly
    # waits for the first (see test_server.py)
    m = ei.load(smollm2_path, n_ctx=1024, n_threads=1, max_sequences=2)
    yield m
    m.close()


@pytest.fixture(scope="module")
def base_url(model) -> Iterator[str]:
    with running([model], ServerOptions(api_key=KEY)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=120)
