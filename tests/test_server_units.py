"""Server parts without a model: the error table, admission, metrics text, size parsing."""

from __future__ import annotations

import threading
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
from llamanode.server.errors import ApiError, from_exception
from llamanode.server.metrics import Metrics


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
    body = error.body()["error"]
    assert set(body) >= {"message", "type", "param", "code"}
    if isinstance(exc, RuntimeError):
        assert "a bug" not in body["message"]  # internals stay in the log, not the response


def test_classification_never_reads_the_message() -> None:
    a = from_exception(InvalidInputError("context overflow at suffix"))
    b = from_exception(SessionFatalError("invalid input"))
    assert (a.status, b.status) == (400, 500)


def test_overflow_error_carries_token_counts() -> None:
    body = from_exception(ContextOverflowError("suffix", 2000, 100, 2048)).body()["error"]
    assert body["requested_tokens"] == 2100 and body["num_ctx"] == 2048 and body["stage"] == "suffix"
    assert body["type"] == "invalid_request_error"


def test_unavailable_asks_to_retry_later() -> None:
    assert from_exception(SessionUnavailableError("x")).headers["Retry-After"].isdigit()


def test_admission_serializes_a_workspace_and_refuses_when_the_queue_is_full() -> None:
    admission = Admission(parallel=2, max_queue=1, queue_timeout_s=30)
    order: list[str] = []
    first_in = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with admission.slot("w"):
            order.append("a-in")
            first_in.set()
            release.wait(10)
            order.append("a-out")

    def waiter() -> None:
        with admission.slot("w"):
            order.append("b-in")

    a = threading.Thread(target=holder)
    a.start()
    assert first_in.wait(5)
    b = threading.Thread(target=waiter)
    b.start()
    deadline = time.monotonic() + 5
    while admission.stats().queued < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert admission.stats().queued == 1
    with pytest.raises(ApiError) as refused, admission.slot("w"):
        pass
    assert refused.value.status == 429 and refused.value.headers["Retry-After"]
    with admission.slot("other"):  # a free compute slot and an idle workspace never queue
        order.append("other")
    release.set()
    a.join(5)
    b.join(5)
    assert order == ["a-in", "other", "a-out", "b-in"]
    assert admission.stats().queued == 0 and admission.stats().active == 0


def test_admission_times_out_with_503() -> None:
    admission = Admission(parallel=1, max_queue=4, queue_timeout_s=0.2)
    with admission.slot("a"), pytest.raises(ApiError) as timed_out, admission.slot("b"):
        pass
    assert timed_out.value.status == 503 and timed_out.value.code == "queue_timeout"
    assert admission.stats().queued == 0


def test_metrics_text_format() -> None:
    metrics = Metrics()
    metrics.describe("x_total", "counter", "Things")
    metrics.describe("t_seconds", "histogram", "Times", (0.1, 1.0))
    metrics.inc("x_total", 2, {"route": '/a"b'})
    metrics.observe("t_seconds", 0.5)
    metrics.observe("t_seconds", 5.0)
    metrics.add_collector(lambda: [("g", "Gauge", {"state": "live"}, 3.0)])
    text = metrics.render()
    assert '# TYPE x_total counter\nx_total{route="/a\\"b"} 2\n' in text
    assert 't_seconds_bucket{le="0.1"} 0' in text
    assert 't_seconds_bucket{le="1"} 1' in text
    assert 't_seconds_bucket{le="+Inf"} 2' in text
    assert "t_seconds_sum 5.5" in text and "t_seconds_count 2" in text
    assert '# TYPE g gauge\ng{state="live"} 3' in text


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


def test_a_full_memory_budget_is_503_not_a_conflict() -> None:
    from llamanode.errors import MemoryBudgetError
    from llamanode.server.errors import from_exception

    error = from_exception(MemoryBudgetError("budget full"))
    assert error.status == 503
    assert error.code == "memory_budget_full"
