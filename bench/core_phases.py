"""The session-core benchmark's phases 2-6: llamanode against the raw loop and `Llama`, one function each.

Every phase takes the Rig (the systems under test, side by side) or the Setup, runs its cases interleaved,
and writes its own part of the results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import llamanode
from llamanode import Config, DecodeConfig, KVSession, PrefixInput
from llamanode.kvsession import common_prefix_len

from .common import SessionTurn, interleaved, llama_turn, log, now, open_llama, session_turn, stats
from .core_plan import Setup
from .prompts import SYSTEM_INTRO, chatml_prefix, file_segments, source_text
from .raw_loop import RawContext

__all__ = ["Rig", "cold", "curve", "decode", "rig", "unchanged_prefix", "warm"]


@dataclass(frozen=True)
class Rig:
    """The systems under test: raw loop at llamanode's settings and at the floor's, llamanode, `Llama`."""

    setup: Setup
    raw_default: RawContext
    raw_floor: RawContext
    floor_threads: int
    node: KVSession
    llm: Any  # llama_cpp.Llama

    @property
    def threads(self) -> int:
        return self.setup.config.threads

    @property
    def same_as_floor(self) -> bool:
        return self.raw_floor is self.raw_default and self.floor_threads == self.threads


@contextmanager
def rig(setup: Setup, raw_default: RawContext, raw_floor: RawContext, floor_threads: int) -> Iterator[Rig]:
    """llamanode and `Llama` opened with the same settings next to the raw contexts; closed on exit."""
    llm = open_llama(setup.model_path, setup.config)
    node = llamanode.open_session(setup.model_path, setup.config)
    try:
        yield Rig(setup, raw_default, raw_floor, floor_threads, node, llm)
    finally:
        node.close()
        llm.close()


def cold(r: Rig) -> None:
    """Phase 2: first token of a prefix nothing can reuse (it shares only `<|im_start|>system\\n`).

    Every system keeps its warmed-up context; the last cold prefix is the warm phases' prefix.
    """
    plan, tokenize, n_prefix = r.setup.plan, r.setup.tokenize, len(r.setup.prompt.ids)
    prefixes = [
        chatml_prefix(tokenize, n_prefix, intro=f"[take {k}] {SYSTEM_INTRO}") for k in range(1, plan.cold_reps)
    ] + [r.setup.prompt.text]
    suffixes = r.setup.suffixes.batch(plan.suffix_tokens, plan.cold_reps)
    resident = _warm_up(r, suffixes[0])
    node_prefill: list[tuple[int, float]] = []
    raw_prefill: list[tuple[int, float]] = []

    def node_cold(rep: int) -> float:
        turn = session_turn(r.node, file_segments(prefixes[rep]), suffixes[rep])
        assert not turn.byte_hash_hit and turn.reused < 16, turn  # only the ChatML header (and "[") is shared
        node_prefill.append((turn.prefilled, turn.ensure_s))
        log(f"cold llamanode {turn.ttft:.2f} s (reused {turn.reused} tokens)")
        return turn.ttft

    def llama_cold(rep: int) -> float:
        secs = llama_turn(r.llm, prefixes[rep] + suffixes[rep])
        log(f"cold Llama {secs:.2f} s")
        return secs

    def raw_cold(rep: int) -> float:
        nonlocal resident
        ids = tokenize(prefixes[rep])
        r.raw_default.set_threads(r.threads)
        keep = common_prefix_len(resident, ids)
        t0 = now()
        r.raw_default.trim(keep)
        r.raw_default.prefill(ids[keep:], keep)
        secs = now() - t0
        resident = ids
        raw_prefill.append((len(ids) - keep, secs))
        ttft, _, _ = r.raw_default.warm_turn(tokenize(suffixes[rep]), len(ids))
        log(f"cold raw {secs + ttft:.2f} s")
        return secs + ttft

    samples = interleaved(plan.cold_reps, {"llamanode": node_cold, "Llama": llama_cold, "raw": raw_cold})
    r.setup.done("cold")
    r.setup.results.cold = {
        "ttft_s": {k: stats(v).as_dict() for k, v in samples.items()},
        "samples_s": samples,
        "prefill_tok_s": {
            "llamanode": stats([n / x for n, x in node_prefill]).as_dict(),
            "raw": stats([n / x for n, x in raw_prefill]).as_dict(),
        },
        "llamanode_prefill_samples": node_prefill,
        "raw_prefill_samples": raw_prefill,
    }


def _warm_up(r: Rig, suffix: str) -> list[int]:
    """Untimed turn on another short prefix: first decodes settle buffers, and every system then starts
    the cold phase from the same unrelated state. Returns the raw context's resident tokens."""
    tokenize = r.setup.tokenize
    text = chatml_prefix(tokenize, min(512, len(r.setup.prompt.ids)), intro="[warm-up] ")
    session_turn(r.node, file_segments(text), suffix)
    llama_turn(r.llm, text + suffix)
    resident = tokenize(text)
    r.raw_default.set_threads(r.threads)
    r.raw_default.clear()
    r.raw_default.prefill(resident, 0)
    return resident


