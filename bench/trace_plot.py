"""Cumulative time to first token over a trace's turns, one curve per strategy, from bench.trace results.

Several results files of the same trace are drawn together (a strategy found in more than one keeps its
first run); `Llama`'s curve is the reference the targets are ratios of.

    .venv/bin/python -m bench.trace_plot bench/out/trace-ws-replay.json bench/out/trace-ws-replay2.json \\
        --out docs/trace_ttft.png
"""

from __future__ import annotations

import argparse
import json
from itertools import accumulate
from pathlib import Path
from typing import Any

from .common import pyplot

STYLES = {"llama": ("black", "--"), "llama-server": ("gray", "--"), "llama-server-reuse64": ("gray", ":")}


def curves(paths: list[Path]) -> tuple[list[tuple[str, str, list[float]]], dict[str, Any]]:
    """(strategy, label, cumulative TTFT in s after each turn) per strategy; and the first file's machine facts.
    With several files each label names its run."""
    out: list[tuple[str, str, list[float]]] = []
    machine: dict[str, Any] = {}
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        machine = machine or data.get("machine", {})
        by_strategy: dict[str, dict[int, float]] = {}
        for row in data["turns"]:
            by_strategy.setdefault(row["strategy"], {})[row["turn"]] = row["ttft_s"]
        drawn = {name for name, _, _ in out}
        for name, turns in by_strategy.items():
            if name not in drawn:
                label = f"{name} ({path.stem})" if len(paths) > 1 else name
                out.append((name, label, list(accumulate(turns[i] for i in sorted(turns)))))
    return out, machine


def plot(paths: list[Path], png: Path) -> bool:
    """Write the figure; False (and a note) when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False
    series, machine = curves(paths)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for name, label, values in sorted(series, key=lambda item: -item[2][-1]):
        color, style = STYLES.get(name, (None, "-"))
        turns = range(1, len(values) + 1)
        ax.plot(turns, values, color=color, linestyle=style, marker="o", markersize=3, label=label)
    ax.set_xlabel("turn")
    ax.set_ylabel("cumulative time to first token (s)")
    ax.set_title(
        f"Git-history trace, SmolLM2-135M Q4_1, {machine.get('nproc', '?')} CPUs ({machine.get('date_utc', '')[:10]})",
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("results", nargs="+", type=Path, help="bench.trace --json files of one trace")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    if plot(args.results, args.out):
        print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
