"""`llamanode info`: model, build, capabilities."""

from __future__ import annotations

import argparse
import json
from contextlib import closing

from .. import __version__
from ..registry import embed_available, load_backend, session_available
from ..session import default_model_path
from .common import add_model_options, config_from_args

CAPABILITIES = ["prefix-reuse", "suffix-prefill", "streaming", "grammar", "json-schema", "embeddings", "state-export"]


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    facts: dict[str, object] = {
        "llamanode": __version__,
        "session_backend": session_available(),
        "embeddings": embed_available(),
        "model_path": str(args.model or default_model_path()),
    }
    if session_available():
        from ..backends.llamacpp.cpu import CpuFeatures, weight_repack_for
        from ..backends.llamacpp.native import system_info

        repack = weight_repack_for(config.weight_repack)
        with closing(load_backend(args.model, config)) as backend:
            ident = backend.identity(config)
            facts.update(
                model=ident.description,
                model_digest=ident.model_digest,
                build=ident.build_id,
                num_ctx=ident.n_ctx,
                rope_scaling=ident.rope.describe(),
                add_bos=ident.add_bos,
                chat_template="yes" if ident.chat_template else "no",
                config=config.kv_shaping() | {"num_batch": config.num_batch, "threads": config.threads},
                cpu_features=" ".join(CpuFeatures.parse(system_info()).flags),
                weight_repack=f"{repack.label} ({repack.reason})",
                capabilities=CAPABILITIES,
            )
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        for key, value in facts.items():
            print(f"{key:>15}: {value}")
    return 0
