"""Chat-template rendering: the GGUF's own Jinja template, rendered as llama.cpp's server renders it.

llama-server renders the template with its own Jinja engine (lstrip_blocks and trim_blocks on,
`raise_exception`, `strftime_now`, a JSON-style `tojson`), passes `messages`, `bos_token`,
`eos_token`, `enable_thinking` and `add_generation_prompt` (only when true), then strips a leading
BOS text when the vocabulary adds BOS itself. `ChatTemplate` does the same with jinja2's sandbox,
plus what llama.cpp and transformers accept beyond jinja2: the `{% generation %}` tag (its body is
rendered) and string/dict methods used as filters (`x | strip`). A template that cannot be
rendered is refused when the ChatTemplate is built, naming the construct and its line.

`ChatTemplate.split` cuts the rendered prompt into a stable prefix (every message but the last)
and a volatile suffix (the last message and the generation prompt), right before a special
token, where tokenization of the two parts equals tokenization of the whole.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InvalidInputError
from .prefix import common_prefix_len

if TYPE_CHECKING:
    from .tools.types import ToolCall

__all__ = [
    "CHATML_TEMPLATE",
    "ChatMessage",
    "ChatTemplate",
    "ChatTemplateError",
    "SplitPrompt",
    "discover_special_tokens",
]

# llama.cpp's fallback when a model carries no template (common/chat.cpp, CHATML_TEMPLATE_SRC).
CHATML_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}"
)

# llama.cpp's engine lets these methods be used as filters too (common/jinja/value.cpp); jinja2 does not
_METHOD_FILTERS: dict[str, Callable[..., Any]] = {
    "strip": lambda s, chars=None: s.strip(chars),
    "lstrip": lambda s, chars=None: s.lstrip(chars),
    "rstrip": lambda s, chars=None: s.rstrip(chars),
    "split": lambda s, sep=None, maxsplit=-1: s.split(sep, maxsplit),
    "rsplit": lambda s, sep=None, maxsplit=-1: s.rsplit(sep, maxsplit),
    "startswith": lambda s, prefix: s.startswith(prefix),
    "endswith": lambda s, suffix: s.endswith(suffix),
    "keys": lambda d: list(d.keys()),
    "values": lambda d: list(d.values()),
    "get": lambda d, key, default=None: d.get(key, default),
}
# Conversations rendered once at construction: a template none of them renders cannot serve.
_PROBES: tuple[tuple[tuple[str, str], ...], ...] = (
    (("user", "Hello."),),
    (("system", "Be brief."), ("user", "Hello.")),
    (("user", "Hello."), ("assistant", "Hi."), ("user", "Bye.")),
)
_SENTINEL = "\x00llamanode-seam\x00"
ToolObjects = Sequence[Mapping[str, Any]]  # OpenAI-style tool objects, as llama.cpp passes `tools`
_SPECIAL_CANDIDATE = re.compile(r"<[^<>\s'\"\\]{1,64}>")


class ChatTemplateError(InvalidInputError):
    """The messages do not fit the model's chat template (or the template raised)."""


@dataclass(frozen=True)
class ChatMessage:
    """One message as the template sees it: content already flattened to text.

    An assistant message may carry tool_calls; a `tool` message answers one by tool_call_id.
    Both reach the template as llama.cpp passes them (arguments parsed to an object).
    """

    role: str
    content: str
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def as_template_value(self) -> dict[str, Any]:
        value: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            value["name"] = self.name
        if self.tool_call_id is not None:
            value["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            value["tool_calls"] = [call.as_template_value() for call in self.tool_calls]
        return value


@dataclass(frozen=True)
class SplitPrompt:
    """prefix + suffix == the full rendered prompt; the seam sits right before a special token."""

    prefix: str
    suffix: str

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


class _RaisedByTemplate(Exception):
    """The cause of a ChatTemplateError raised by the template's own raise_exception()."""


def _raise_exception(message: object) -> None:
    raise ChatTemplateError(f"chat template raised: {message}") from _RaisedByTemplate(message)


def _template_line(exc: BaseException) -> str:
    """' (line N)' for the innermost frame of the template in exc's traceback, else ''."""
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {line})" if line is not None else ""


