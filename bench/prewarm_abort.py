"""Interrupting a prewarm's chunk in flight: how long cancel() takes, and what the armed abort callback costs.

Two switches per case: the chunk size (Config.prewarm_batch) and whether the context's interrupts are armed
("armed": the code as it is; "unarmed": KVContext.arm_interrupts made a no-op, so a stop waits for the chunk
in flight, as before interrupts existed). Measured:
- stop latency: a prewarm of a ~1500-token prefix is cancelled at a different moment each repetition (so the
  chunk in flight is caught at different points); the time cancel() takes to return;
- throughput: the same prewarm left to complete, prefilled tokens / its elapsed time;
- the callback alone: how often llama.cpp calls it per chunk (graph nodes), and one chunk's prefill time at
  position 0 armed vs unarmed, alternated many times (whole prewarms vary by several % run to run here).
Cases interleaved (A, B, C, then C, B, A) against drift.

    .venv/bin/python -m bench.prewarm_abort --reps 3 --json bench/out/prewarm-abort.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import llamanode as ln

from .common import OUT_DIR, interleaved, log, machine_info, md_table, write_json
from .prewarm_chunks import source_text

PREFIX_TOKENS = 1500


def open_session(model: str | None, chunk: int, armed: bool, threads: int) -> ln.KVSession:
    config = ln.Config(num_ctx=2048, num_batch=512, num_ubatch=512, prewarm_batch=chunk, num_threads=threads)
    backend = ln.load_backend(model, config)
    context = backend.open_context(config)
    if not armed:
        context.arm_interrupts = lambda armed: None  # type: ignore[method-assign]
    return ln.KVSession(context, config, on_close=backend.close)


def stop_latency(session: ln.KVSession, text: str, rep: int) -> float:
    """Seconds cancel() takes, the prewarm caught 0.6 s + a rep-dependent offset after it started."""
    session.reset()
    handle = session.prewarm(session.prefix([("source", text)]))
    time.sleep(0.6 + (rep * 0.173) % 0.9)
    started = time.perf_counter()
    report = handle.cancel()
    latency = time.perf_counter() - started
    assert report.outcome == "cancelled", report
    return latency


def throughput(session: ln.KVSession, text: str) -> float:
    session.reset()
    report = session.prewarm(session.prefix([("source", text)])).wait(600)
    assert report.outcome == "completed", report
    return report.prefilled_tokens / report.elapsed_s


def callback_cost(model: str | None, chunk: int, threads: int, text: str, reps: int) -> dict[str, float]:
    """Callback calls per chunk, and the median seconds of one chunk's prefill armed and unarmed."""
    import ctypes

    if reps == 0:
        return {}

    from llamanode.backends.llamacpp.native import lib

    session = open_session(model, chunk, True, threads)
    context: Any = session._ctx  # the bench reaches into the llama.cpp context on purpose
    tokens = context.tokenize(text, False)[:chunk]
    calls = [0]

    def count(_data: object) -> bool:
        calls[0] += 1
        return False

    counter = lib().ggml_abort_callback(count)
    lib().llama_set_abort_callback(context._ctx, counter, ctypes.c_void_p())
    context.prefill(tokens, 0)
    lib().llama_set_abort_callback(context._ctx, lib().ggml_abort_callback(), ctypes.c_void_p())
    context.trim(0)

    def timed(armed: bool) -> float:
        context.arm_interrupts(armed)
        started = time.perf_counter()
        context.prefill(tokens, 0)
        elapsed = time.perf_counter() - started
        context.arm_interrupts(False)
        context.trim(0)
        return elapsed

    times = interleaved(reps, {"armed": lambda _rep: timed(True), "unarmed": lambda _rep: timed(False)})
    session.close()
    armed, unarmed = statistics.median(times["armed"]), statistics.median(times["unarmed"])
    return {"calls_per_chunk": calls[0], "armed_s": armed, "unarmed_s": unarmed, "ratio": armed / unarmed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--chunks", default="64,512", help="comma-separated prewarm_batch values")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--stop-reps", type=int, default=5)
    parser.add_argument("--callback-reps", type=int, default=15, help="alternations per chunk size (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None, help="GGUF path (default: the embedded model)")
    parser.add_argument("--json", type=Path, default=OUT_DIR / "prewarm-abort.json")
    args = parser.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]
    names = [(f"{c} {'armed' if armed else 'unarmed'}", c, armed) for c in chunks for armed in (True, False)]
    sessions = {name: open_session(args.model, c, armed, args.threads) for name, c, armed in names}
    text = source_text(next(iter(sessions.values())), PREFIX_TOKENS)
    rates = interleaved(
        args.reps,
        {name: (lambda _rep, s=sessions[name]: throughput(s, text)) for name, _, _ in names},
        lambda name, rep, value: log(f"throughput {name} rep {rep}: {value:.0f} tok/s"),
    )
    stops = interleaved(
        args.stop_reps,
        {name: (lambda rep, s=sessions[name]: stop_latency(s, text, rep)) for name, _, _ in names},
        lambda name, rep, value: log(f"stop {name} rep {rep}: {value * 1000:.1f} ms"),
    )
    for session in sessions.values():
        session.close()
    rows = []
    for name, c, _ in names:
        base = statistics.median(rates[f"{c} unarmed"])
        rows.append([
            name,
            " / ".join(f"{r:.0f}" for r in rates[name]),
            f"{statistics.median(rates[name]) / base:.3f}",
            f"{statistics.median(stops[name]) * 1000:.1f}",
            f"{max(stops[name]) * 1000:.1f}",
        ])  # fmt: skip
    headers = ["case", "prewarm tok/s (each rep)", "median vs unarmed", "stop median ms", "stop max ms"]
    print(md_table(headers, rows))
    costs = {c: callback_cost(args.model, c, args.threads, text, args.callback_reps) for c in chunks}
    if args.callback_reps:
        cost_rows = [[c, int(v["calls_per_chunk"]), f"{v['unarmed_s'] * 1000:.1f}", f"{v['armed_s'] * 1000:.1f}",
                      f"{v['ratio']:.4f}"] for c, v in costs.items()]  # fmt: skip
        print(md_table(["chunk", "callback calls", "unarmed ms", "armed ms", "armed / unarmed"], cost_rows))
    data = {"machine": machine_info(), "threads": args.threads, "rates": rates, "stops_s": stops, "callback": costs}
    write_json(args.json, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
