"""Chat-template rendering: the GGUF's own Jinja template, rendered as llama.cpp's server renders it.

llama-server renders the template with its own Jinja engine (lstrip_blocks and trim_blocks on,
`raise_exception`, `strftime_now`, a JSON-style `tojson`), passes `messages`, `bos_token`,
`eos_token`, `enable_thinking` and `add_generation_prompt` (only when true), then strips a leading
BOS text when the vocabulary adds BOS itself. `ChatTemplate` does the same with jinja2's sandbox.

`ChatTemplate.split` cuts the rendered prompt into a stable prefix (every message but the last)
and a volatile suffix (the last message and the generation prompt), right before a special
token, where tokenization of the two parts equals tokenization of the whole.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInputError

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

_SENTINEL = "\x00llamanode-seam\x00"
_SPECIAL_CANDIDATE = re.compile(r"<[^<>\s'\"\\]{1,64}>")


class ChatTemplateError(InvalidInputError):
    """The messages do not fit the model's chat template (or the template raised)."""


@dataclass(frozen=True)
class ChatMessage:
    """One message as the template sees it: content already flattened to text."""

    role: str
    content: str
    name: str | None = None

    def as_template_value(self) -> dict[str, Any]:
        value: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            value["name"] = self.name
        return value


@dataclass(frozen=True)
class SplitPrompt:
    """prefix + suffix == the full rendered prompt; the seam sits right before a special token."""

    prefix: str
    suffix: str

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


def _raise_exception(message: object) -> None:
    raise ChatTemplateError(f"chat template raised: {message}")


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
        from jinja2 import TemplateError
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
            trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False, extensions=[loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, tojson=_tojson)
        try:
            self._template = env.from_string(self.source)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc

    def render(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> str:
        """The prompt text llama-server would tokenize (BOS text stripped when the vocab adds BOS)."""
        values, generation, tail = self._prepare(messages, add_generation_prompt)
        return self._render(values, generation) + (tail or "")

    def split(self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool = True) -> SplitPrompt:
        """Render, then cut right before the special token that opens the last message.

        The last message's content is swapped for a sentinel and rendered again: the two
        renderings agree up to where that content starts, and the seam is the last special
        token that begins before it (0 when there is none: everything is suffix).
        """
        if not messages:
            raise ChatTemplateError("messages must not be empty")
        values, generation, tail = self._prepare(messages, add_generation_prompt)
        full = self._render(values, generation) + (tail or "")
        if tail is not None:
            probe = self._render(values, generation) + _SENTINEL
        elif not values:
            probe = ""
        else:
            probe = self._render([*values[:-1], {**values[-1], "content": _SENTINEL}], generation)
        limit = _common_prefix_len(full, probe)
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
            if len(values) >= 2 and values[-2]["role"] == "assistant":
                raise ChatTemplateError("cannot have 2 or more assistant messages at the end of the list")
            if not values[-1]["content"]:  # llama-server drops an empty one, and adds no generation prompt
                return values[:-1], False, None
            return values[:-1], True, str(values[-1]["content"])
        return values, add_generation_prompt, None

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        from jinja2 import TemplateError

        context: dict[str, Any] = {
            "messages": messages,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "enable_thinking": True,
        }
        if add_generation_prompt:
            context["add_generation_prompt"] = True
        try:
            text = self._template.render(context)
        except ChatTemplateError:
            raise
        except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise ChatTemplateError(f"chat template failed to render these messages: {exc}") from exc
        if self.add_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]
        if self.add_eos and self.eos_token and text.endswith(self.eos_token):
            text = text[: -len(self.eos_token)]
        return text


def _common_prefix_len(a: str, b: str) -> int:
    n = min(len(a), len(b))
    lo, hi = 0, n  # binary search over slice equality: memcmp speed, not a Python loop
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


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
