#!/usr/bin/env bash
# Build llama.cpp's own llama-server from the llama-cpp-python 0.3.36 sdist's vendor/llama.cpp,
# so bench/server.py compares llamanode against the very llama.cpp revision it runs on.
#
#   bench/build_llama_server.sh            # -> ~/.cache/llamanode/llama-server/bin/llama-server
#
# About 5.5 minutes on 2 cores. Build outputs live in the cache directory and are never committed.
#
# The build is native (like the llama-cpp-python wheel), so on an AMX CPU it carries the AMX kernel
# that crashes on long prefills (llama.cpp#20824). Whoever launches it must pass llamanode's
# weight-repack choice: bench/server.py adds --no-repack when llamanode turns repacking off.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${LLAMANODE_CACHE:-$HOME/.cache/llamanode}"
OUT="$CACHE/llama-server"
SRC="$CACHE/src"
PIP="${PIP:-$(dirname "$0")/../.venv/bin/pip}"
[ -x "$PIP" ] || PIP="pip"
JOBS="${JOBS:-$(nproc)}"

PY="$(dirname "$0")/../.venv/bin/python"
repack_choice() {  # llamanode's decision on this CPU, for the flag llama-server must be launched with
    [ -x "$PY" ] || return 0
    "$PY" -c 'from llamanode.backends.llamacpp.cpu import weight_repack_for as w; d = w("auto")
print(f"weight repack on this CPU: {d.label} ({d.reason}); launch llama-server with", "--repack" if d.enabled else "--no-repack")' || true
}

if [ -x "$OUT/bin/llama-server" ]; then
    echo "already built: $OUT/bin/llama-server"
    repack_choice
    exit 0
fi

mkdir -p "$SRC" "$OUT"
SDIST="$SRC/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
    "$PIP" download --no-deps --no-binary :all: --dest "$SRC" "llama-cpp-python==$VERSION"
fi
TREE="$SRC/llama_cpp_python-$VERSION"
[ -d "$TREE" ] || tar -xzf "$SDIST" -C "$SRC"

cmake -S "$TREE/vendor/llama.cpp" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF
cmake --build "$OUT/build" --target llama-server -j "$JOBS"
mkdir -p "$OUT/bin"
cp "$OUT/build/bin/llama-server" "$OUT/bin/llama-server"
echo "built: $OUT/bin/llama-server"
repack_choice
