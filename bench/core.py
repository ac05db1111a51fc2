"""Session-core benchmark (issue 2): llamanode against the raw llama_decode floor and against `Llama`.

Everything runs side by side in one process, with repetitions interleaved (A, B, C, then C, B, A),
and is reported as medians and ratios: the machine is shared and noisy, absolute times are not.

    .venv/bin/python -m bench.core            # the full run (about 15 min on 2 quiet cores)
    .venv/bin/python -m bench.core --quick    # a smoke test: tiny prefix, 1 repetition

Phases:
  1. sweep   raw loop over n_batch/n_ubatch x flash attention x threads: cold prefill of the prefix,
             warm turn (suffix prefilled at the end of the prefix + first token), decode tok/s.
             The fastest warm setting is the floor.
  2. cold    llamanode vs `Llama` vs raw (llamanode's settings): first token of a fresh context.
  3. warm    llamanode vs raw floor vs raw at llamanode's settings vs `Llama`, a new suffix each turn.
  4. decode  greedy tokens/s, llamanode vs raw at the same settings.
  5. curve   warm time to first token against suffix length (the plot).
  6. prefix  unchanged-prefix ensure_prefix (byte-hash path) on a 100 KB prefix.

Writes bench/out/core.json and bench/out/core.md (tables), and the plot (docs/warm_ttft.png).
Plan and results: core_plan.py; phase 1 and the contention runs: core_sweep.py; phases 2-6: core_phases.py;
verdicts, tables and plot: core_report.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import llamanode
from llamanode import Config

from . import core_phases as phases
from .common import OUT_DIR, REPO, log, machine_info, write_json
from .core_plan import FULL, QUICK, Checkpoint, CorePlan, CoreResults, Prompt, Setup, Suffixes
from .core_report import evaluate, plot, report
from .core_sweep import contention, pick_floor, sweep
from .prompts import chatml_prefix, file_segments, fit_text
from .raw_loop import RawContext, RawModel, RawSetting


def prepare(plan: CorePlan, checkpoint: Checkpoint) -> Setup:
    """The model, llamanode's config and the prompt every phase uses; the plan and prompt go into the results."""
    results = CoreResults(plan={**asdict(plan), "settings": [s.label for s in plan.settings]}, machine=machine_info())
    model_path = str(llamanode.default_model_path())
    config = Config().replace(num_ctx=plan.n_ctx, num_threads=plan.num_threads)
    results.plan["llamanode_config"] = {**asdict(config), "threads": config.threads}
    raw_model = RawModel(model_path)
    tokenize = raw_model.tokenize
    prefix_text = chatml_prefix(tokenize, plan.prefix_tokens)
    prefix_ids = tokenize(prefix_text)
    suffixes = Suffixes(tokenize)
    probe = suffixes.new(plan.suffix_tokens)
    if tokenize(prefix_text + probe) != prefix_ids + tokenize(probe):
        raise RuntimeError("prefix and suffix do not tokenize independently; the comparison would be unfair")
    decode_seed = fit_text(
        tokenize,
        lambda b: f"Write a Python function that {b}<|im_end|>\n<|im_start|>assistant\n```python\ndef ",
        "parses a llamanode manifest file and returns its segments as a list of named tuples, "
        "with a docstring and type hints",
        min(plan.suffix_tokens, 40),
    )
    prompt = Prompt(prefix_text, prefix_ids, file_segments(prefix_text), decode_seed)
    results.prompt = {
        "prefix_tokens": len(prefix_ids),
        "prefix_bytes": len(prefix_text.encode()),
        "segments": len(prompt.segments),
        "suffix_tokens": plan.suffix_tokens,
        "example_suffix": probe,
        "decode_seed": decode_seed,
    }
    return Setup(plan, results, checkpoint, model_path, config, raw_model, prompt, suffixes)


def raw_contexts(setup: Setup, contexts: dict[RawSetting, RawContext]) -> tuple[RawSetting, int, RawSetting]:
    """The floor (setting, threads) and llamanode's own setting; every other swept context is closed."""
    floor_setting, floor_threads = pick_floor(setup.results)
    config = setup.config
    default_setting = RawSetting(config.num_batch, config.num_ubatch, config.flash_attn)
    if default_setting not in contexts:
        contexts[default_setting] = RawContext(setup.raw_model, default_setting, setup.plan.n_ctx, config.threads)
        contexts[default_setting].cold_prefill(setup.prompt.ids)
    for s in list(contexts):
        if s not in (floor_setting, default_setting):
            contexts.pop(s).close()
    log(f"floor: {floor_setting.label} t{floor_threads}; llamanode: {default_setting.label} t{config.threads}")
    return floor_setting, floor_threads, default_setting


def run(plan: CorePlan, checkpoint: Checkpoint | None = None) -> CoreResults:
    """Every phase in order (see the module docstring); partial results go to the checkpoint after each."""
    setup = prepare(plan, checkpoint or Checkpoint())
    n_prefix, n_settings = len(setup.prompt.ids), len(plan.settings)
    log(f"plan {plan.name}: prefix {n_prefix} tokens, {n_settings} settings x threads {plan.threads}")
    contexts = sweep(setup)
    floor_setting, floor_threads, default_setting = raw_contexts(setup, contexts)
    with phases.rig(setup, contexts[default_setting], contexts[floor_setting], floor_threads) as rig:
        for phase in (phases.cold, phases.warm, phases.decode, phases.curve):
            phase(rig)
    for ctx in contexts.values():
        ctx.close()
    phases.unchanged_prefix(setup)
    setup.raw_model.close()
    contention(setup)
    evaluate(setup.results)
    setup.results.finish()
    return setup.results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="llamanode session-core benchmark (issue 2)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (short prefix, 1 repetition), < 60 s")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default bench/out/core[-quick].json)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default docs/warm_ttft.png; quick: bench/out/)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="llamanode's (and Llama's) threads; the sweep also tries all cores and 1 (default: all cores)",
    )
    parser.add_argument("--replot", type=Path, default=None, help="only re-render the plot from a results JSON")
    parser.add_argument("--report", type=Path, default=None, help="only re-print the tables from a results JSON")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.threads:
        others = tuple(t for t in (os.cpu_count() or 1, 1) if t != args.threads)
        plan = dataclasses.replace(plan, num_threads=args.threads, threads=(args.threads, *others))
    suffix = "-quick" if args.quick else ""
    out = args.out or OUT_DIR / f"core{suffix}.json"
    png = args.plot or (OUT_DIR / "warm_ttft-quick.png" if args.quick else REPO / "docs" / "warm_ttft.png")
    if args.report is not None:
        saved = CoreResults(**json.loads(args.report.read_text()))
        evaluate(saved)
        print(report(saved))
        return 0
    if args.replot is not None:
        plot(CoreResults(**json.loads(args.replot.read_text())), png)
        print(png)
        return 0
    results = run(plan, Checkpoint(out.with_name(out.stem + ".partial.json")))
    write_json(out, asdict(results))
    text = report(results)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    log(f"wrote {out} and {out.with_suffix('.md')}")
    if not args.no_plot and plot(results, png):
        log(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
