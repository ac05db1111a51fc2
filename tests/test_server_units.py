"""Server parts without a model: the error table, admission, metrics text, size parsing."""

from __future__ import annotations

import asyncio
import time

import pytest

from llamanode.chat import ChatTemplateError
from llamanode.commands.serve import parse_size
from llamanode.errors import (
    ConfigError,
    ContextOverflowError,
    GrammarError,
    InvalidInputError,
    LlamaNodeError,
    ManifestMismatchError,
    SessionBusyError,
    SessionClosedError,
    SessionFatalError,
    SessionUnavailableError,
    SnapshotCorruptError,
    SnapshotMismatchError,
    UnsupportedFeatureError,
)
from llamanode.server.admission import Admission
from llamanode.server.call import CLIENT_GONE, Cancellation, Cancelled
from llamanode.server.errors import ApiError, from_exception, openai_error


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ContextOverflowError("suffix", 2000, 100, 2048), 400, "context_length_exceeded"),
        (ChatTemplateError("bad roles"), 400, "invalid_messages"),
        (GrammarError("bad"), 400, "invalid_grammar"),
        (ConfigError("bad"), 400, "invalid_value"),
        (InvalidInputError("bad"), 400, "invalid_input"),
        (UnsupportedFeatureError("tools"), 400, "unsupported_feature"),
        (ManifestMismatchError("other model", "model_digest"), 409, "manifest_mismatch"),
        (SnapshotMismatchError("build_id", "a", "b"), 409, "snapshot_mismatch"),
        (SessionBusyError("busy"), 409, "workspace_busy"),
        (SessionClosedError("closed"), 410, "session_closed"),
        (SessionUnavailableError("no backend"), 503, "unavailable"),
        (SessionFatalError("boom"), 500, "session_fatal"),
        (SnapshotCorruptError("crc"), 500, "snapshot_corrupt"),
        (LlamaNodeError("other"), 500, "internal_error"),
        (RuntimeError("a bug"), 500, "internal_error"),
    ],
)
def test_error_table(exc: BaseException, status: int, code: str) -> None:
    error = from_exception(exc)
    assert (error.status, error.code) == (status, code)
    body = openai_error(error)["error"]
    assert set(body) >= {"message", "type", "param", "code"}
    if isinstance(exc, RuntimeError):
        assert "a bug" not in body["message"]  # internals stay in the log, not the response


def test_classification_never_reads_the_message() -> None:
    a = from_exception(InvalidInputError("context overflow at suffix"))
    b = from_exception(SessionFatalError("invalid input"))
    assert (a.status, b.status) == (400, 500)


def test_overflow_error_carries_token_counts() -> None:
    body = openai_error(from_exception(ContextOverflowError("suffix", 2000, 100, 2048)))["error"]
    assert body["requested_tokens"] == 2100 and body["num_ctx"] == 2048 and body["stage"] == "suffix"
    assert body["type"] == "invalid_request_error"


def test_unavailable_asks_to_retry_later() -> None:
    assert from_exception(SessionUnavailableError("x")).headers["Retry-After"].isdigit()


def test_admission_serializes_a_workspace_and_refuses_when_the_queue_is_full() -> None:
    async def scenario() -> list[str]:
        admission = Admission(parallel=2, max_queue=1, queue_timeout_s=30)
        order: list[str] = []
        first_in = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            ticket = admission.enter("w")
            await ticket.acquire(Cancellation())
            order.append("a-in")
            first_in.set()
            await release.wait()
            order.append("a-out")
            ticket.release()

        async def waiter() -> None:
            ticket = admission.enter("w")
            await ticket.acquire(Cancellation())
            order.append("b-in")
            ticket.release()

        a = asyncio.create_task(holder())
        await first_in.wait()
        b = asyncio.create_task(waiter())
        await asyncio.sleep(0.01)
        assert admission.stats().queued == 1
        with pytest.raises(ApiError) as refused:
            admission.enter("w")
        assert refused.value.status == 429 and refused.value.headers["Retry-After"]
        other = admission.enter("other")  # a free compute slot and an idle workspace never queue
        await other.acquire(Cancellation())
        order.append("other")
        other.release()
        release.set()
        await asyncio.gather(a, b)
        assert admission.stats().queued == 0 and admission.stats().active == 0
        return order

    assert asyncio.run(scenario()) == ["a-in", "other", "a-out", "b-in"]


