"""Approximate segment reuse on the toy backend: opt-in, reported, marked inexact, and undone by an exact request.

The toy KV of a position is a hash of everything computed before it, and a moved cell keeps its hash, so
"approximate" is visible: a moved cell differs from a cold pass, and an exact re-prefill makes it equal again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fakes import FakeBackend, FakeContext, fake_session
from llamanode import (
    ApproximationUnavailableError,
    ApproxReuse,
    Config,
    ConfigError,
    DecodeConfig,
    InvalidInputError,
    KVSession,
    SessionPool,
    registry,
)

SYSTEM = "You are a careful reviewer. " * 2
MAP = "map: a.py b.py c.py\n" * 2
A = "def a():\n    return 1\n" * 3
B = "class B:\n    x = 2\n" * 4
C = "def c(n):\n    return n * 3\n" * 3
BEFORE = (("system", SYSTEM), ("map", MAP), ("a.py", A), ("b.py", B), ("c.py", C))
EDITED = (("system", SYSTEM), ("map", MAP), ("a.py", A.replace("return 1", "return 11", 1)), ("b.py", B), ("c.py", C))
SUFFIX = "Q: what changed?\n"
LOOSE = ApproxReuse(min_run=4)  # the toy segments are short
ANSWER = DecodeConfig(max_tokens=12)


def session(**config: object) -> tuple[KVSession, FakeContext]:
    base = {"num_ctx": 1024, "num_batch": 16, "num_ubatch": 16, **config}
    cfg = Config.from_mapping(base)
    ctx = FakeContext(n_ctx=1024, n_batch=16, n_ubatch=16)
    return KVSession(ctx, cfg), ctx


def cold_hashes(segments: tuple[tuple[str, str], ...]) -> list[int | None]:
    s, ctx = session()
    s.ensure_prefix(s.prefix(segments))
    return list(ctx.hashes)


def answer(s: KVSession) -> str:
    s.prefill_suffix(s.suffix(SUFFIX))
    return "".join(c.text for c in s.decode(ANSWER))


def cold_answer(segments: tuple[tuple[str, str], ...]) -> str:
    s, _ = session()
    s.ensure_prefix(s.prefix(segments))
    return answer(s)


# -- opt-in ---------------------------------------------------------------------------------------------
def test_the_default_never_approximates() -> None:
    s, ctx = session()
    s.ensure_prefix(s.prefix(BEFORE))
    status = s.ensure_prefix(s.prefix(EDITED))
    assert status.approximation is None and status.approximate_from is None
    assert s.explain_context().approximate_from is None
    assert ctx.hashes == cold_hashes(EDITED)


def test_asked_for_per_request_it_approximates_and_reports_what() -> None:
    s, ctx = session()
    s.ensure_prefix(s.prefix(BEFORE))
    status = s.ensure_prefix(s.prefix(EDITED), approximate=LOOSE)
    approx = status.approximation
    assert approx is not None and approx.selection == "boundary" and approx.note == ""
    assert approx.segments == ("a.py", "b.py", "c.py")  # the edited file's tail, and everything after it
    assert approx.reused_tokens == approx.shifted_tokens > 0  # the edit adds a byte: every kept cell moved by 1
    assert all(span.shift == 1 for span in approx.spans)
    first_change = s.tokenize(SYSTEM + MAP + A).index(s.tokenize("1")[0], len(s.tokenize(SYSTEM + MAP)) + 10) + 1
    assert status.approximate_from == approx.approximate_from == first_change
    n = status.prefix_tokens
    assert status.reused_tokens + status.prefilled_tokens == n
    assert status.reused_tokens == first_change + approx.reused_tokens
    assert approx.reused_tokens + approx.recomputed_tokens + approx.prefilled_tokens == n - first_change
    states = [(row.name, row.state) for row in s.explain_context().segments]
    assert states == [("system", "reused"), ("map", "reused")] + [(n, "approximated") for n in ("a.py", "b.py", "c.py")]
    assert ctx.positions() == list(range(n))
    assert [cell[0] for cell in ctx.kv if cell] == s.tokenize("".join(text for _, text in EDITED))
    assert ctx.hashes[:first_change] == cold_hashes(EDITED)[:first_change]
    assert ctx.hashes != cold_hashes(EDITED)


def test_a_config_default_approximates_and_false_is_exact() -> None:
    s, ctx = session(approximate_reuse="tail", approximate_share=0.5)
    s.ensure_prefix(s.prefix(BEFORE))
    exact = s.ensure_prefix(s.prefix(EDITED), approximate=False)
    assert exact.approximation is None and ctx.hashes == cold_hashes(EDITED)
    s.ensure_prefix(s.prefix(BEFORE), approximate=False)
    status = s.ensure_prefix(s.prefix(EDITED))  # the config's default: min_run 32 keeps only b.py + c.py
    assert status.approximation is not None and status.approximation.selection == "tail"
    assert status.approximation.share == 0.5


def test_true_takes_the_config_default_or_boundary() -> None:
    s, _ = session()
    s.ensure_prefix(s.prefix(BEFORE))
    status = s.ensure_prefix(s.prefix(EDITED), approximate=True)
    assert status.approximation is not None and status.approximation.selection == "boundary"
    with pytest.raises(InvalidInputError, match="approximate must be"):
        s.ensure_prefix(s.prefix(EDITED), approximate="yes")  # type: ignore[arg-type]


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="approximate_reuse"):
        Config(approximate_reuse="cacheblend")
    with pytest.raises(ConfigError, match="approximate_share"):
        Config(approximate_share=1.5)
    with pytest.raises(ConfigError, match="unknown Config option"):
        Config.from_mapping({"approximate": "boundary"})
    with pytest.raises(ConfigError, match="unknown ApproxReuse option"):
        ApproxReuse.from_mapping({"ratio": 0.1})
    with pytest.raises(ConfigError, match="selection"):
        ApproxReuse(selection="random")
    with pytest.raises(ConfigError, match="min_run"):
        ApproxReuse(min_run=1)
    assert Config().approximation() is None
    assert Config(approximate_reuse="tail").approximation() == ApproxReuse(selection="tail")


# -- refusals -------------------------------------------------------------------------------------------
def test_a_context_that_cannot_shift_refuses_and_changes_nothing() -> None:
    ctx = FakeContext(n_ctx=1024, n_batch=16, n_ubatch=16, can_shift=False)
    s = KVSession(ctx, Config(num_ctx=1024, num_batch=16, num_ubatch=16))
    s.ensure_prefix(s.prefix(BEFORE))
    before = list(ctx.hashes)
    with pytest.raises(ApproximationUnavailableError, match="cannot shift") as info:
        s.ensure_prefix(s.prefix(EDITED), approximate=True)
    assert info.value.reason == "the toy context cannot shift"
    assert ctx.hashes == before and s.explain_context().prefix_tokens == len(before)
    assert s.ensure_prefix(s.prefix(EDITED)).approximation is None  # exact still works


def test_a_config_asking_for_it_is_refused_at_open_on_such_a_context() -> None:
    ctx = FakeContext(n_ctx=1024, can_shift=False)
    closed: list[bool] = []
    with pytest.raises(ApproximationUnavailableError):
        KVSession(ctx, Config(num_ctx=1024, approximate_reuse="boundary"), on_close=lambda: closed.append(True))
    assert ctx.closed and closed == [True]


# -- inexact marking ------------------------------------------------------------------------------------
def test_an_exact_request_after_an_approximate_one_re_prefills_from_the_mark() -> None:
    s, ctx = session()
    s.ensure_prefix(s.prefix(BEFORE))
    approx = s.ensure_prefix(s.prefix(EDITED), approximate=LOOSE)
    mark = approx.approximate_from
    assert mark is not None
    answer(s)
    exact = s.ensure_prefix(s.prefix(EDITED))
    assert (exact.reused_tokens, exact.prefilled_tokens) == (mark, exact.prefix_tokens - mark)
    assert exact.divergence is not None and exact.divergence.cause == "approximated"
    assert exact.divergence.token_index == mark and exact.divergence.segment == "a.py"
    assert exact.approximate_from is None and s.explain_context().approximate_from is None
    assert ctx.hashes == cold_hashes(EDITED)
    assert answer(s) == cold_answer(EDITED)
    assert s.ensure_prefix(s.prefix(EDITED)).byte_hash_hit  # exact again: the byte-hash path is open again


def test_an_unchanged_prefix_stays_approximate_for_an_approximate_request_only() -> None:
    s, _ = session()
    s.ensure_prefix(s.prefix(BEFORE))
    mark = s.ensure_prefix(s.prefix(EDITED), approximate=LOOSE).approximate_from
    again = s.ensure_prefix(s.prefix(EDITED), approximate=LOOSE)
    assert again.byte_hash_hit and again.approximate_from == mark
    exact = s.ensure_prefix(s.prefix(EDITED))
    assert not exact.byte_hash_hit and exact.prefilled_tokens == exact.prefix_tokens - (mark or 0)


def test_the_mark_survives_export_and_import_and_an_exact_request_clears_it() -> None:
    s, _ = session()
    s.ensure_prefix(s.prefix(BEFORE))
    mark = s.ensure_prefix(s.prefix(EDITED), approximate=LOOSE).approximate_from
    answer(s)
    state = s.export_state()
    assert state.approximate_from == mark
    fork, ctx = session()
    fork.import_state(state)
    assert fork.explain_context().approximate_from == mark
    exact = fork.ensure_prefix(fork.prefix(EDITED))
    assert exact.reused_tokens == mark and ctx.hashes == cold_hashes(EDITED)
    assert answer(fork) == cold_answer(EDITED)


def test_approximate_reuse_of_approximate_kv_keeps_the_earliest_mark() -> None:
    s, _ = session()
    s.ensure_prefix(s.prefix(BEFORE))
    first = s.ensure_prefix(s.prefix(EDITED), approximate=LOOSE).approximate_from
    later = tuple((n, t.replace("x = 2", "x = 22", 1) if n == "b.py" else t) for n, t in EDITED)
    second = s.ensure_prefix(s.prefix(later), approximate=LOOSE)
    assert second.approximate_from == first  # b.py's edit comes after a.py's approximated tokens
    assert second.approximation is not None and second.approximation.segments == ("b.py", "c.py")


def test_nothing_to_keep_is_said_and_done_exactly() -> None:
    s, ctx = session()
    s.ensure_prefix(s.prefix(BEFORE))
    appended = (*BEFORE, ("d.py", "def d():\n    pass\n"))
    status = s.ensure_prefix(s.prefix(appended), approximate=LOOSE)  # an append: nothing after a change
    assert status.approximation is not None and status.approximation.spans == ()
    assert "no run" in status.approximation.note
    assert status.approximate_from is None and ctx.hashes == cold_hashes(appended)


# -- properties -----------------------------------------------------------------------------------------
NAMES = ("s", "m", "a", "b", "c", "d")
TEXTS = st.text(alphabet="abcxyz \n=()", min_size=1, max_size=40)


@st.composite
def turns(draw: st.DrawFn) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """A prefix and its next version: segments edited, inserted, removed or swapped."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
    old = [(n, draw(TEXTS)) for n in names]
    new = list(old)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(("edit", "insert", "remove", "swap")))
        at = draw(st.integers(0, max(0, len(new) - 1)))
        if op == "edit" and new:
            name, text = new[at]
            cut = draw(st.integers(0, len(text)))
            new[at] = (name, text[:cut] + draw(st.text(alphabet="qr", max_size=3)) + text[cut + 1 :] or "q")
        elif op == "insert":
            free = [n for n in NAMES if n not in {m for m, _ in new}]
            if free:
                new.insert(at, (draw(st.sampled_from(free)), draw(TEXTS)))
        elif op == "remove" and len(new) > 1:
            del new[at]
        elif op == "swap" and len(new) > 1:
            new[at], new[-1] = new[-1], new[at]
    return tuple(old), tuple(new)


