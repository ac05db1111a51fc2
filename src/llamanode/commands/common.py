"""Options shared by subcommands."""

from __future__ import annotations

import argparse

from ..config import ROPE_SCALINGS, WEIGHT_REPACK_SETTINGS, Config

__all__ = ["add_model_options", "config_from_args"]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="GGUF file (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--ctx", type=int, default=Config.num_ctx, help="context size in tokens (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    parser.add_argument("--batch", type=int, default=Config.num_batch, help="prefill batch (default: %(default)s)")
    parser.add_argument("--flash-attn", action="store_true", help="use flash attention (slower warm turns on CPU)")
    parser.add_argument(
        "--kv-type", default="f16", choices=["f16", "q8_0", "q4_0"], help="KV cache type (quantized needs --flash-attn)"
    )
    parser.add_argument(
        "--weight-repack",
        default=Config.weight_repack,
        choices=WEIGHT_REPACK_SETTINGS,
        help="llama.cpp weight repacking: auto = on unless the CPU has AMX (llama.cpp#20824) (default: %(default)s)",
    )
    parser.add_argument(
        "--rope-scaling",
        default="auto",
        choices=ROPE_SCALINGS,
        help="RoPE beyond the model's trained window (auto: YaRN only when --ctx exceeds it; default: %(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        num_ctx=args.ctx,
        num_threads=args.threads,
        num_batch=args.batch,
        num_ubatch=min(Config.num_ubatch, args.batch),
        flash_attn=args.flash_attn,
        kv_cache_type=args.kv_type,
        weight_repack=args.weight_repack,
        rope_scaling=args.rope_scaling,
    )
