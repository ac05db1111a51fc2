"""The public surface: __all__, the error tree, the backend registry, import without llama_cpp."""

from __future__ import annotations
import __future__

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import llamanode
from fakes import FakeBackend, fake_session
from llamanode import registry


def test_all_is_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(llamanode).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)  # submodules
        and value is not __future__.annotations  # the `from __future__ import annotations` feature
    }
    assert set(llamanode.__all__) == public | {"__version__"}
    assert llamanode.__all__ == sorted(llamanode.__all__)
    assert len(set(llamanode.__all__)) == len(llamanode.__all__)


def test_star_import_gives_every_exported_name() -> None:
    namespace: dict[str, object] = {}
    exec("from llamanode import *", namespace)
    assert set(llamanode.__all__) <= set(namespace)


@pytest.mark.parametrize(
    "module",
    [
        *("assembler", "config", "errors", "manifest", "session", "kvsession", "residency", "textstream"),
        *("backends.base", "registry", "rope", "tools", "prewarm", "session_lock", "input_checks"),
        *("segment_plan", "segment_reuse", "resident_state"),
    ],
)
def test_submodule_all_names_exist(module: str) -> None:
    mod = __import__(f"llamanode.{module}", fromlist=["__all__"])
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert missing == []


def test_error_tree() -> None:
    errors = [getattr(llamanode, name) for name in llamanode.__all__ if name.endswith("Error")]
    assert all(issubclass(e, llamanode.LlamaNodeError) for e in errors)
    assert issubclass(llamanode.ConfigError, llamanode.InvalidInputError)
    assert issubclass(llamanode.GrammarError, llamanode.InvalidInputError)
    assert issubclass(llamanode.InvalidInputError, ValueError)
    assert issubclass(llamanode.SnapshotCorruptError, llamanode.SnapshotError)
    assert issubclass(llamanode.SnapshotMismatchError, llamanode.SnapshotError)
    err = llamanode.ContextOverflowError("suffix", 10, 5, 12)
    assert (err.stage, err.resident_tokens, err.additional_tokens, err.num_ctx) == ("suffix", 10, 5, 12)
    assert "15" in str(err) and "12" in str(err)
    assert llamanode.ManifestMismatchError("x", "add_bos").field == "add_bos"


def test_build_manifest_is_join_segments() -> None:
    assert llamanode.build_manifest is llamanode.manifest.join_segments


def test_a_kvsession_is_a_session() -> None:
    session, _ = fake_session()
    assert isinstance(session, llamanode.Session)


def test_the_backend_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    assert llamanode.session_available() and llamanode.embed_available()
    opened: list[tuple[str, llamanode.Config]] = []
    backends: list[FakeBackend] = []

    def loader(path: str, config: llamanode.Config) -> llamanode.Backend:
        backends.append(FakeBackend(path))
        return backends[-1]

    monkeypatch.setattr(registry, "_loader", None)
    assert not llamanode.session_available() and not llamanode.embed_available()
    with pytest.raises(llamanode.SessionUnavailableError):
        llamanode.open_session("model.gguf")
    with pytest.raises(llamanode.SessionUnavailableError):
        llamanode.embed("model.gguf", None, "text")
    llamanode.set_backend(loader)
    session = llamanode.open_session("model.gguf")
    assert isinstance(session, llamanode.KVSession)
    opened.extend((b.info.path, c) for b in backends for c in b.configs)
    assert opened == [("model.gguf", llamanode.Config())]
    session.close()
    assert backends[0].closed and backends[0].contexts[0].closed  # the session held the handle and the context
    assert len(llamanode.embed("model.gguf", None, "text")) == 8 and backends[1].closed
    llamanode.set_backend(None)
    assert not llamanode.session_available()


def test_default_model_path_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMANODE_MODEL", "/models/other.gguf")
    assert llamanode.default_model_path() == Path("/models/other.gguf")
    monkeypatch.delenv("LLAMANODE_MODEL")
    assert llamanode.default_model_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_import_works_without_llama_cpp() -> None:
    result = _run(
        """
        import sys
        sys.modules["llama_cpp"] = None  # any `import llama_cpp` now raises ImportError
        import llamanode
        from llamanode import Config, SessionUnavailableError
        assert not llamanode.session_available()
        assert not llamanode.embed_available()
        for call in (lambda: llamanode.open_session(), lambda: llamanode.embed(None, None, "x")):
            try:
                call()
            except SessionUnavailableError:
                pass
            else:
                raise SystemExit("expected SessionUnavailableError")
        Config.from_mapping({"num_ctx": 1024})  # the pure-Python parts still work
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_import_does_not_load_the_native_library() -> None:
    result = _run(
        """
        import sys
        import llamanode
        print(sorted(m for m in sys.modules if m.split(".")[0] == "llama_cpp"))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