def _generation_tag() -> type[Any]:
    """transformers' `{% generation %}...{% endgeneration %}` (it marks assistant text for training
    masks): rendered as its body, as llama.cpp does."""
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.parser import Parser

    class GenerationTag(Extension):
        tags = {"generation"}  # noqa: RUF012 (jinja2 declares it a class-level set)

        def parse(self, parser: Parser) -> list[nodes.Node]:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    return GenerationTag


def _strftime_now(fmt: str) -> str:
    return time.strftime(fmt, time.localtime())


def _tojson(
    value: object,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Sequence[str] | None = None,
    sort_keys: bool = False,
) -> str:
    """llama.cpp's tojson: Python json.dumps spacing, no HTML escaping, non-ASCII kept."""
    seps = tuple(separators) if separators else None
    return json.dumps(
        value,
        ensure_ascii=ensure_ascii,
        indent=indent,
        separators=seps,  # type: ignore[arg-type]
        sort_keys=sort_keys,
    )


class ChatTemplate:
    """A compiled chat template plus the rules llama-server applies around it."""

    def __init__(
        self,
        source: str | None,
        *,
        bos_token: str = "",
        eos_token: str = "",
        add_bos: bool = False,
        add_eos: bool = False,
        special_tokens: Collection[str] = (),
    ) -> None:
        from jinja2 import TemplateError, TemplateSyntaxError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.fallback = not source
        self.source = source or CHATML_TEMPLATE
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.special_tokens = tuple(sorted(set(special_tokens), key=len, reverse=True))
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
            extensions=[loopcontrols, _generation_tag()],
        )
        env.filters.update(_METHOD_FILTERS, tojson=_tojson)
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, tojson=_tojson)
        try:
            self._template = env.from_string(self.source)
        except TemplateSyntaxError as exc:
            message = f"the model's chat template does not compile: {exc.message} (line {exc.lineno})"
            raise ChatTemplateError(message) from exc
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc
        self._check_renders()

    def _check_renders(self) -> None:
        """Refuse a template that renders none of the probe conversations for want of a construct.

        A template that refuses them itself (raise_exception: e.g. no system role) is the model's
        rule, not a construct llamanode lacks, so it passes.
        """
        failures: list[ChatTemplateError] = []
        for probe in _PROBES:
            try:
                self.render([ChatMessage(role, content) for role, content in probe])
                return
            except ChatTemplateError as exc:
                failures.append(exc)
        causes = [f.__cause__ or f for f in failures if not isinstance(f.__cause__, _RaisedByTemplate)]
        if causes:
            where = _template_line(causes[0])
            raise ChatTemplateError(f"llamanode cannot render the model's chat template{where}: {causes[0]}")

    @property
    def renders_tools(self) -> bool:
        """The template's code refers to `tools` (llama.cpp then hands it the request's tools)."""
        from .tools.formats import template_renders_tools

        return template_renders_tools(self.source)

    def render(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True, tools: ToolObjects = ()
    ) -> str:
        """The prompt text llama-server would tokenize (BOS text stripped when the vocab adds BOS).

        tools: OpenAI-style tool objects, passed to the template as `tools` when there are any.
        """
        values, generation, tail = self._prepare(messages, add_generation_prompt)
        return self._render(values, generation, tools) + (tail or "")

    def split(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True, tools: ToolObjects = ()
    ) -> SplitPrompt:
        """Render, then cut right before the special token that opens the last message.

        The last message's content is swapped for a sentinel and rendered again: the two
        renderings agree up to where that content starts, and the seam is the last special
        token that begins before it (0 when there is none: everything is suffix).
        """
        if not messages:
            raise ChatTemplateError("messages must not be empty")
        values, generation, tail = self._prepare(messages, add_generation_prompt)
        full = self._render(values, generation, tools) + (tail or "")
        if tail is not None:
            probe = self._render(values, generation, tools) + _SENTINEL
        elif not values:
            probe = ""
        else:
            probe = self._render([*values[:-1], {**values[-1], "content": _SENTINEL}], generation, tools)
        limit = common_prefix_len(full, probe)
        seam = max((full.rfind(tok, 0, limit) for tok in self.special_tokens), default=-1)
        seam = max(seam, 0)
        return SplitPrompt(full[:seam], full[seam:])

    def _prepare(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool
    ) -> tuple[list[dict[str, Any]], bool, str | None]:
        """llama-server's rewrites: (messages to render, add_generation_prompt, continued text or None).

        - `developer` becomes `system` (except for GPT-OSS templates, which know `developer`);
        - a final assistant message is continued, not closed: the others are rendered with the
          generation prompt and its content is appended (llama-server's default prefill_assistant).
        """
        values = [m.as_template_value() for m in messages]
        if "<|channel|>" not in self.source:
            for value in values:
                if value["role"] == "developer":
                    value["role"] = "system"
        if add_generation_prompt and values and values[-1]["role"] == "assistant":
            if "tool_calls" in values[-1]:
                raise ChatTemplateError("the last assistant message has tool calls: send their results first")
            if len(values) >= 2 and values[-2]["role"] == "assistant":
                raise ChatTemplateError("cannot have 2 or more assistant messages at the end of the list")
            if not values[-1]["content"]:  # llama-server drops an empty one, and adds no generation prompt
                return values[:-1], False, None
            return values[:-1], True, str(values[-1]["content"])
        return values, add_generation_prompt, None

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool, tools: ToolObjects = ()) -> str:
        from jinja2 import TemplateError

        context: dict[str, Any] = {
            "messages": messages,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "enable_thinking": True,
        }
        if tools:
            context["tools"] = [dict(t) for t in tools]
        if add_generation_prompt:
            context["add_generation_prompt"] = True
        try:
            text = self._template.render(context)
        except ChatTemplateError:
            raise
        except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            where = _template_line(exc)
            raise ChatTemplateError(f"chat template failed to render these messages{where}: {exc}") from exc
        if self.add_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        if self.add_eos and self.eos_token and text.endswith(self.eos_token):
            text = text[: -len(self.eos_token)]
        return text