def warm(r: Rig) -> None:
    """Phase 3: the same prefix, a new suffix each turn; llamanode vs the floor, raw at its settings, `Llama`."""
    plan, prompt = r.setup.plan, r.setup.prompt
    n_prefix = len(prompt.ids)
    texts = r.setup.suffixes.batch(plan.suffix_tokens, plan.warm_reps)
    ids = [r.setup.tokenize(s) for s in texts]
    turns: list[SessionTurn] = []

    def node_warm(rep: int) -> float:
        turn = session_turn(r.node, prompt.segments, texts[rep])
        assert turn.byte_hash_hit and turn.reused == n_prefix, turn
        turns.append(turn)
        return turn.ttft

    cases: dict[str, Callable[[int], float]] = {"raw floor": _raw_turn(r.raw_floor, r.floor_threads, ids, n_prefix)}
    if not r.same_as_floor:
        cases["raw, llamanode settings"] = _raw_turn(r.raw_default, r.threads, ids, n_prefix)
    cases |= {"llamanode": node_warm, "Llama": _llama_turn(r.llm, prompt.text, texts)}
    samples = interleaved(plan.warm_reps, cases)
    if r.same_as_floor:
        samples["raw, llamanode settings"] = samples["raw floor"]
    log("warm: " + ", ".join(f"{k} {stats(v).median * 1e3:.0f} ms" for k, v in samples.items()))
    r.setup.done("warm")
    r.setup.results.warm = _warm_results(plan.suffix_tokens, samples, turns)


def _warm_results(suffix_tokens: int, samples: dict[str, list[float]], turns: list[SessionTurn]) -> dict[str, Any]:
    paired = [a / b for a, b in zip(samples["llamanode"], samples["raw floor"], strict=True)]
    paired_llama = [a / b for a, b in zip(samples["llamanode"], samples["Llama"], strict=True)]
    return {
        "suffix_tokens": suffix_tokens,
        "ttft_ms": {k: stats([x * 1e3 for x in v]).as_dict() for k, v in samples.items()},
        "samples_ms": {k: [x * 1e3 for x in v] for k, v in samples.items()},
        "llamanode_parts_ms": {
            "ensure_prefix": stats([t.ensure_s * 1e3 for t in turns]).as_dict(),
            "prefill_suffix": stats([t.suffix_s * 1e3 for t in turns]).as_dict(),
            "first_token": stats([t.first_s * 1e3 for t in turns]).as_dict(),
        },
        "paired_ratio_vs_floor": stats(paired).as_dict(),
        "paired_ratio_vs_llama": stats(paired_llama).as_dict(),
        "suffix_prefill_tok_s": {
            "llamanode": stats([suffix_tokens / t.suffix_s for t in turns]).as_dict(),
            "raw": stats([suffix_tokens / x for x in samples["raw, llamanode settings"]]).as_dict(),
        },
    }


