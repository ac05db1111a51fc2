"""Tool-calling values: what a function is, how one was called, and which calls the model may make.

Every constructor validates and raises `ToolError` (an InvalidInputError) naming what is wrong;
`from_openai` readers accept the OpenAI chat-completions shapes, which llama.cpp also uses.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ToolError

__all__ = ["ToolCall", "ToolChoice", "ToolSpec", "Tools", "new_call_id"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")
CHOICE_MODES = ("auto", "none", "required", "function")


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ToolError(f"{what} must be an object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class ToolSpec:
    """One callable function: its name, what it does, and a JSON schema for its arguments."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"}, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ToolError(f"tool name {self.name!r} must match {_NAME.pattern}")
        if not isinstance(self.description, str):
            raise ToolError(f"tool {self.name}: description must be a string")
        params = _mapping(self.parameters, f"tool {self.name}: parameters")
        if params.get("type", "object") != "object":
            raise ToolError(f"tool {self.name}: parameters must describe an object, not {params.get('type')!r}")

    @classmethod
    def from_openai(cls, value: object) -> ToolSpec:
        """{"type": "function", "function": {"name", "description"?, "parameters"?}}."""
        tool = _mapping(value, "tool")
        if tool.get("type") != "function":
            raise ToolError(f"only function tools are supported, got type {tool.get('type')!r}")
        fn = _mapping(tool.get("function"), "tool.function")
        params = fn.get("parameters")
        return cls(str(fn.get("name", "")), fn.get("description") or "", params or {"type": "object"})

    def as_openai(self) -> dict[str, Any]:
        """The OpenAI tool object, as llama.cpp hands `tools` to a chat template."""
        fn = {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolCall:
    """A call the model made (or a client sends back): arguments are JSON text of an object, but for
    an incomplete call (cut by a token limit, sent back in a history) whose text is kept as it is."""

    id: str
    name: str
    arguments: str
    complete: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ToolError("a tool call needs a function name")
        if not isinstance(self.id, str):
            raise ToolError(f"tool call {self.name}: id must be a string")
        if self.complete or not isinstance(self.arguments, str):
            _arguments_object(self.arguments, self.name)

    def arguments_value(self) -> dict[str, Any]:
        return _arguments_object(self.arguments, self.name)

    def template_arguments(self) -> dict[str, Any] | str:
        """The arguments object; an incomplete call's text when it does not parse as one."""
        try:
            return self.arguments_value()
        except ToolError:
            if self.complete:
                raise
            return self.arguments

    @classmethod
    def from_openai(cls, value: object) -> ToolCall:
        """{"id", "type": "function", "function": {"name", "arguments": JSON text or object}}."""
        call = _mapping(value, "tool_call")
        fn = _mapping(call.get("function"), "tool_call.function")
        args = fn.get("arguments", "{}")
        text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        return cls(str(call.get("id") or ""), str(fn.get("name") or ""), text)

    def as_template_value(self) -> dict[str, Any]:
        """llama.cpp's shape for templates: arguments parsed to an object, id only when set."""
        value: dict[str, Any] = {
            "type": "function",
            "function": {"name": self.name, "arguments": self.template_arguments()},
        }
        if self.id:
            value["id"] = self.id
        return value


def _arguments_object(text: object, name: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise ToolError(f"tool call {name}: arguments must be JSON text")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolError(f"tool call {name}: arguments are not valid JSON ({exc.msg} at {exc.pos})") from exc
    if not isinstance(value, dict):
        raise ToolError(f"tool call {name}: arguments must be a JSON object")
    return value


@dataclass(frozen=True)
class ToolChoice:
    """auto: text or calls; none: text only; required: at least one call; function: a call to `function`."""

    mode: str = "auto"
    function: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in CHOICE_MODES:
            raise ToolError(f"tool_choice must be one of {CHOICE_MODES[:3]} or a named function, got {self.mode!r}")
        if (self.mode == "function") != (self.function is not None):
            raise ToolError("tool_choice names a function exactly when its mode is 'function'")

    @classmethod
    def from_openai(cls, value: object) -> ToolChoice:
        """ "auto" | "none" | "required" | {"type": "function", "function": {"name": ...}}."""
        if value is None:
            return cls()
        if isinstance(value, str):
            if value == "function":
                raise ToolError("tool_choice 'function' needs a function name")
            return cls(value)
        choice = _mapping(value, "tool_choice")
        if choice.get("type") != "function":
            raise ToolError(f"tool_choice type must be 'function', got {choice.get('type')!r}")
        return cls("function", str(_mapping(choice.get("function"), "tool_choice.function").get("name") or ""))


@dataclass(frozen=True)
class Tools:
    """The tools of one request and how the model may use them."""

    specs: tuple[ToolSpec, ...]
    choice: ToolChoice = field(default_factory=ToolChoice)
    parallel: bool = True  # parallel_tool_calls: more than one call per turn

    def __post_init__(self) -> None:
        object.__setattr__(self, "specs", tuple(self.specs))
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ToolError(f"tool names must be unique: {sorted(n for n in set(names) if names.count(n) > 1)}")
        if self.choice.mode in ("required", "function") and not self.specs:
            raise ToolError(f"tool_choice {self.choice.mode!r} needs at least one tool")
        if self.choice.function is not None and self.choice.function not in names:
            raise ToolError(f"tool_choice names {self.choice.function!r}, which is not among the tools {names}")

    @classmethod
    def from_openai(cls, tools: Sequence[object], choice: object = None, parallel: bool | None = None) -> Tools:
        return cls(tuple(ToolSpec.from_openai(t) for t in tools), ToolChoice.from_openai(choice), parallel is not False)

    @property
    def callable(self) -> tuple[ToolSpec, ...]:
        """The functions the model may call under the choice (none for 'none')."""
        if self.choice.mode == "none":
            return ()
        if self.choice.mode == "function":
            return tuple(s for s in self.specs if s.name == self.choice.function)
        return self.specs

    def spec(self, name: str) -> ToolSpec | None:
        return next((s for s in self.specs if s.name == name), None)