@given(
    turns(),
    st.sampled_from(("boundary", "tail")),
    st.sampled_from((0.0, 0.1, 0.5, 1.0)),
    st.integers(2, 6),
    st.integers(3, 9),
)
def test_any_edit_leaves_every_token_at_its_position_and_exact_undoes_it(
    turn: tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]],
    selection: str,
    share: float,
    min_run: int,
    batch: int,
) -> None:
    old, new = turn
    assume(old != new)  # an unchanged prefix is kept as it is (the byte-hash path)
    s, ctx = fake_session(num_ctx=512, num_batch=batch)
    s.ensure_prefix(s.prefix(old))
    s.prefill_suffix(s.suffix(SUFFIX))
    status = s.ensure_prefix(s.prefix(new), approximate=ApproxReuse(selection=selection, share=share, min_run=min_run))
    tokens = s.tokenize("".join(t for _, t in new))
    n = len(tokens)
    assert ctx.positions() == list(range(n)) and [cell[0] for cell in ctx.kv if cell] == tokens
    assert ctx.small_batches_after_start() == []  # never a batch of one
    assert status.reused_tokens + status.prefilled_tokens == n == status.prefix_tokens
    approx = status.approximation
    assert approx is not None
    mark = status.approximate_from
    reference = cold_chain(tokens, batch)
    exact_upto = n if mark is None else mark
    assert ctx.hashes[:exact_upto] == reference[:exact_upto]  # before the mark, the KV is exact
    if mark is not None:
        assert approx.reused_tokens > 0 and mark <= n - approx.reused_tokens
    kept = sum(span.reused_tokens for span in approx.spans)
    assert kept == approx.reused_tokens and approx.shifted_tokens <= kept
    assert all(
        span.recomputed_tokens + span.reused_tokens <= span.token_end - span.token_start for span in approx.spans
    )
    exact_prefix = status.reused_tokens - approx.reused_tokens
    assert exact_prefix + approx.reused_tokens + approx.recomputed_tokens + approx.prefilled_tokens == n
    # decoding works from an approximate prefix, and an exact request afterwards is a cold pass
    s.prefill_suffix(s.suffix(SUFFIX))
    list(s.decode(DecodeConfig(max_tokens=3)))
    exact = s.ensure_prefix(s.prefix(new))
    assert exact.approximate_from is None and ctx.hashes == reference


def cold_chain(tokens: list[int], batch: int) -> list[int | None]:
    s, ctx = fake_session(num_ctx=512, num_batch=batch)
    s.ensure_prefix(s.prefix((("x", "".join(chr(t - 3) for t in tokens)),)))
    return list(ctx.hashes)


def test_a_pool_fork_and_a_restore_from_disk_carry_the_mark(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(registry, "_loader", lambda path, config: FakeBackend(path))
    config = Config(num_ctx=1024, num_batch=16, num_ubatch=16)
    with SessionPool("/fake/model.gguf", config, store_dir=tmp_path) as pool:
        with pool.session("a") as s:
            s.ensure_prefix(s.prefix(BEFORE))
            mark = s.ensure_prefix(s.prefix(EDITED), approximate=LOOSE).approximate_from
        assert mark is not None
        pool.fork("a", "fork")
    with SessionPool("/fake/model.gguf", config, store_dir=tmp_path) as pool:  # both come back from disk
        for name in ("a", "fork"):
            with pool.session(name) as s:
                assert s.explain_context().approximate_from == mark
                assert s.ensure_prefix(s.prefix(EDITED)).reused_tokens == mark
                assert answer(s) == cold_answer(EDITED)