def decode(r: Rig) -> None:
    """Phase 4: greedy tokens/s after the same seed, llamanode vs raw at the same settings."""
    plan, prompt, raw = r.setup.plan, r.setup.prompt, r.raw_default
    n_prefix = len(prompt.ids)
    seed_ids = r.setup.tokenize(prompt.decode_seed)
    node_meta: list[dict[str, Any]] = []
    raw_eog: list[int] = []
    raw_tokens: list[list[int]] = []

    def node_decode(rep: int) -> float:
        r.node.ensure_prefix(r.node.prefix(prompt.segments))
        r.node.prefill_suffix(r.node.suffix(prompt.decode_seed))
        report = None
        produced: list[int] = []
        for chunk in r.node.decode(DecodeConfig(max_tokens=plan.decode_tokens)):
            report = chunk.report or report
            produced.extend(chunk.token_ids)
        assert report is not None
        same = [produced == t[: len(produced)] for t in raw_tokens]
        node_meta.append({"generated": report.generated_tokens, "stop_reason": report.stop_reason,
                          "same_tokens_as_raw": same})  # fmt: skip
        return report.tokens_per_s

    def raw_decode(rep: int) -> float:
        raw.set_threads(r.threads)
        raw.trim(n_prefix)
        raw.prefill(seed_ids, n_prefix)
        tps, toks = raw.decode(plan.decode_tokens, n_prefix + len(seed_ids))
        raw_eog.append(next((i for i, t in enumerate(toks) if raw.model.is_eog(t)), -1))
        raw_tokens.append(toks)
        return tps

    dec = interleaved(plan.decode_reps, {"llamanode": node_decode, "raw": raw_decode})
    log("decode: " + ", ".join(f"{k} {stats(v).median:.1f} tok/s" for k, v in dec.items()))
    r.setup.done("decode")
    r.setup.results.decode = {
        "tokens": plan.decode_tokens,
        "tok_s": {k: stats(v).as_dict() for k, v in dec.items()},
        "samples": dec,
        "llamanode_reports": node_meta,
        "raw_first_eog_index": raw_eog,
    }


def curve(r: Rig) -> None:
    """Phase 5: warm time to first token against suffix length (the plot)."""
    plan, prompt = r.setup.plan, r.setup.prompt
    n_prefix = len(prompt.ids)
    ms: dict[str, dict[int, list[float]]] = {}
    for n in plan.curve_lengths:
        texts = r.setup.suffixes.batch(n, plan.curve_reps)
        ids = [r.setup.tokenize(t) for t in texts]
        cases = {
            "raw floor": _raw_turn(r.raw_floor, r.floor_threads, ids, n_prefix),
            "llamanode": _node_turn(r.node, prompt.segments, texts),
            "Llama": _llama_turn(r.llm, prompt.text, texts),
        }
        for k, v in interleaved(plan.curve_reps, cases).items():
            ms.setdefault(k, {})[n] = [x * 1e3 for x in v]
        log(f"curve {n}: " + ", ".join(f"{k} {stats(v[n]).median:.0f} ms" for k, v in ms.items()))
    r.setup.done("curve")
    r.setup.results.curve = {
        "prefix_tokens": n_prefix,
        "lengths": list(plan.curve_lengths),
        "median_ms": {k: [stats(v[n]).median for n in plan.curve_lengths] for k, v in ms.items()},
        "samples_ms": {k: {str(n): v[n] for n in plan.curve_lengths} for k, v in ms.items()},
    }


def _raw_turn(ctx: RawContext, threads: int, ids: list[list[int]], at: int) -> Callable[[int], float]:
    def run(rep: int) -> float:
        ctx.set_threads(threads)
        return ctx.warm_turn(ids[rep], at)[0]

    return run


def _node_turn(session: KVSession, segments: Sequence[tuple[str, str]], texts: list[str]) -> Callable[[int], float]:
    return lambda rep: session_turn(session, segments, texts[rep]).ttft


