"""Model start on a multi-GB file: the weights' sha256 computed (cold) vs remembered across processes.

The default GGUF is copied into a temporary file and padded with random bytes to --size-gb (llama.cpp
reads only the tensors the header names, so the padding is never loaded; the digest covers it all).
Every measurement runs in a fresh process, so nothing is remembered in memory:

- digest, page cache dropped: `file_digest` with an empty digest cache, the file evicted first
  (posix_fadvise DONTNEED), so the hash reads from the disk;
- digest, page cache warm: the same with the file in the page cache (the best a full hash can do);
- digest, remembered: the digest cache holds the file's entry;
- open_session cold / remembered: model load + digests + context, with the digest cache empty or filled.

Run: .venv/bin/python -m bench.startup [--size-gb 4 --reps 3 --dir /var/tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import OUT_DIR, interleaved, machine_info, md_table, stats, write_json

# One measurement in a fresh process: prints {"seconds": ...}.
_CHILD = """
import json, os, sys, time
from pathlib import Path
what, path, cache = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
if sys.argv[4] == "drop":
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
os.environ["LLAMANODE_CACHE_DIR"] = str(cache)
import llamanode  # imported before the clock starts: the figure is the start of a model, not of Python
from llamanode.digest_cache import file_digest
started = time.perf_counter()
if what == "digest":
    file_digest(path)
else:
    with llamanode.open_session(path, llamanode.Config(num_ctx=256, num_threads=1)):
        pass
print(json.dumps({"seconds": time.perf_counter() - started}))
"""

CASES = {  # name -> (what, remembered, page cache)
    "digest, page cache dropped": ("digest", False, "drop"),
    "digest, page cache warm": ("digest", False, "keep"),
    "digest, remembered": ("digest", True, "drop"),
    "open_session, cold digest": ("open", False, "drop"),
    "open_session, remembered digest": ("open", True, "drop"),
}


def padded_model(model: Path, size: int, directory: Path) -> Path:
    """A copy of model padded with random bytes to size (a 64 MB random block repeated)."""
    path = directory / f"padded-{size >> 30}g.gguf"
    shutil.copyfile(model, path)
    block = os.urandom(64 << 20)
    with path.open("ab") as f:
        while f.tell() < size:
            f.write(block[: min(len(block), size - f.tell())])
        f.flush()
        os.fsync(f.fileno())
    return path


def measure(what: str, path: Path, cache: Path, remembered: bool, page_cache: str) -> float:
    if not remembered:
        shutil.rmtree(cache, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, what, str(path), str(cache), page_cache],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=4.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the padded file goes")
    parser.add_argument("--model", type=Path, default=None, help="GGUF to pad (default: the embedded model)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "startup.json")
    args = parser.parse_args()

    import llamanode

    model = args.model or llamanode.default_model_path()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="llamanode-startup-") as tmp:
        work = Path(tmp)
        path = padded_model(model, int(args.size_gb * (1 << 30)), work)
        cache = work / "cache"
        measure("digest", path, cache, False, "keep")  # fills the cache for the first "remembered" case
        cases = {
            name: (lambda rep, w=what, r=rem, p=pc: measure(w, path, cache, r, p))
            for name, (what, rem, pc) in CASES.items()
        }
        results = interleaved(args.reps, cases)
        size = path.stat().st_size
    rows: list[list[Any]] = []
    for name, samples in results.items():
        s = stats(samples)
        rows.append([name, s.median * 1000, s.min * 1000, s.max * 1000])
    title = f"# Model start on a {size / (1 << 30):.2f} GiB file ({args.reps} reps, a fresh process each)"
    print(title, "", md_table(["case", "median ms", "min ms", "max ms"], rows), sep="\n")
    write_json(
        args.out,
        {
            "machine": machine_info(),
            "file_bytes": size,
            "reps": args.reps,
            "seconds": {name: stats(samples).as_dict() for name, samples in results.items()},
        },
    )


if __name__ == "__main__":
    main()
