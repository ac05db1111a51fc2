"""Everything the routes share: pool, engine, chat template, metrics, admission, the request log.

The model is fixed at start-up; no request can make the server open a path.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from .. import __version__
from ..chat import ChatTemplate, discover_special_tokens
from ..config import Config
from .admission import Admission
from .call import SHUTDOWN, Call
from .engine import Engine, PoolLike
from .metrics import Metrics
from .model_info import ModelInfo, ModelProbe
from .routing import PromptRouter
from .settings import ServerSettings

__all__ = ["Runtime"]


class Runtime:
    def __init__(
        self,
        settings: ServerSettings,
        pool: PoolLike,
        probe: ModelProbe,
        config: Config,
        log_stream: IO[str] | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.model_probe = probe
        self.model_info: ModelInfo = probe.info
        self.model_path = probe.info.path
        self.model_id = probe.info.model_id
        self.model_names = frozenset({self.model_id, *settings.aliases})
        self.config = config
        self.started_at = int(time.time())
        self.fingerprint = f"llamanode-{__version__}-{probe.info.digest[:12]}"
        self.admission = Admission(settings.parallel, settings.max_queue, settings.queue_timeout_s)
        self.metrics = Metrics(pool.stats, self.admission.stats)
        # The compute executor: every blocking llama.cpp call runs here, at most `parallel` at once.
        self.executor = ThreadPoolExecutor(max_workers=settings.parallel, thread_name_prefix="llamanode-compute")
        self.engine = Engine(pool, self.admission, self.metrics, self.executor)
        self.router = PromptRouter(pool, settings.route_min_tokens)
        info = probe.info
        specials = discover_special_tokens(info.chat_template or "", pool.tokenize, (info.bos_token, info.eos_token))
        self.template = ChatTemplate(
            info.chat_template,
            bos_token=info.bos_token,
            eos_token=info.eos_token,
            add_bos=info.add_bos,
            add_eos=info.add_eos,
            special_tokens=specials,
        )
        self.calls: set[Call] = set()
        self.draining = False
        self._log_stream = log_stream if log_stream is not None else sys.stderr
        self._log_lock = threading.Lock()

    @property
    def num_ctx(self) -> int:
        return self.config.num_ctx

    def drain(self, deadline_s: float) -> None:
        """Shutdown began: refuse new requests; cancel those still running after deadline_s."""
        self.draining = True
        asyncio.get_running_loop().call_later(deadline_s, self.cancel_all)

    def cancel_all(self) -> None:
        for call in list(self.calls):
            call.cancel.cancel(SHUTDOWN)

    def log(self, entry: dict[str, Any]) -> None:
        """One request's JSON line (none with --quiet)."""
        if self.settings.log_requests:
            self._write(entry)

    def event(self, name: str, **fields: Any) -> None:
        """A server event's JSON line (shutting down, forced exit), written even with --quiet."""
        self._write({"event": name, **fields})

    def _write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":"), default=str)
        with self._log_lock:
            self._log_stream.write(line + "\n")
            self._log_stream.flush()

    def close(self) -> None:
        """After the server stopped: wait for the compute threads, then checkpoint the pool."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        try:
            self.pool.close()
        finally:
            self.model_probe.close()
