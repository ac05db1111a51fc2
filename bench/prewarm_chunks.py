"""Prefill speed by chunk size: what a prewarm's smaller chunks (Config.prewarm_batch) cost, if anything.

A prewarm stops only between chunks, so whoever stops it waits for the chunk in flight; smaller chunks
shorten that wait. Each case cold-prefills the same ~4k-token prefix (llamanode's own source) through a
session whose batch is that chunk size, cases interleaved (A, B, C, then C, B, A) against drift.

    .venv/bin/python -m bench.prewarm_chunks --chunks 512,128,64,32 --reps 2 --json bench/out/prewarm-chunks.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import llamanode as ln

from .common import OUT_DIR, interleaved, log, machine_info, md_table, write_json

PREFIX_TOKENS = 4096


def source_text(session: ln.KVSession, tokens: int) -> str:
    """llamanode's source files, cut to at most `tokens` tokens."""
    text = "".join(path.read_text(encoding="utf-8") for path in sorted(Path(ln.__file__).parent.glob("*.py")))
    while (n := len(session.tokenize(text))) > tokens:
        text = text[: int(len(text) * tokens / n)]
    return text


def cold_prefill(model: str | None, chunk: int, threads: int, text: str) -> float:
    """Tokens per second of one cold ensure_prefix with batches of `chunk` tokens."""
    config = ln.Config(num_ctx=8192, num_batch=chunk, num_ubatch=chunk, num_threads=threads)
    with ln.open_session(model, config) as session:
        prefix = session.prefix([("source", text)])
        started = time.perf_counter()
        status = session.ensure_prefix(prefix)
        return status.prefilled_tokens / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--chunks", default="512,128,64,32", help="comma-separated chunk sizes")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None, help="GGUF path (default: the embedded model)")
    parser.add_argument("--json", type=Path, default=OUT_DIR / "prewarm-chunks.json")
    args = parser.parse_args()
    with ln.open_session(args.model, ln.Config(num_ctx=8192)) as probe:
        text = source_text(probe, PREFIX_TOKENS)
    chunks = [int(c) for c in args.chunks.split(",")]
    cases = {f"{c}": (lambda _rep, c=c: cold_prefill(args.model, c, args.threads, text)) for c in chunks}
    rates = interleaved(args.reps, cases, lambda name, rep, value: log(f"chunk {name} rep {rep}: {value:.0f} tok/s"))
    base = statistics.median(rates[str(chunks[0])])
    rows = [[c, " / ".join(f"{r:.0f}" for r in rates[str(c)]), f"{statistics.median(rates[str(c)]) / base:.3f}"]
            for c in chunks]  # fmt: skip
    print(md_table(["chunk tokens", "cold prefill tok/s (each rep)", f"median vs {chunks[0]}"], rows))
    write_json(args.json, {"machine": machine_info(), "threads": args.threads, "rates": rates})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
