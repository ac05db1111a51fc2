"""The session-core benchmark's verdicts against its targets, its markdown tables and its plot."""

from __future__ import annotations

import math
from pathlib import Path

from .common import md_table, pyplot, ratio, stats, verdict
from .core_plan import TARGETS, CoreResults

__all__ = ["evaluate", "plot", "report"]


def evaluate(results: CoreResults) -> None:
    """Each target's measured value (ratio of medians), paired ratio and PASS/MISS, into results.targets."""
    w = results.warm["ttft_ms"]
    node, floor, llama = w["llamanode"]["median"], w["raw floor"]["median"], w["Llama"]["median"]
    pf = results.cold["prefill_tok_s"]
    dec = results.decode["tok_s"]
    unchanged = results.unchanged["per-file segments"]["hit_ms"]
    rows = {
        "warm TTFT vs floor": (ratio(node, floor), TARGETS["warm_ttft_vs_floor_max"], "<="),
        "prefill tok/s vs raw": (
            ratio(pf["llamanode"]["median"], pf["raw"]["median"]),
            TARGETS["prefill_vs_raw_min"],
            ">=",
        ),
        "decode tok/s vs raw": (
            ratio(dec["llamanode"]["median"], dec["raw"]["median"]),
            TARGETS["decode_vs_raw_min"],
            ">=",
        ),
        "unchanged prefix ms (100 KB)": (unchanged["median"], TARGETS["unchanged_prefix_ms_max"], "<="),
        "warm TTFT vs Llama": (ratio(node, llama), TARGETS["warm_ttft_vs_llama_max"], "<="),
    }

    pairs = _paired_ratios(results)
    results.targets = {
        k: {
            "value": v,
            "paired": pairs.get(k, math.nan),
            "target": t,
            "op": op,
            "verdict": verdict(v <= t if op == "<=" else v >= t),
        }
        for k, (v, t, op) in rows.items()
    }


def _paired_ratios(results: CoreResults) -> dict[str, float]:
    """Per target, the median of the per-repetition ratios (the runs were interleaved in pairs)."""

    def paired(a: list[float], b: list[float]) -> float:
        return stats([x / y for x, y in zip(a, b, strict=True)]).median

    samples_w, samples_d = results.warm["samples_ms"], results.decode["samples"]
    return {
        "warm TTFT vs floor": paired(samples_w["llamanode"], samples_w["raw floor"]),
        "prefill tok/s vs raw": paired(
            [n / x for n, x in results.cold["llamanode_prefill_samples"]],
            [n / x for n, x in results.cold["raw_prefill_samples"]],
        ),
        "decode tok/s vs raw": paired(samples_d["llamanode"], samples_d["raw"]),
        "warm TTFT vs Llama": paired(samples_w["llamanode"], samples_w["Llama"]),
    }


def report(results: CoreResults) -> str:
    """The markdown tables of a run (bench/out/core.md; `python -m bench.core --report` re-prints them)."""
    sections = (_intro, _sweep, _warm, _cold, _throughput, _unchanged, _curve, _contention, _targets)
    return "\n".join(part for section in sections for part in section(results)) + "\n"


def _intro(results: CoreResults) -> list[str]:
    m = results.machine
    cfg = results.plan["llamanode_config"]
    return [
        f"## llamanode session core ({results.plan['name']} run)",
        f"{m['date_utc']}; {m['nproc']} CPUs, {m['cpu']}; llama-cpp-python {m['llama_cpp_python']}; "
        f"load average at start {m['loadavg'][0]:.2f}. Absolute times are noisy; read the ratios.",
        f"Prompt: {results.prompt['prefix_tokens']}-token prefix ({results.prompt['prefix_bytes']} bytes, "
        f"{results.prompt['segments']} segments), {results.prompt['suffix_tokens']}-token suffixes. "
        f"llamanode: num_batch {cfg['num_batch']}, num_ubatch {cfg['num_ubatch']}, "
        f"flash_attn {cfg['flash_attn']}, {cfg['kv_type'] if 'kv_type' in cfg else cfg['kv_cache_type']} KV, "
        f"{cfg['threads']} threads (`Llama` the same).",
        "",
    ]


def _sweep(results: CoreResults) -> list[str]:
    rows = [
        [r["setting"], r["threads"], r["cold_prefill_tok_s"] if r["cold_prefill_tok_s"] else "-", r["warm_ttft_ms"],
         r["decode_tok_s"]]
        for r in results.sweep
    ]  # fmt: skip
    heads = ["n_batch/n_ubatch, flash attn", "threads", "cold prefill tok/s", "warm TTFT ms", "decode tok/s"]
    d = results.defaults
    return [
        "### Sweep (raw loop)",
        md_table(heads, rows),
        f"\nFastest warm turn: {d['fastest_warm']['setting']} t{d['fastest_warm']['threads']}; "
        f"fastest cold prefill: {d['fastest_cold']['setting']} t{d['fastest_cold']['threads']}; "
        f"fastest decode: {d['fastest_decode']['setting']} t{d['fastest_decode']['threads']}.",
    ]


