"""ToolPlan: how one request uses tools on one chat template — its prompt, its grammar, its parser."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from ..chat import ChatMessage, ChatTemplate, SplitPrompt
from ..chat_segments import Cut, prompt_segments, template_key
from .constrain import ToolGrammar, tool_grammar
from .formats import ToolFormat, detect_format
from .parser import ToolCallParser
from .render import fallback_messages, template_rules
from .types import Tools, new_call_id

__all__ = ["ToolPlan"]


class ToolPlan:
    """The backend-neutral core an HTTP layer needs for tool calls.

    - render()/split(): the prompt (tools through the template when it renders them, else the
      generic fallback's rewritten conversation);
    - decode_options(): the DecodeConfig fields that make every call parse and validate;
    - parser(): turns the decoded text into content and call events.
    """

    def __init__(self, template: ChatTemplate, tools: Tools, fmt: ToolFormat | None = None) -> None:
        self.template = template
        self.tools = tools
        self.format = fmt or detect_format(template.source)
        self.grammar: ToolGrammar | None = tool_grammar(self.format, tools)

    def messages(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        """The messages the template renders."""
        if self.format.native:
            return list(messages)
        return fallback_messages(self.format, self.tools.specs, messages, template_rules(self.template))

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        return self.template.render(
            self.messages(messages), add_generation_prompt=add_generation_prompt, tools=self._tool_objects()
        )

    def split(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> SplitPrompt:
        return self.template.split(
            self.messages(messages), add_generation_prompt=add_generation_prompt, tools=self._tool_objects()
        )

    def segments(
        self, messages: Sequence[ChatMessage], split: SplitPrompt, cuts: Sequence[Cut]
    ) -> tuple[tuple[str, str], ...]:
        """split.prefix as named manifest segments: one per cut, and the tools' own (chat_segments.py)."""
        plain = ToolPlan(self.template, Tools(()), self.format) if self.tools.specs else None
        return prompt_segments(
            split,
            messages,
            cuts,
            lambda ms, gen: self.render(ms, add_generation_prompt=gen),
            without_tools=(lambda ms, gen: plain.render(ms, add_generation_prompt=gen)) if plain else None,
            special_tokens=self.template.special_tokens,
            cache_key=self._cache_key(),
        )

    def _cache_key(self) -> str:
        """What decides this plan's rendering besides the messages."""
        tools = [s.as_openai() for s in self.tools.specs]
        return hashlib.sha256(json.dumps([template_key(self.template), self.format.name, tools]).encode()).hexdigest()

    def decode_options(self) -> dict[str, Any]:
        """grammar (+ grammar_triggers when lazy); empty when the model may not call (tool_choice 'none')."""
        return self.grammar.decode_options() if self.grammar else {}

    def parser(self, new_id: Callable[[], str] = new_call_id) -> ToolCallParser | None:
        """None when no call can be made: every decoded byte is content."""
        callable_specs = self.tools.callable
        return ToolCallParser(self.format, callable_specs, new_id) if callable_specs else None

    def _tool_objects(self) -> list[dict[str, Any]]:
        return [s.as_openai() for s in self.tools.specs] if self.format.native else []
