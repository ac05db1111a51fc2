"""A deterministic toy backend (FakeBackend) and KVContext for fast contract tests of KVSession and SessionPool.

The toy model mimics what matters about llama.cpp for reuse:
- a byte-level tokenizer (one token per UTF-8 byte, BOS/EOS specials), while generation
  emits multi-byte pieces, so re-tokenized generated text differs from the generated ids;
- KV position p is a hash of tokens[:p+1] *and of how each token was computed*: a token
  decoded in a (micro-)batch of one after position 0 is "tainted", like the single-token
  kernel path whose KV differs from a batched prefill (docs: measured-facts);
- logits are the hash of the last position, and they go stale after a trim; sampling from
  stale logits is an error (llama.cpp would silently sample from old logits);
- shift() moves cells with their hashes, so moved KV keeps what it was computed from (approximate
  reuse is visible: a moved cell's hash differs from a cold pass); a prefill may fill a gap, its
  hashes chaining from the cell before it. A context made with can_shift=False refuses shifts.
Every prefill batch and micro-batch is recorded so tests can check chunking.
Interrupts: while armed, interrupt() makes the prefill in flight raise PrefillInterruptedError after its
micro-batches' cells are dropped again; "in flight" is wherever a test's mid_prefill hook runs (after the
batch's cells were computed, before the prefill returns), so a test interrupts a chunk half-way.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llamanode.backends.base import BackendIdentity, ModelInfo
from llamanode.config import Config, DecodeConfig
from llamanode.errors import (
    GrammarError,
    PrefillInterruptedError,
    SessionClosedError,
    SessionFatalError,
    SnapshotError,
)
from llamanode.kvsession import KVSession

BOS, EOS, BYTE0 = 1, 2, 3
_MASK = (1 << 64) - 1

# What the toy model "says": units of one or more pieces; multi-piece units split a UTF-8
# character across tokens. Single-byte pieces are byte tokens; longer ones get extra ids.
UNITS: tuple[tuple[bytes, ...], ...] = (
    (b"a",),
    (b"b",),
    (b"c",),
    (b" ",),
    (b"\n",),
    (b"xy",),
    (b"\xc3", b"\xa9"),  # é as two byte tokens
    (b"\xe2\x82", b"\xac"),  # € as a 2-byte piece + a continuation byte
    (b"\xf0\x9f", b"\x99\x82"),  # 🙂 as two 2-byte pieces
    (b"STOP",),
)
_EXTRA = sorted({p for unit in UNITS for p in unit if len(p) > 1})
EXTRA_IDS = {piece: BYTE0 + 256 + i for i, piece in enumerate(_EXTRA)}
_PIECES = {v: k for k, v in EXTRA_IDS.items()}


def piece_id(piece: bytes) -> int:
    return BYTE0 + piece[0] if len(piece) == 1 else EXTRA_IDS[piece]


def _mix(h: int, token: int, tainted: bool) -> int:
    h ^= token * 0x9E3779B97F4A7C15 + (0x5851F42D4C957F2D if tainted else 0)
    h = (h * 0xBF58476D1CE4E5B9) & _MASK
    return h ^ (h >> 31)


FAKE_IDENTITY = BackendIdentity(
    model_path="/fake/model.gguf",
    model_digest="m" * 64,
    tokenizer_digest="t" * 64,
    build_id="fake-build-1",
    runtime_digest="r" * 64,
    template_digest="p" * 64,
    add_bos=False,
    chat_template=None,
    n_ctx=256,
    description="toy model",
)


@dataclass
class Batch:
    start: int
    size: int
    kind: str  # prefill | step


def _token_bytes(token: int) -> bytes:
    if token in (BOS, EOS):
        return b""
    if token in _PIECES:
        return _PIECES[token]
    return bytes([token - BYTE0])


@dataclass
class FakeContext:
    """A KVContext over the toy model (see module docstring)."""

    n_ctx: int = 256
    n_batch: int = 8
    n_ubatch: int = 8
    add_bos: bool = False
    eos_every: int = 29  # greedy EOS when the last logits hash is divisible by this; 0 = never
    can_shift: bool = True
    identity: BackendIdentity = field(init=False)
    kv: list[tuple[int, bool] | None] = field(default_factory=list)  # (token, tainted) per position; None: a gap
    hashes: list[int | None] = field(default_factory=list)
    shift_pending: bool = False
    logits_live: bool = False
    logits_at: int = -1
    batches: list[Batch] = field(default_factory=list)
    ubatches: list[Batch] = field(default_factory=list)
    tokenize_calls: int = 0
    closed: bool = False
    armed: bool = False
    interrupted: bool = False
    interrupted_prefills: int = 0
    # called inside each prefill after its cells were computed, as if the graph were half-way (tests' hook)
    mid_prefill: Callable[[int, int], None] | None = None

    def __post_init__(self) -> None:
        from dataclasses import replace

        self.identity = replace(FAKE_IDENTITY, n_ctx=self.n_ctx, add_bos=self.add_bos)

    # tokens
    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        self.tokenize_calls += 1
        return _tokenize(text, add_bos)

    def token_bytes(self, token: int) -> bytes:
        return _token_bytes(token)

    def is_eog(self, token: int) -> bool:
        return token == EOS

    # KV
    def trim(self, keep: int) -> None:
        self._check_open()
        assert 0 <= keep <= len(self.kv), f"trim({keep}) beyond {len(self.kv)} cells"
        if keep < len(self.kv):
            del self.kv[keep:]
            del self.hashes[keep:]
            self._drop_trailing_gaps()
            self.logits_live = False

    def prefill(self, tokens: Sequence[int], start: int) -> None:
        self._check_open()
        if len(tokens) > self.n_batch:
            raise SessionFatalError(f"batch of {len(tokens)} exceeds n_batch {self.n_batch}")
        assert tokens, "empty batch"
        assert start <= len(self.kv) and None not in self.kv[:start], f"batch at {start} after a gap or past the end"
        assert all(self._free(p) for p in range(start, start + len(tokens))), f"batch at {start} overwrites cells"
        assert start + len(tokens) <= self.n_ctx, "past n_ctx"
        self._take_interrupt(start)
        cells = list(self.kv), list(self.hashes), self.logits_at
        self._decode(tokens, start, "prefill")
        if self.mid_prefill is not None:
            self.mid_prefill(start, len(tokens))
        if self.armed and self.interrupted:  # like llama.cpp: the aborted batch's cells are removed
            self.kv, self.hashes, self.logits_at = cells
            self.logits_live = False
            self._take_interrupt(start)

    def arm_interrupts(self, armed: bool) -> None:
        self.armed, self.interrupted = armed, False

    def interrupt(self) -> None:
        if self.armed:
            self.interrupted = True

    def _take_interrupt(self, start: int) -> None:
        if self.armed and self.interrupted:
            self.interrupted = False
            self.interrupted_prefills += 1
            raise PrefillInterruptedError(f"toy prefill at {start} interrupted")

    def step(self, token: int, position: int) -> None:
        self._check_open()
        assert position == len(self.kv), f"step at {position} but {len(self.kv)} cells are resident"
        assert None not in self.kv, "a step after a gap"
        assert position < self.n_ctx, "past n_ctx"
        self._decode([token], position, "step")

    def remove(self, start: int, end: int) -> None:
        self._check_open()
        for p in range(start, min(end, len(self.kv))):
            self.kv[p] = self.hashes[p] = None
        self._drop_trailing_gaps()
        self.logits_live = False

    def shift(self, start: int, end: int, delta: int) -> None:
        self._check_open()
        if not self.can_shift:
            raise SessionFatalError("the toy context cannot shift")
        moving = [(p, self.kv[p], self.hashes[p]) for p in range(start, min(end, len(self.kv))) if self.kv[p]]
        for p, _, _ in moving:
            self.kv[p] = self.hashes[p] = None
        for p, cell, h in moving:
            assert p + delta >= 0 and self._free(p + delta), f"shift onto occupied position {p + delta}"
            self._place(p + delta, cell, h)
        self._drop_trailing_gaps()
        self.shift_pending = self.shift_pending or (delta != 0 and bool(moving))
        self.logits_live = False

    def shift_unsupported(self) -> str | None:
        return None if self.can_shift else "the toy context cannot shift"

    def positions(self) -> list[int]:
        """Positions that hold a cell."""
        return [p for p, cell in enumerate(self.kv) if cell is not None]

    def _free(self, p: int) -> bool:
        return p >= len(self.kv) or self.kv[p] is None

    def _place(self, p: int, cell: tuple[int, bool] | None, h: int | None) -> None:
        while len(self.kv) <= p:
            self.kv.append(None)
            self.hashes.append(None)
        self.kv[p], self.hashes[p] = cell, h

    def _drop_trailing_gaps(self) -> None:
        while self.kv and self.kv[-1] is None:
            self.kv.pop()
            self.hashes.pop()

    def _decode(self, tokens: Sequence[int], start: int, kind: str) -> None:
        self.batches.append(Batch(start, len(tokens), kind))
        at = 0
        while at < len(tokens):  # llama.cpp splits a batch into micro-batches of n_ubatch
            micro = tokens[at : at + self.n_ubatch]
            pos = start + at
            self.ubatches.append(Batch(pos, len(micro), kind))
            tainted = len(micro) == 1 and pos > 0
            for i, token in enumerate(micro):
                prev = self.hashes[pos + i - 1] if pos + i > 0 else 0
                assert prev is not None
                self._place(pos + i, (token, tainted), _mix(prev, token, tainted))
            at += len(micro)
        self.logits_live = True
        self.logits_at = start + len(tokens) - 1
        self.shift_pending = False

    def last_logits(self) -> int:
        assert self.logits_live and self.hashes, "sampling from stale logits"
        h = self.hashes[self.logits_at]
        assert h is not None and self.logits_at == len(self.kv) - 1, "sampling from logits of a gap-filling batch"
        return h

    def new_sampler(self, config: DecodeConfig) -> FakeSampler:
        self._check_open()
        _check_grammar(config)
        return FakeSampler(self, config)

    # state
    def state_bytes(self) -> bytes:
        self._check_open()
        if self.shift_pending:
            raise SnapshotError("a shift is pending until the next prefill")
        assert None not in self.kv, "exporting a context with gaps"
        return json.dumps({"kv": self.kv, "hashes": self.hashes}).encode()

    def load_state(self, data: bytes) -> None:
        self._check_open()
        try:
            raw = json.loads(data)
            kv: list[tuple[int, bool] | None] = [(int(t), bool(x)) for t, x in raw["kv"]]
            hashes: list[int | None] = [int(h) for h in raw["hashes"]]
            if len(hashes) != len(kv):
                raise ValueError("kv and hashes differ in length")
        except (ValueError, KeyError, TypeError) as exc:
            self.trim(0)
            raise SnapshotError(f"toy state refused: {exc}") from exc
        self.kv, self.hashes, self.logits_live, self.shift_pending = kv, hashes, False, False

    def kv_bytes(self) -> int:
        return 16 * self.n_ctx

    def close(self) -> None:
        self.closed = True

    def _check_open(self) -> None:
        assert not self.closed, "context used after close"

    # helpers for tests
    def small_batches_after_start(self) -> list[Batch]:
        """Micro-batches of one token after position 0 that were not decode steps."""
        return [b for b in self.ubatches if b.size == 1 and b.start > 0 and b.kind != "step"]


class FakeSampler:
    """Greedy: a pure function of the last logits. Otherwise mixed with a seeded RNG."""

    def __init__(self, ctx: FakeContext, config: DecodeConfig) -> None:
        self._ctx = ctx
        self._config = config
        seed = config.seed if config.seed is not None else random.randrange(2**32 - 1)
        self._rng = None if config.greedy else random.Random(seed)
        self._queue: list[int] = []
        self.closed = False

    def sample(self) -> int:
        assert not self.closed, "sampler used after close"
        h = self._ctx.last_logits()
        if self._queue:
            return self._queue.pop(0)
        if self._rng is not None:
            h = _mix(h, self._rng.randrange(1 << 30), False)
        if self._ctx.eos_every and h % self._ctx.eos_every == 0:
            return EOS
        unit = UNITS[(h >> 8) % len(UNITS)]
        ids = [piece_id(p) for p in unit]
        self._queue = ids[1:]
        return ids[0]

    def close(self) -> None:
        self.closed = True


def _tokenize(text: str, add_bos: bool) -> list[int]:
    ids = [BYTE0 + b for b in text.encode("utf-8")]
    return [BOS, *ids] if add_bos else ids


def _check_grammar(config: DecodeConfig) -> None:
    if config.grammar is not None and "root ::=" not in config.grammar:
        raise GrammarError("toy grammar needs a root rule")
    if config.json_schema is not None and "type" not in config.json_schema:
        raise GrammarError("toy schema needs a type")


FAKE_PAD = 16  # the toy pads n_ctx like llama.cpp does (to 256), at a smaller step
FAKE_KV_PER_TOKEN = 16.0


class FakeBackend:
    """The toy model behind the Backend protocol: opens FakeContexts, records what it was asked."""

    def __init__(self, path: str = "/fake/model.gguf", add_bos: bool = False, eos_every: int = 29) -> None:
        self.add_bos = add_bos
        self.eos_every = eos_every
        self.info = ModelInfo(
            path=path,
            digest=FAKE_IDENTITY.model_digest,
            description=FAKE_IDENTITY.description,
            chat_template=None,
            bos_token="",
            eos_token="",
            add_bos=add_bos,
            add_eos=False,
            n_ctx_train=4096,
            kv_bytes_per_token=dict.fromkeys(("f16", "q8_0", "q4_0"), FAKE_KV_PER_TOKEN),
        )
        self.contexts: list[FakeContext] = []
        self.configs: list[Config] = []
        self.closed = False

    def identity(self, config: Config) -> BackendIdentity:
        from dataclasses import replace

        return replace(FAKE_IDENTITY, n_ctx=self.padded_ctx(config.num_ctx), add_bos=self.add_bos)

    def padded_ctx(self, num_ctx: int) -> int:
        return -(-num_ctx // FAKE_PAD) * FAKE_PAD

    def open_context(self, config: Config) -> FakeContext:
        self._check_open()
        n_ctx = self.padded_ctx(config.num_ctx)
        ctx = FakeContext(n_ctx, config.num_batch, config.num_ubatch, self.add_bos, self.eos_every)
        self.contexts.append(ctx)
        self.configs.append(config)
        return ctx

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        self._check_open()
        return _tokenize(text, add_bos)

    def token_bytes(self, token: int) -> bytes:
        self._check_open()
        return _token_bytes(token)

    def check_grammar(self, config: DecodeConfig) -> None:
        _check_grammar(config)

    def embed(self, config: Config, text: str) -> list[float]:
        return [float(b) for b in text.encode("utf-8")[:8].ljust(8, b"\0")]

    def close(self) -> None:
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise SessionClosedError("the model handle is closed")


def fake_session(
    num_ctx: int = 256, num_batch: int = 8, num_ubatch: int | None = None, add_bos: bool = False, eos_every: int = 29
) -> tuple[KVSession, FakeContext]:
    ubatch = num_batch if num_ubatch is None else num_ubatch
    config = Config(num_ctx=num_ctx, num_batch=num_batch, num_ubatch=ubatch)
    ctx = FakeContext(n_ctx=num_ctx, n_batch=num_batch, n_ubatch=ubatch, add_bos=add_bos, eos_every=eos_every)
    return KVSession(ctx, config), ctx
