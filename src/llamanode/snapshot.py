"""The snapshot file format: a self-describing, checksummed header and a checksummed payload.

    MAGIC (8) | header length (u32 LE) | header JSON | sha256(header JSON) (32) | payload
    payload = token ids (int32 LE) | prefix text (UTF-8) | KV state (llama_state_seq bytes)

Every identity field is checked, and every byte checksummed, before a state is handed to a session.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

from .buffers import read_hashed
from .errors import InvalidInputError, SnapshotCorruptError, SnapshotMismatchError
from .identity import SnapshotIdentity, require_identity
from .manifest import ContextManifest, ManifestSegment
from .session import SessionState

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "READABLE_VERSIONS",
    "TOKEN_BLOCK",
    "SnapshotHeader",
    "SnapshotIdentity",
    "build_header",
    "encode_header",
    "parse_header",
    "payload_parts",
    "read_header",
    "read_snapshot",
    "token_chain",
    "tokens_from_bytes",
    "tokens_to_bytes",
]

MAGIC = b"LNSNAP\r\n"
FORMAT_VERSION = 2  # 2: the header says from which token the KV is approximate (segment reuse)
READABLE_VERSIONS = (1, 2)  # a version-1 snapshot has only exact KV
TOKEN_BLOCK = 64  # tokens per link of the chained hash
_LEN = struct.Struct("<I")
_SHA = 32
_MAX_HEADER = 16 << 20
_CHAIN_ROOT = hashlib.sha256(b"llamanode-token-chain-v1").digest()


@dataclass(frozen=True)
class SnapshotHeader:
    """Everything needed to check a snapshot and rebuild its SessionState, minus the bytes."""

    format_version: int
    workspace_id: str
    created_at: float
    build_id: str
    model_digest: str
    tokenizer_digest: str
    runtime_digest: str
    kv_config: Mapping[str, Any]
    manifest_digest: str
    manifest: Mapping[str, Any]
    n_tokens: int
    prefix_len: int
    stable_len: int
    generated: int
    token_block: int
    token_chain: tuple[str, ...]
    text_bytes: int
    kv_bytes: int
    payload_bytes: int
    payload_sha256: str
    approximate_from: int | None = None  # first token whose KV was reused approximately (absent in version 1)

    def identity(self) -> SnapshotIdentity:
        return SnapshotIdentity(
            self.build_id, self.model_digest, self.tokenizer_digest, self.runtime_digest, self.kv_config
        )

    def check_identity(self, expected: SnapshotIdentity) -> None:
        """Raise SnapshotMismatchError naming the first field that differs from expected."""
        if self.format_version not in READABLE_VERSIONS:
            raise SnapshotMismatchError("format_version", str(self.format_version), str(FORMAT_VERSION))
        require_identity(self.identity(), manifest_from_dict(self.manifest), expected)


# -- token ids ---------------------------------------------------------------------------------
def tokens_to_bytes(tokens: Sequence[int]) -> bytes:
    packed = array("i", tokens)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def tokens_from_bytes(data: bytes | memoryview) -> tuple[int, ...]:
    packed = array("i")
    packed.frombytes(data)
    if sys.byteorder == "big":
        packed.byteswap()
    return tuple(packed)


def token_chain(tokens: Sequence[int], block: int = TOKEN_BLOCK) -> tuple[str, ...]:
    """vLLM-style chained block hashes: link i = sha256(link i-1 + ids of block i); a partial last block counts."""
    links: list[str] = []
    parent = _CHAIN_ROOT
    for start in range(0, len(tokens), block):
        parent = hashlib.sha256(parent + tokens_to_bytes(tokens[start : start + block])).digest()
        links.append(parent.hex())
    return tuple(links)


# -- manifests ---------------------------------------------------------------------------------
def manifest_to_dict(manifest: ContextManifest) -> dict[str, Any]:
    data = asdict(manifest)
    data["segments"] = [[s.name, s.byte_len, s.byte_hash] for s in manifest.segments]
    return data


def manifest_from_dict(data: Mapping[str, Any]) -> ContextManifest:
    try:
        segments = tuple(ManifestSegment(str(n), int(length), str(h)) for n, length, h in data["segments"])
        return ContextManifest(
            model_digest=str(data["model_digest"]),
            tokenizer_digest=str(data["tokenizer_digest"]),
            runtime_digest=str(data["runtime_digest"]),
            template_digest=str(data["template_digest"]),
            add_bos=bool(data["add_bos"]),
            segments=segments,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotCorruptError(f"snapshot manifest is malformed: {exc!r}") from exc


# -- encoding ----------------------------------------------------------------------------------
def payload_parts(state: SessionState) -> tuple[bytes, bytes, bytes]:
    return tokens_to_bytes(state.tokens), state.prefix_text, state.kv


def build_header(workspace_id: str, state: SessionState, identity: SnapshotIdentity) -> SnapshotHeader:
    """The header for a state; hashes the payload (token ids, prefix text, KV) once."""
    if state.unfinished:  # its manifest is a target's: written, it would read back as a complete prefix
        raise InvalidInputError("an unfinished prefill is no state to write")
    parts = payload_parts(state)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    claimed = SnapshotIdentity.of_state(state, identity.kv_config)
    return SnapshotHeader(
        format_version=FORMAT_VERSION,
        workspace_id=workspace_id,
        created_at=time.time(),
        build_id=claimed.build_id,
        model_digest=claimed.model_digest,
        tokenizer_digest=claimed.tokenizer_digest,
        runtime_digest=claimed.runtime_digest,
        kv_config=dict(claimed.kv_config),
        manifest_digest=state.manifest.digest,
        manifest=manifest_to_dict(state.manifest),
        n_tokens=len(state.tokens),
        prefix_len=state.prefix_len,
        stable_len=state.stable_len,
        generated=state.generated,
        token_block=TOKEN_BLOCK,
        token_chain=token_chain(state.tokens),
        text_bytes=len(state.prefix_text),
        kv_bytes=len(state.kv),
        payload_bytes=sum(len(p) for p in parts),
        payload_sha256=digest.hexdigest(),
        approximate_from=state.approximate_from,
    )


def encode_header(header: SnapshotHeader) -> bytes:
    """MAGIC, length, header JSON and its sha256: everything that precedes the payload."""
    body = json.dumps(asdict(header), sort_keys=True, separators=(",", ":")).encode("utf-8")
    return MAGIC + _LEN.pack(len(body)) + body + hashlib.sha256(body).digest()


# -- decoding ----------------------------------------------------------------------------------
def parse_header(data: bytes | memoryview) -> tuple[SnapshotHeader, int]:
    """(header, payload offset) from the start of a snapshot; SnapshotCorruptError if it is damaged."""
    view = memoryview(data)
    if len(view) < len(MAGIC) + _LEN.size or bytes(view[: len(MAGIC)]) != MAGIC:
        raise SnapshotCorruptError("not a llamanode snapshot (bad magic or truncated header)")
    (length,) = _LEN.unpack_from(view, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    end = start + length
    if length > _MAX_HEADER or len(view) < end + _SHA:
        raise SnapshotCorruptError(f"snapshot header truncated ({len(view)} bytes, header needs {end + _SHA})")
    body = bytes(view[start:end])
    if hashlib.sha256(body).digest() != bytes(view[end : end + _SHA]):
        raise SnapshotCorruptError("snapshot header checksum mismatch")
    return _header_from_json(body), end + _SHA


def header_prefix_size(data: bytes | memoryview) -> int:
    """Bytes needed to parse the header, given at least the first 12 bytes."""
    if len(data) < len(MAGIC) + _LEN.size:
        return len(MAGIC) + _LEN.size
    length: int = _LEN.unpack_from(data, len(MAGIC))[0]
    return len(MAGIC) + _LEN.size + min(length, _MAX_HEADER) + _SHA


def _header_from_json(body: bytes) -> SnapshotHeader:
    try:
        raw = json.loads(body)
        raw["token_chain"] = tuple(raw["token_chain"])
        header = SnapshotHeader(**raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise SnapshotCorruptError(f"snapshot header is malformed: {exc!r}") from exc
    _check_header_shape(header)
    return header


def _check_header_shape(h: SnapshotHeader) -> None:
    counts = (h.n_tokens, h.prefix_len, h.stable_len, h.generated, h.text_bytes, h.kv_bytes, h.token_block)
    if not all(isinstance(x, int) and x >= 0 for x in counts) or h.token_block == 0:
        raise SnapshotCorruptError("snapshot header has invalid counts")
    if h.payload_bytes != 4 * h.n_tokens + h.text_bytes + h.kv_bytes:
        raise SnapshotCorruptError("snapshot header sizes do not add up")
    if max(h.prefix_len, h.stable_len) > h.n_tokens or h.prefix_len + h.generated > h.n_tokens:
        raise SnapshotCorruptError("snapshot header token counts are inconsistent")
    approx = h.approximate_from
    if approx is not None and not (isinstance(approx, int) and 0 <= approx < h.n_tokens and h.format_version >= 2):
        raise SnapshotCorruptError(f"snapshot header has an invalid approximate_from {approx!r}")


def read_snapshot(f: BinaryIO, expected: SnapshotIdentity | None) -> tuple[SnapshotHeader, SessionState]:
    """Verify a whole snapshot file (header checksum, identity, size, payload checksum, token chain,
    manifest) and rebuild its SessionState. Raises SnapshotCorruptError or SnapshotMismatchError."""
    header, offset = read_header(f)
    if expected is not None:
        header.check_identity(expected)
    size = os.fstat(f.fileno()).st_size
    if size != offset + header.payload_bytes:
        raise SnapshotCorruptError(f"snapshot is {size} bytes, its header says {offset + header.payload_bytes}")
    f.seek(offset)
    n_tok = 4 * header.n_tokens
    head = _read_exact(f, n_tok + header.text_bytes)
    digest = hashlib.sha256(head)
    kv = read_hashed(f, header.kv_bytes, digest)
    if digest.hexdigest() != header.payload_sha256:
        raise SnapshotCorruptError("snapshot payload checksum mismatch")
    tokens = tokens_from_bytes(head[:n_tok])
    if token_chain(tokens, header.token_block) != header.token_chain:
        raise SnapshotCorruptError("snapshot token chain does not match its token ids")
    manifest = manifest_from_dict(header.manifest)
    if manifest.digest != header.manifest_digest:
        raise SnapshotCorruptError("snapshot manifest digest does not match its manifest")
    state = SessionState(
        kv=kv,
        tokens=tokens,
        prefix_len=header.prefix_len,
        stable_len=header.stable_len,
        generated=header.generated,
        manifest=manifest,
        prefix_text=head[n_tok:],
        model_digest=header.model_digest,
        runtime_digest=header.runtime_digest,
        build_id=header.build_id,
        approximate_from=header.approximate_from,
    )
    return header, state


def read_header(f: BinaryIO) -> tuple[SnapshotHeader, int]:
    """(header, payload offset) read from the start of a snapshot file."""
    f.seek(0)
    start = f.read(len(MAGIC) + _LEN.size)
    rest = f.read(header_prefix_size(start) - len(start))
    return parse_header(start + rest)


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise SnapshotCorruptError(f"snapshot truncated: wanted {n} bytes, read {len(data)}")
    return data