def test_admission_times_out_with_503() -> None:
    async def scenario() -> None:
        admission = Admission(parallel=1, max_queue=4, queue_timeout_s=0.2)
        held = admission.enter("a")
        await held.acquire(Cancellation())
        late = admission.enter("b")
        with pytest.raises(ApiError) as timed_out:
            await late.acquire(Cancellation())
        late.release()
        assert timed_out.value.status == 503 and timed_out.value.code == "queue_timeout"
        assert admission.stats().queued == 0
        held.release()
        assert admission.stats().active == 0

    asyncio.run(scenario())


def test_a_request_whose_client_leaves_stops_queueing_at_once() -> None:
    async def scenario() -> None:
        admission = Admission(parallel=1, max_queue=4, queue_timeout_s=60)
        held = admission.enter("a")
        await held.acquire(Cancellation())
        cancel = Cancellation()
        queued = admission.enter("a")
        waiting = asyncio.create_task(queued.acquire(cancel))
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        cancel.cancel(CLIENT_GONE)
        with pytest.raises(Cancelled) as stopped:
            await waiting
        assert stopped.value.reason == CLIENT_GONE and time.perf_counter() - started < 1
        queued.release()
        assert admission.stats().queued == 0
        held.release()
        again = admission.enter("a")  # the workspace is free again
        await asyncio.wait_for(again.acquire(Cancellation()), 1)
        again.release()
        assert admission.stats().active == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(("text", "value"), [("1024", 1024), ("2K", 2048), ("1.5G", 3 << 29), ("512MiB", 512 << 20)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


class _FakePool:
    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.tokenized: list[str] = []

    def tokenize(self, text: str) -> list[int]:
        self.tokenized.append(text)
        return [ord(c) for c in text]

    def longest_prefix(self, tokens: list[int], min_tokens: int = 32) -> tuple[str | None, int]:
        return (self.answer, 40) if self.answer else (None, 0)


def test_router_prefers_the_longest_remembered_prompt_without_tokenizing() -> None:
    from llamanode.server.routing import PromptRouter

    pool = _FakePool("from-pool")
    router = PromptRouter(pool, 32)  # type: ignore[arg-type]
    router.remember("short", "<sys>hello")
    router.remember("long", "<sys>hello<user>q1<assistant>")
    assert router.find("<sys>hello<user>q1<assistant>a1<user>q2") == ("long", "continues")
    assert pool.tokenized == []
    assert router.find("<sys>other") == ("from-pool", "prefix")
    router.forget("long")
    assert router.find("<sys>hello<user>q1<assistant>a1") == ("short", "continues")
    assert PromptRouter(_FakePool(None), 32).find("x") == (None, "none")  # type: ignore[arg-type]


def test_router_sends_an_edited_prompt_to_the_workspace_sharing_the_most_text() -> None:
    # aider re-sends a changed file mid-prompt, possibly while the first workspace is still busy
    from llamanode.server.routing import PromptRouter, shared_text_len

    pool = _FakePool("from-pool")
    router = PromptRouter(pool, 4)  # type: ignore[arg-type]
    system, file_a = "<sys>" + "rules " * 20, "<file>" + "x = 1\n" * 30
    router.remember("other", system + "<user>unrelated")
    router.remember("aider", system + file_a + "<user>q1")
    edited = system + file_a.replace("x = 1\n", "x = 2\n", 1) + "<user>q2"
    assert router.find(system + file_a + "<user>q2") == ("aider", "shared_text")
    assert router.find(edited) == ("aider", "shared_text")
    assert pool.tokenized == []
    assert router.find("<sys>short") == ("from-pool", "prefix")  # under min_tokens * 4 bytes: the token check
    assert [shared_text_len(a, b) for a, b in [("", "x"), ("abc", "abd"), ("abc", "abc"), ("ab", "abc")]] == [
        0,
        2,
        3,
        2,
    ]
    long = "".join(chr(97 + (i * 7) % 26) for i in range(10_000))  # several blocks
    for cut in (0, 1, 4095, 4096, 4097, 9_999):
        assert shared_text_len(long, long[:cut] + "#" + long[cut + 1 :]) == cut
    assert shared_text_len(long, long + "tail") == len(long)


def test_a_full_memory_budget_is_503_not_a_conflict() -> None:
    from llamanode.errors import MemoryBudgetError
    from llamanode.server.errors import from_exception

    error = from_exception(MemoryBudgetError("budget full"))
    assert error.status == 503
    assert error.code == "memory_budget_full"
