"""HTTP itself, on real sockets: keep-alive after refusals, HTTP/1.0, timeouts, limits, protocol
errors, long prefills over SSE, disconnects while queued, and the metrics exposition."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx
import openai
import pytest

from gates import wait_until
from test_server_support import API_KEY, MODEL, ServerProcess, locked_server, server, start_server

__all__ = ["locked_server", "server"]


def _address(server: ServerProcess) -> tuple[str, int]:
    parts = urlsplit(server.url)
    return parts.hostname or "127.0.0.1", parts.port or 80


class RawClient:
    """One TCP connection, spoken with h11 (the client side): requests in sequence on the same socket."""

    def __init__(self, server: ServerProcess, timeout: float = 60.0) -> None:
        self.host = urlsplit(server.url).netloc
        self.sock = socket.create_connection(_address(server), timeout=timeout)
        self.conn = h11.Connection(h11.CLIENT)

    def request(
        self, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        fields = {"Host": self.host, "Content-Length": str(len(body)), **(headers or {})}
        self.sock.sendall(self.conn.send(h11.Request(method=method, target=target, headers=list(fields.items()))))
        if body:
            self.sock.sendall(self.conn.send(h11.Data(data=body)))
        self.sock.sendall(self.conn.send(h11.EndOfMessage()))
        status, response_headers, parts = 0, {}, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, response_headers, b"".join(parts)

    def close(self) -> None:
        self.sock.close()


def _code(body: bytes) -> str:
    return str(json.loads(body)["error"]["code"])


def _chat_body(**extra: Any) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 2, **extra}
    return json.dumps(body).encode()


AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
REFUSALS: list[tuple[str, str, str, bytes, dict[str, str], int, str]] = [
    ("401 no key, body unread", "POST", "/v1/chat/completions", _chat_body(), {}, 401, "invalid_api_key"),
    (
        "403 foreign host",
        "POST",
        "/v1/chat/completions",
        _chat_body(),
        {**AUTH, "Host": "evil.example"},
        403,
        "invalid_host",
    ),
    ("404 unknown route", "POST", "/v1/nothing", _chat_body(), AUTH, 404, "not_found"),
    ("405 wrong method", "DELETE", "/v1/chat/completions", _chat_body(), AUTH, 405, "method_not_allowed"),
    (
        "400 bad session id",
        "POST",
        "/v1/llamanode/sessions/-bad-/prefix",
        b'{"segments": []}',
        AUTH,
        400,
        "invalid_workspace",
    ),
    ("400 malformed json", "POST", "/v1/chat/completions", b'{"model": ', AUTH, 400, "invalid_json"),
    ("413 body over the limit", "POST", "/v1/chat/completions", b"x" * (65 * 1024), AUTH, 413, "body_too_large"),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "headers", "status", "code"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_the_connection_answers_correctly_after_an_early_refusal(
    locked_server: ServerProcess,
    name: str,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    client = RawClient(locked_server)
    try:
        got, response_headers, payload = client.request(method, path, body, headers)
        assert (got, _code(payload)) == (status, code), payload
        assert response_headers["content-type"] == "application/json"
        assert response_headers.get("connection") != "close"
        for _ in range(2):  # the same socket: the next requests get their own answers
            again, _, health = client.request("GET", "/health")
            assert again == 200 and json.loads(health)["status"] == "ok"
        models, _, listing = client.request("GET", "/v1/models", headers=AUTH)
        assert models == 200 and json.loads(listing)["data"][0]["id"] == MODEL
    finally:
        client.close()


def test_a_pooled_client_gets_the_right_answer_after_each_refusal(locked_server: ServerProcess) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    peers: set[Any] = set()
    with httpx.Client(base_url=locked_server.url, limits=limits, timeout=60) as http:
        for _, method, path, body, headers, status, code in REFUSALS:
            refused = http.request(method, path, content=body, headers=headers)
            assert (refused.status_code, refused.json()["error"]["code"]) == (status, code)
            ok = http.get("/v1/models", headers=AUTH)
            assert ok.status_code == 200 and ok.json()["data"][0]["id"] == MODEL
            peers.add(ok.extensions["network_stream"].get_extra_info("client_addr"))
    assert len(peers) == 1  # one connection served every request
    client = openai.OpenAI(base_url=locked_server.url + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "x"}])  # type: ignore[misc, list-item]
    assert client.models.list().data[0].id == MODEL  # the pooled connection still answers correctly
    client.close()


def _http10(server: ServerProcess, request: bytes) -> tuple[str, dict[str, str], bytes]:
    with socket.create_connection(_address(server), timeout=60) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):  # an HTTP/1.0 response ends when the server closes
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return status_line, headers, body


def test_an_http10_client_gets_valid_responses(server: ServerProcess) -> None:
    status, headers, body = _http10(server, b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    assert status.split()[1] == "200" and int(headers["content-length"]) == len(body)
    assert json.loads(body)["status"] == "ok"
    payload = json.dumps({"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 4, "stream": True}).encode()
    request = (
        b"POST /v1/completions HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    status, headers, body = _http10(server, request)
    assert status.split()[1] == "200" and headers["content-type"].startswith("text/event-stream")
    assert "transfer-encoding" not in headers  # no chunked framing for HTTP/1.0: the body ends at close
    assert body.rstrip().endswith(b"data: [DONE]")


@pytest.fixture(scope="module")
def strict_server() -> Iterator[ServerProcess]:
    """Short header and body timeouts, few connections."""
    proc = start_server("--header-timeout", "1.5", "--body-timeout", "1.5", "--max-connections", "6")
    yield proc
    proc.stop()


def test_a_trickling_client_is_cut_after_the_header_timeout_while_others_are_served(
    strict_server: ServerProcess,
) -> None:
    mark = strict_server.mark()
    cut_after: list[float] = []

    def trickle() -> None:
        with socket.create_connection(_address(strict_server), timeout=10) as sock:
            started = time.monotonic()
            try:
                for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.1)
                    sock.settimeout(0.001)
                    try:
                        if sock.recv(1) == b"":
                            break
                    except TimeoutError:
                        pass
                    finally:
                        sock.settimeout(10)
            except (BrokenPipeError, ConnectionResetError):
                pass
            cut_after.append(time.monotonic() - started)

    slow = threading.Thread(target=trickle)
    slow.start()
    with httpx.Client(base_url=strict_server.url, timeout=10) as http:
        while slow.is_alive():
            started = time.monotonic()
            assert http.get("/health").status_code == 200
            assert time.monotonic() - started < 1.0  # served meanwhile
            time.sleep(0.2)
    slow.join()
    assert cut_after and 1.4 <= cut_after[0] < 5.0, cut_after  # ~140 bytes at 10/s would take 14 s
    lines = [line for line in strict_server.lines[mark:] if line.get("protocol_error") == "header_timeout"]
    assert lines and lines[0]["status"] == 408
    assert strict_server.metrics()['llamanode_protocol_errors_total{kind="header_timeout"}'] >= 1


def test_a_silent_connection_is_closed_after_the_header_timeout(strict_server: ServerProcess) -> None:
    with socket.create_connection(_address(strict_server), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert 1.4 <= time.monotonic() - started < 5.0


def test_a_trickling_body_gets_408_and_the_connection_closes(strict_server: ServerProcess) -> None:
    with socket.create_connection(_address(strict_server), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        data = b""
        started = time.monotonic()
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in data
    assert b"connection: close" in data.lower()
    assert 1.4 <= time.monotonic() - started < 5.0


def test_protocol_errors_are_json_and_logged(strict_server: ServerProcess) -> None:
    mark = strict_server.mark()
    for request, status, code in (
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "invalid_http"),
        (
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (70 * 1024),  # headers unfinished
            431,
            "headers_too_large",
        ),
    ):
        with socket.create_connection(_address(strict_server), timeout=10) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d" % status) and b"application/json" in head
        assert json.loads(body)["error"]["code"] == code

    def logged() -> list[str]:  # a line may reach the log reader after the response reached the client
        return [line["protocol_error"] for line in strict_server.lines[mark:] if "protocol_error" in line]

    wait_until(lambda: len(logged()) >= 2, 10, 0.02, "protocol errors not logged")
    assert logged() == ["invalid_http", "headers_too_large"]


def test_connections_over_the_limit_get_503(strict_server: ServerProcess) -> None:
    held = [socket.create_connection(_address(strict_server), timeout=10) for _ in range(6)]
    try:
        client = RawClient(strict_server)
        status, headers, body = client.request("GET", "/health")
        client.close()
        assert status == 503 and _code(body) == "too_many_connections" and headers["connection"] == "close"
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    with httpx.Client(base_url=strict_server.url) as http:
        assert http.get("/health").status_code == 200


def test_a_long_prefill_sends_headers_at_once_then_progress_comments(server: ServerProcess) -> None:
    prompt = "def f(x):\n    return x + 1\n" * 150  # ~1900 tokens: four 512-token chunks, seconds of prefill
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2, "temperature": 0, "stream": True}
    lines: list[tuple[float, str]] = []
    with httpx.Client(base_url=server.url, timeout=120) as http:
        started = time.monotonic()
        with http.stream("POST", "/v1/completions", json=body, headers={"X-Llamanode-Workspace": "long-prefill"}) as r:
            headers_after = time.monotonic() - started
            assert r.status_code == 200
            lines = [(time.monotonic() - started, line) for line in r.iter_lines() if line]
    first_data = next(t for t, line in lines if line.startswith("data: "))
    comments = [line for _, line in lines if line.startswith(":")]
    assert headers_after < min(1.0, first_data / 2), (headers_after, first_data)
    assert len(comments) >= 3 and all(c.startswith(": prefill ") for c in comments), comments
    done, total = comments[0].removeprefix(": prefill ").split("/")
    assert 0 < int(done) < int(total)
    assert lines[-1][1] == "data: [DONE]"


def test_an_error_before_the_first_token_is_a_typed_error_event(server: ServerProcess) -> None:
    huge = "word " * 3000  # ~3000 tokens > num_ctx 2048: found while prefilling, after the headers
    stream = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": huge}], max_tokens=4, stream=True,
        extra_headers={"X-Llamanode-Workspace": "err-stream"},
    )  # fmt: skip
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.body["num_ctx"] == 2048  # type: ignore[index]


def test_a_client_that_leaves_while_queued_frees_its_place(locked_server: ServerProcess) -> None:
    """parallel 1, queue 1: one stream runs; a second request queues, then hangs up."""
    body = {"model": MODEL, "prompt": "1, 2, 3, 4,", "max_tokens": 300, "temperature": 0, "stream": True}
    started, done = threading.Event(), threading.Event()

    def hold() -> None:
        with (
            locked_server.http() as http,
            http.stream("POST", "/v1/completions", json=body, headers={"X-Llamanode-Workspace": "q-hold"}) as r,
        ):
            for _ in r.iter_lines():
                started.set()
                if done.is_set():
                    break

    mark = locked_server.mark()
    runner = threading.Thread(target=hold)
    runner.start()
    try:
        assert started.wait(60)
        queued = RawClient(locked_server)
        payload = json.dumps({**body, "stream": False, "max_tokens": 2}).encode()
        fields = {**AUTH, "Host": queued.host, "Content-Length": str(len(payload)), "X-Llamanode-Workspace": "q-left"}
        queued.sock.sendall(
            queued.conn.send(h11.Request(method="POST", target="/v1/completions", headers=list(fields.items())))
            + queued.conn.send(h11.Data(data=payload))
            + queued.conn.send(h11.EndOfMessage())
        )
        with locked_server.http() as http:
            deadline = time.monotonic() + 10
            while http.get("/health").json()["queued"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert http.get("/health").json()["queued"] == 1
            queued.close()
            deadline = time.monotonic() + 5
            while http.get("/health").json()["queued"] > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert http.get("/health").json()["queued"] == 0  # noticed at once, not after the queue timeout
        deadline = time.monotonic() + 10
        while not (lines := [x for x in locked_server.lines[mark:] if x.get("workspace") == "q-left"]):
            assert time.monotonic() < deadline, "no log line for the request that left"
            time.sleep(0.05)
        (line,) = lines
        assert line["status"] == 499 and line["client_gone"] and line["workspace"] == "q-left"
        assert "generated_tokens" not in line or line["generated_tokens"] == 0
    finally:
        done.set()
        runner.join(120)


def test_counters_parse_and_only_go_up(server: ServerProcess) -> None:
    with server.http() as http:
        assert http.get("/health").status_code == 200
    before = server.metric_samples()
    counters = {key for key, (kind, _) in before.items() if kind == "counter"}
    assert counters and all(key.split("{")[0].endswith("_total") for key in counters)
    assert {"llamanode_pool_hits_total", "llamanode_pool_forks_total", "llamanode_requests_total"} <= {
        key.split("{")[0] for key in counters
    }
    assert any(key.startswith("process_") for key in before)
    server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say ok."}], max_tokens=2,
        extra_headers={"X-Llamanode-Workspace": "metrics-up"},
    )  # fmt: skip
    server.mark()  # a request's counts are recorded when all its work is done, maybe just after the answer
    after = server.metric_samples()
    for key in counters:
        assert after[key][1] >= before[key][1], key
    assert after["llamanode_generated_tokens_total"][1] > before["llamanode_generated_tokens_total"][1]
