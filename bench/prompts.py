"""The texts the benchmarks send: ChatML prefixes holding llamanode's own source, fresh suffixes, exact sizes."""

from __future__ import annotations

from collections.abc import Callable

from .common import REPO

__all__ = [
    "SYSTEM_INTRO",
    "Tokenize",
    "chatml_prefix",
    "chatml_suffix",
    "file_segments",
    "fit_text",
    "source_files",
    "source_text",
]

SRC = REPO / "src" / "llamanode"

Tokenize = Callable[[str], list[int]]
"""text -> token ids, special tokens parsed (ChatML markers become control tokens), no BOS added."""

SYSTEM_INTRO = (
    "You are a careful coding assistant working in the llamanode repository: a Python runtime that keeps "
    "a coding agent's prompt-prefix KV cache hot in a local LLM. Answer with short, correct code edits. "
    "The repository's source follows, one file after another.\n\n"
)
OPENERS = (
    "Explain",
    "Refactor",
    "Why does",
    "Summarize",
    "Find the bug in",
    "Rename the variables of",
    "Describe",
    "List the callers of",
    "Check",
    "Document",
    "Which tests cover",
    "Simplify",
    "Review",
    "Optimize",
    "Translate to plain English",
    "Add type hints to",
)
ASSISTANT_TAIL = "<|im_end|>\n<|im_start|>assistant\n"


def source_files() -> list[tuple[str, str]]:
    """(relative path, text) of every llamanode source file, in a stable order."""
    files = sorted(SRC.rglob("*.py"))
    return [(str(p.relative_to(REPO)), p.read_text(encoding="utf-8")) for p in files]


def source_text() -> str:
    """llamanode's own source tree, concatenated with a file marker before each file."""
    return "".join(f"# file: {name}\n{text}\n" for name, text in source_files())


def file_segments(text: str, marker: str = "# file: ") -> list[tuple[str, str]]:
    """Split a prompt into manifest segments at file markers: (name, text) pairs that tile it exactly.

    The part before the first marker is "head"; a repeated file name gets a "#2" suffix.
    """
    segments: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    start = 0
    name = "head"
    at = text.find(marker)
    while at != -1:
        segments.append((name, text[start:at]))
        line_end = text.find("\n", at)
        file_name = text[at + len(marker) : line_end if line_end != -1 else len(text)]
        seen[file_name] = seen.get(file_name, 0) + 1
        name = file_name if seen[file_name] == 1 else f"{file_name}#{seen[file_name]}"
        start = at
        at = text.find(marker, at + 1)
    segments.append((name, text[start:]))
    return [(n, t) for n, t in segments if t]


def fit_text(tokenize: Tokenize, make: Callable[[str], str], body: str, n_tokens: int) -> str:
    """make(body[:cut]) with exactly n_tokens tokens; body is repeated when it is too short.

    If no cut near the boundary gives exactly n_tokens (a long token such as an indentation run
    can jump the count by more than one), the body's start is shifted by a few characters and
    the search repeated.
    """
    if len(tokenize(make(""))) > n_tokens:
        raise ValueError(f"the frame alone is longer than {n_tokens} tokens")
    while len(tokenize(make(body))) < n_tokens:
        body = body + "\n" + body
    for shift in range(0, 400, 13):
        text = _exact_cut(tokenize, make, body[shift:], n_tokens)
        if text is not None:
            return text
    raise ValueError(f"no cut of the body gives exactly {n_tokens} tokens")


def _exact_cut(tokenize: Tokenize, make: Callable[[str], str], body: str, n_tokens: int) -> str | None:
    lo, hi = 0, len(body)
    while lo < hi:  # smallest cut whose text has >= n_tokens tokens
        mid = (lo + hi) // 2
        if len(tokenize(make(body[:mid]))) >= n_tokens:
            hi = mid
        else:
            lo = mid + 1
    for cut in sorted(range(max(0, lo - 64), min(len(body), lo + 64) + 1), key=lambda c: abs(c - lo)):
        text = make(body[:cut])
        if len(tokenize(text)) == n_tokens:
            return text
    return None


def chatml_prefix(tokenize: Tokenize, n_tokens: int, body: str | None = None, intro: str = SYSTEM_INTRO) -> str:
    """A ChatML system turn holding the source tree, then an opened user turn: exactly n_tokens tokens.

    A different intro gives a prefix that shares only `<|im_start|>system\\n` with the default one.
    """
    text = source_text() if body is None else body

    def make(b: str) -> str:
        return f"<|im_start|>system\n{intro}{b}<|im_end|>\n<|im_start|>user\n"

    return fit_text(tokenize, make, text, n_tokens)


def chatml_suffix(tokenize: Tokenize, n_tokens: int, variant: int) -> str:
    """The rest of a user turn ending in `<|im_start|>assistant\\n`: exactly n_tokens tokens.

    Consecutive variants start with different words and quote different code, so a
    prefix-matching cache cannot reuse any of the previous suffix.
    """
    opener = OPENERS[variant % len(OPENERS)]
    src = source_text()
    start = (variant * 1733) % max(1, len(src) - 4096)
    snippet = src[start : start + 8192]

    frames = (f"{opener} this code:\n```python\n{{}}", f"{opener}: {{}}", f"{opener.split()[0]} {{}}")
    for frame in frames:  # short suffixes get a shorter frame

        def make(b: str, frame: str = frame) -> str:
            return frame.format(b) + ASSISTANT_TAIL

        if len(tokenize(make(""))) < n_tokens:
            return fit_text(tokenize, make, snippet, n_tokens)
    raise ValueError(f"a suffix needs more than {n_tokens} tokens")