def discover_special_tokens(
    source: str, tokenize: Callable[[str], list[int]], extra: Sequence[str] = ()
) -> frozenset[str]:
    """The `<...>` literals of a template that the tokenizer treats as special tokens.

    A literal counts when it is one token and cuts tokenization on both sides: the text
    around it tokenizes the same whether or not it is tokenized together with it.
    """
    found: set[str] = set()
    for candidate in {*_SPECIAL_CANDIDATE.findall(source), *(t for t in extra if t)}:
        if _is_special(candidate, tokenize):
            found.add(candidate)
    return frozenset(found)


def _is_special(text: str, tokenize: Callable[[str], list[int]]) -> bool:
    ids = tokenize(text)
    if len(ids) != 1:
        return False
    for left, right in (("a", "b"), ("\n", "\n"), (" x", "y "), ("<", ">")):
        if tokenize(left + text + right) != tokenize(left) + ids + tokenize(right):
            return False
    return True


def messages_from_mappings(values: Sequence[Mapping[str, Any]]) -> list[ChatMessage]:
    """OpenAI chat-completions messages (plain dicts) to ChatMessage: the one reading of that shape.

    {"role", "content"} plus, optionally, "name", "tool_calls" (assistant) and "tool_call_id" (tool).
    content is text, null (an assistant message that only calls tools: "") or a list of text parts,
    joined with newlines as llama.cpp joins them; any other part is refused with InvalidInputError.
    """
    from .tools.types import ToolCall

    return [
        ChatMessage(
            str(v["role"]),
            _content_text(v.get("content"), index),
            v.get("name"),
            tuple(ToolCall.from_openai(c) for c in v.get("tool_calls") or ()),
            v.get("tool_call_id"),
        )
        for index, v in enumerate(values)
    ]


def _content_text(content: object, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, Sequence):
        raise InvalidInputError(f"messages[{index}].content must be text, null or a list of text parts")
    texts: list[str] = []
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            raise InvalidInputError(f"messages[{index}].content: only text parts are supported, got {kind!r}")
        texts.append(part["text"])
    return "\n".join(texts)