def _llama_turn(llm: Any, prefix_text: str, texts: list[str]) -> Callable[[int], float]:
    return lambda rep: llama_turn(llm, prefix_text + texts[rep])


class _SkipKV:
    """Wraps a real LlamaCppContext but skips llama_decode: for timing ensure_prefix's byte-hash path on a
    prefix whose real prefill would take minutes. Tokenization, offsets, hashing and seq_rm stay real."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.identity = inner.identity

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def prefill(self, tokens: Sequence[int], start: int) -> None:
        return None

    def step(self, token: int, position: int) -> None:
        return None


def unchanged_prefix(setup: Setup) -> None:
    """Phase 6: ensure_prefix with the same text again: the byte-hash path, on a 100 KB prefix."""
    plan = setup.plan
    text = _big_prefix(plan.big_prefix_bytes)
    out: dict[str, Any] = {"bytes": len(text.encode()), "num_ctx": plan.big_num_ctx, "kv": "prefill skipped (_SkipKV)"}
    with _skip_kv_session(setup.model_path, Config(num_ctx=plan.big_num_ctx)) as session:
        for label, segments in (("per-file segments", file_segments(text)), ("one segment", [("prompt", text)])):
            runs = out[label] = _unchanged_runs(session, segments, plan.big_reps, plan.big_trim_reps)
            log(f"unchanged prefix ({label}, {runs['tokens']} tokens): median {runs['hit_ms']['median']:.3f} ms")
    setup.done("unchanged")
    setup.results.unchanged = out


def _big_prefix(n_bytes: int) -> str:
    body = source_text()
    while len(body.encode()) < n_bytes:
        body += body

    def make(b: str) -> str:
        intro = "You are a coding assistant. The repository follows.\n\n"
        return f"<|im_start|>system\n{intro}{b}<|im_end|>\n<|im_start|>user\n"

    frame = len(make("").encode())
    return make(body.encode()[: n_bytes - frame].decode("utf-8", "ignore"))


def _skip_kv_session(model_path: str, config: Config) -> KVSession:
    from llamanode.backends.llamacpp.context import LlamaCppContext
    from llamanode.backends.llamacpp.model import acquire_model, release_model

    model = acquire_model(model_path)
    try:
        inner = LlamaCppContext(model, config)  # owns the reference from here: close() releases it
    except BaseException:
        release_model(model)
        raise
    return KVSession(_SkipKV(inner), config)


def _unchanged_runs(session: KVSession, segments: list[tuple[str, str]], reps: int, trim_reps: int) -> dict[str, Any]:
    """The first ensure_prefix, then repeated hits: the same PrefixInput, a rebuilt one, and after a suffix."""
    prefix: PrefixInput = session.prefix(segments)
    t0 = now()
    status = session.ensure_prefix(prefix)
    first_s = now() - t0
    hits = [_timed_hit(session, lambda: prefix) for _ in range(reps)]
    rebuilt = [_timed_hit(session, lambda: session.prefix(segments)) for _ in range(reps)]
    trimmed: list[float] = []
    for _ in range(trim_reps):
        session.prefill_suffix(session.suffix("Explain the manifest module, briefly.<|im_end|>\n"))
        trimmed.append(_timed_hit(session, lambda: prefix, dropped=True))
    return {
        "segments": len(segments),
        "tokens": status.prefix_tokens,
        "first_ensure_s": first_s,
        "hit_ms": stats(hits).as_dict(),
        "hit_with_prefix_build_ms": stats(rebuilt).as_dict(),
        "hit_after_suffix_ms": stats(trimmed).as_dict(),
    }


def _timed_hit(session: KVSession, build: Callable[[], PrefixInput], dropped: bool = False) -> float:
    """ms of one ensure_prefix (building its PrefixInput included) that must take the byte-hash path."""
    t0 = now()
    st = session.ensure_prefix(build())
    ms = (now() - t0) * 1e3
    assert st.byte_hash_hit and (st.dropped_tokens > 0 or not dropped)
    return ms
