"""Schemathesis over the served OpenAPI document: no generated request may get a 5xx, every
response must match the document (status, content type, body schema: the same pydantic models
the handlers build responses from), and invalid data must be rejected.

A dedicated server with a 512-token context keeps generations short. The default run fuzzes
for a bounded time; the slow run fuzzes longer with more examples.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_server_support import ServerProcess, start_server

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "unsupported_method",
        "allow_header_conformance",
        "missing_required_header",
    )
)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    proc = start_server("--ctx", "512", "--parallel", "1", "--max-live", "4")
    yield proc
    proc.stop()


def _schemathesis(server: ServerProcess, seconds: int, examples: int) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("schemathesis")
    workdir = tempfile.mkdtemp(prefix="llamanode-fuzz-")
    try:
        return subprocess.run(
            [
                str(exe), "run", f"{server.url}/openapi.json",
                "--checks", CHECKS,
                "--max-examples", str(examples),
                "--max-time", str(seconds),
                "--workers", "1",
                "--seed", "20261122",
                "--generation-database", "none",
                "--request-timeout", "60",
                "--no-color",
            ],
            cwd=workdir, capture_output=True, text=True, timeout=seconds + 300, check=False,
        )  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _check(server: ServerProcess, result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Server error" not in result.stdout
    assert not [line for line in server.lines if "exception" in line]
    assert all(line["status"] < 500 for line in server.request_logs())
    assert server.proc.poll() is None  # still serving


def test_fuzzing_the_openapi_document_finds_no_server_error(fuzz_server: ServerProcess) -> None:
    _check(fuzz_server, _schemathesis(fuzz_server, seconds=30, examples=20))


@pytest.mark.slow
def test_fuzzing_longer_finds_no_server_error(fuzz_server: ServerProcess) -> None:
    _check(fuzz_server, _schemathesis(fuzz_server, seconds=600, examples=200))
