"""A request shaped like Codex CLI 0.171's first `POST /v1/responses` of a session, written for these tests.

The shape (keys, item and tool kinds, their counts) follows what the agent sends; every text, name and
schema here is our own. Codex sends no max_output_tokens; the tests add one so the tiny model stops soon.
"""

from __future__ import annotations

from typing import Any

SYSTEM_TEXT = """You are a coding agent working in a terminal on the user's machine. You read the repository,
run commands, and change files to finish the task you are given. Work in small steps and check each one.

How to work:
- Start by looking at the files that matter for the task. Prefer fast search tools.
- Before changing code, say in one sentence what you will change and why.
- Keep changes small and in the style of the surrounding code. Do not rename things without a reason.
- After a change, run the narrowest test that covers it. If it fails, read the failure before retrying.
- When you are done, summarise what changed and what you checked, in a few short lines.

Tools: run shell commands with run_shell; answer prompts of a running command with send_input; ask the
user only when a choice cannot be made from the code. Keep a short plan with set_plan and update_plan
for tasks with several steps. Never print secrets. Never delete files you did not create."""

SANDBOX_TEXT = """Commands run in a sandbox: the workspace is writable, the network is off. A command that needs
more must be asked for with the escalation field, and the user decides."""
ENVIRONMENT_TEXT = """Approval policy: ask before commands that leave the sandbox. Time zone: UTC."""
CONTEXT_TEXT = """<environment>
  <cwd>/home/dev/project</cwd>
  <shell>bash</shell>
  <date>2026-11-30</date>
</environment>"""


def _fn(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"type": "function", "name": name, "description": description, "strict": False, "parameters": parameters}


STRING = {"type": "string"}
TOOLS: list[dict[str, Any]] = [
    _fn(
        "run_shell",
        "Run a shell command in the workspace and return its output.",
        {
            "command": {"type": "string", "description": "The command line."},
            "workdir": {"type": "string", "description": "Directory to run in; the workspace root if omitted."},
            "timeout_ms": {"type": "number", "description": "Give up after this many milliseconds."},
            "escalation": {"type": "string", "enum": ["sandboxed", "ask_user"]},
            "tty": {"type": "boolean"},
        },
        ["command"],
    ),
    _fn(
        "send_input",
        "Write characters to a running command's standard input.",
        {"session": {"type": "number"}, "text": STRING},
        ["session"],
    ),
    _fn(
        "ask_user",
        "Ask the user to choose between a few options.",
        {
            "questions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"question": STRING, "options": {"type": "array", "items": STRING}},
                    "required": ["question", "options"],
                    "additionalProperties": False,
                },
            }
        },
        ["questions"],
    ),
    _fn("view_image", "Show an image file from the workspace.", {"path": STRING}, ["path"]),
    _fn("get_plan", "Return the current plan.", {}, []),
    _fn(
        "set_plan", "Start a plan with an objective.", {"objective": STRING, "steps": {"type": "number"}}, ["objective"]
    ),
    _fn(
        "update_plan",
        "Mark the plan's progress.",
        {"status": {"type": "string", "enum": ["active", "done", "blocked"]}},
        ["status"],
    ),
    {
        "type": "namespace",
        "name": "agents",
        "description": "Helpers that run sub-tasks in parallel.",
        "tools": [_fn("close_helper", "Stop a helper.", {"id": STRING}, ["id"])],
    },
    {"type": "web_search", "external_web_access": True},
]


def _message(role: str, *texts: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": t} for t in texts]}


def codex_request(session: str, task: str = "List the Python files in this project.") -> dict[str, Any]:
    """Keyword arguments for client.responses.create (client_metadata, which the SDK does not know, as extra_body)."""
    return {
        "model": "smollm2",
        "stream": True,
        "input": [
            _message("developer", SYSTEM_TEXT),
            _message("developer", SANDBOX_TEXT, ENVIRONMENT_TEXT),
            _message("user", CONTEXT_TEXT),
            _message("user", task),
        ],
        "tools": TOOLS,
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": session,
        "max_output_tokens": 64,
        "extra_body": {"client_metadata": {"session_id": session, "origin": "tests"}},
        "extra_headers": {"session-id": session},
    }


def next_turn(request: dict[str, Any], output: list[Any]) -> dict[str, Any]:
    """The session's next request: the same input, the answer's items sent back (a call gets a result), then a
    new user message; what Codex does with store false."""
    items = list(request["input"])
    for item in output:
        if item.type == "message":
            text = {"type": "output_text", "text": item.content[0].text}
            items.append({"type": "message", "role": "assistant", "content": [text]})
        elif item.status == "completed":  # a call cut by max_output_tokens has no arguments to send back
            call = {"call_id": item.call_id, "name": item.name, "arguments": item.arguments}
            items.append({"type": "function_call", **call})
            items.append({"type": "function_call_output", "call_id": item.call_id, "output": "src/app.py"})
    items.append(_message("user", "Now show me the first one."))
    return request | {"input": items}