def _warm(results: CoreResults) -> list[str]:
    w = results.warm["ttft_ms"]
    floor = w["raw floor"]["median"]
    pm = results.warm["llamanode_parts_ms"]
    return [
        f"\n### Warm turn (same prefix, new {results.warm['suffix_tokens']}-token suffix); "
        f"floor = {results.floor['setting']} t{results.floor['threads']}",
        md_table(
            ["system", "median ms", "p10 ms", "p90 ms", "x floor"],
            [[k, v["median"], v["p10"], v["p90"], ratio(v["median"], floor)] for k, v in w.items()],
        ),
        f"\nllamanode parts (median ms): ensure_prefix {pm['ensure_prefix']['median']:.2f}, "
        f"prefill_suffix {pm['prefill_suffix']['median']:.1f}, first token {pm['first_token']['median']:.2f}. "
        "Paired ratio vs floor (median of per-repetition ratios): "
        f"{results.warm['paired_ratio_vs_floor']['median']:.3f}.",
    ]


def _cold(results: CoreResults) -> list[str]:
    c = results.cold["ttft_s"]
    return [
        "\n### Cold turn (fresh context, prefix + suffix + first token)",
        md_table(
            ["system", "median s", "x llamanode"],
            [[k, v["median"], ratio(v["median"], c["llamanode"]["median"])] for k, v in c.items()],
        ),
    ]


def _throughput(results: CoreResults) -> list[str]:
    pf, sp, dec = results.cold["prefill_tok_s"], results.warm["suffix_prefill_tok_s"], results.decode["tok_s"]
    measures = [
        (f"cold prefill tok/s ({results.prompt['prefix_tokens']} tokens, whole ensure_prefix)", pf),
        (f"warm suffix prefill tok/s ({results.warm['suffix_tokens']} tokens)", sp),
        (f"decode tok/s ({results.decode['tokens']} tokens greedy)", dec),
    ]
    rows = [
        [label, x["llamanode"]["median"], x["raw"]["median"], ratio(x["llamanode"]["median"], x["raw"]["median"])]
        for label, x in measures
    ]
    return [
        "\n### Throughput, llamanode vs raw loop at llamanode's settings",
        md_table(["measure", "llamanode", "raw", "ratio"], rows),
    ]


def _unchanged(results: CoreResults) -> list[str]:
    u = results.unchanged
    rows = [
        [label, x["segments"], x["tokens"], x["hit_ms"]["median"], x["hit_ms"]["p99"],
         x["hit_with_prefix_build_ms"]["median"], x["hit_after_suffix_ms"]["median"]]
        for label, x in ((label, u[label]) for label in ("per-file segments", "one segment"))
    ]  # fmt: skip
    heads = ["prefix", "segments", "tokens", "median ms", "p99 ms", "with session.prefix() ms", "after a suffix ms"]
    return [
        f"\n### Unchanged prefix: ensure_prefix on the same {u['bytes']}-byte prefix (byte-hash path)",
        md_table(heads, rows),
    ]


def _curve(results: CoreResults) -> list[str]:
    cv = results.curve
    names = list(cv["median_ms"])
    return [
        f"\n### Warm TTFT against suffix length (prefix {cv['prefix_tokens']} tokens), median ms",
        md_table(
            ["suffix tokens", *names],
            [[n, *(cv["median_ms"][k][i] for k in names)] for i, n in enumerate(cv["lengths"])],
        ),
    ]


def _contention(results: CoreResults) -> list[str]:
    if not results.contention:
        return []
    by = {(r["competitor"], r["variant"]): r for r in results.contention}
    keys = ("cold_prefill_tok_s", "warm_ttft_ms", "decode_tok_s")
    rows = [
        [label, *(by.get((busy, label), {}).get(k, float("nan")) for busy in (False, True) for k in keys)]
        for label in dict.fromkeys(r["variant"] for r in results.contention)
    ]
    heads = ["threads", "alone: prefill tok/s", "warm ms", "decode tok/s"]
    heads += ["+1 busy process: prefill tok/s", "warm ms", "decode tok/s"]
    return [
        f"\n### Threads when another process wants a core (raw loop, {results.plan['contention_prefix']}-token "
        f"prefix, {results.plan['contention_suffix']}-token warm suffix)",
        md_table(heads, rows),
    ]


def _targets(results: CoreResults) -> list[str]:
    rows = [
        [k, v["value"], v.get("paired", math.nan), f"{v['op']} {v['target']}", v["verdict"]]
        for k, v in results.targets.items()
    ]
    heads = ["target", "measured (ratio of medians)", "median of paired ratios", "goal", "verdict"]
    return ["\n### Targets", md_table(heads, rows)]


def plot(results: CoreResults, path: Path) -> bool:
    """Render warm TTFT against suffix length; False (and a note) when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False

    cv = results.curve
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    styles = {"raw floor": ("k", "--", "s"), "llamanode": ("tab:blue", "-", "o"), "Llama": ("tab:orange", "-", "^")}
    for name, med in cv["median_ms"].items():
        color, ls, marker = styles.get(name, ("gray", ":", "x"))
        samples = cv["samples_ms"][name]
        lo = [min(samples[str(n)]) for n in cv["lengths"]]
        hi = [max(samples[str(n)]) for n in cv["lengths"]]
        ax.plot(cv["lengths"], med, color=color, linestyle=ls, marker=marker, label=name)
        ax.fill_between(cv["lengths"], lo, hi, color=color, alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(cv["lengths"], [str(n) for n in cv["lengths"]])
    ax.set_xlabel(f"suffix tokens (prefilled after a {cv['prefix_tokens']}-token resident prefix)")
    ax.set_ylabel("warm time to first token (ms)")
    m = results.machine
    threads = results.plan.get("llamanode_config", {}).get("threads", "?")
    ax.set_title(
        f"Warm turn, SmolLM2-135M Q4_1, {threads} thread(s) on {m['nproc']} CPUs ({m['date_utc'][:10]}); "
        "median, band = min..max",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
