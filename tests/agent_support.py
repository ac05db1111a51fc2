"""Shared by the tool-call and Responses API tests: a real server with room for agent-sized prompts.

It runs with a 4096-token window (the shared test server has 2048) and answers to the alias `smollm2`,
the model name Codex sends in the captured configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from test_server_support import ServerProcess, start_server

ALIAS = "smollm2"

WEATHER_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
}
READ_FILE_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {"path": {"type": "string"}, "max_lines": {"type": "integer"}},
    "required": ["path"],
}
SCHEMAS = {"get_weather": WEATHER_PARAMS, "read_file": READ_FILE_PARAMS}


def chat_tool(name: str) -> dict[str, Any]:
    descriptions = {"get_weather": "Current weather in a city", "read_file": "Read a file of the repository"}
    return {
        "type": "function",
        "function": {"name": name, "description": descriptions[name], "parameters": SCHEMAS[name]},
    }


def flat_tool(name: str) -> dict[str, Any]:
    """The same function in the Responses API's flat tool shape."""
    fn = chat_tool(name)["function"]
    return {"type": "function", **fn}


def valid_arguments(name: str, arguments: str, schemas: dict[str, Any] = SCHEMAS) -> dict[str, Any]:
    """The call's arguments, parsed and validated against its function's schema (or the test fails)."""
    import json

    value = json.loads(arguments)
    assert isinstance(value, dict)
    jsonschema.validate(value, schemas[name])
    return value


@pytest.fixture(scope="session")
def agent_server() -> Iterator[ServerProcess]:
    proc = start_server("--ctx", "4096", "--alias", ALIAS)
    yield proc
    proc.stop()
