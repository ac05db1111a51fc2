"""Manifests: digests, segments, token hashes (pure logic)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace

import pytest

from fakes import fake_session
from llamanode import ContextManifest, ManifestSegment, build_manifest, hash_token_ids
from llamanode.manifest import IDENTITY_FIELDS, RENDERING_FIELDS, byte_hash, join_segments

BASE = ContextManifest(model_digest="m", tokenizer_digest="t", runtime_digest="r", template_digest="p", add_bos=False)


def test_segments_measure_utf8_bytes() -> None:
    seg = ManifestSegment.of("file", "é🙂")
    assert seg.byte_len == 6
    assert seg.byte_hash == hashlib.sha256("é🙂".encode()).hexdigest() == byte_hash("é🙂") == byte_hash("é🙂".encode())


def test_join_segments_keeps_order_and_text() -> None:
    manifest, text = join_segments(BASE, [("a", "one "), ("b", ""), ("c", "three")])
    assert text == "one three"
    assert [s.name for s in manifest.segments] == ["a", "b", "c"]
    assert [s.byte_len for s in manifest.segments] == [4, 0, 5]
    assert build_manifest(BASE, [("a", "one ")])[0].segments == manifest.segments[:1]


def test_digest_covers_identity_and_rendering_but_not_segments() -> None:
    with_segments = build_manifest(BASE, [("a", "x")])[0]
    assert with_segments.digest == BASE.digest
    assert with_segments != BASE
    assert replace(BASE).digest == BASE.digest
    digests = {BASE.digest}
    for name in IDENTITY_FIELDS + RENDERING_FIELDS:
        value = not getattr(BASE, name) if name == "add_bos" else "other"
        changed = replace(BASE, **{name: value})
        assert changed.first_difference(BASE) == name
        digests.add(changed.digest)
    assert len(digests) == 1 + len(IDENTITY_FIELDS + RENDERING_FIELDS)
    assert BASE.first_difference(with_segments) is None


def test_first_difference_names_the_first_field_in_order() -> None:
    both = replace(BASE, runtime_digest="x", add_bos=True)
    assert BASE.first_difference(both) == "runtime_digest"


def test_token_hash_is_sha256_of_little_endian_int32() -> None:
    ids = [1, 2, 49151, 0]
    assert hash_token_ids(ids) == hashlib.sha256(struct.pack("<4i", *ids)).hexdigest()
    assert hash_token_ids(ids) != hash_token_ids(ids[::-1])
    assert hash_token_ids(()) == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("add_bos", [False, True])
def test_session_builds_prefix_and_suffix_under_its_own_identity(add_bos: bool) -> None:
    session, ctx = fake_session(add_bos=add_bos)
    prefix = session.prefix((("sys", "a"), ("file", "bc")))
    assert prefix.text == "abc"
    assert prefix.manifest.add_bos is add_bos
    assert prefix.manifest.model_digest == ctx.identity.model_digest
    assert [s.name for s in prefix.manifest.segments] == ["sys", "file"]
    suffix = session.suffix("q")
    assert suffix.manifest.segments == () and suffix.manifest.digest == prefix.manifest.digest
    assert session.manifest() == suffix.manifest
