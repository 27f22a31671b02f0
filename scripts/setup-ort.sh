#!/usr/bin/env bash
# Provision the ONNX Runtime shared library (libonnxruntime.so) from the pinned
# PyPI wheel onnxruntime==1.32.0, verified against a pinned sha256.
#
#   ORT_DYLIB_PATH=$(scripts/setup-ort.sh | tail -1)
#
# Result: <repo>/.cache/onnxruntime/1.32.0/libonnxruntime.so.1.32.0 and a
# symlink libonnxruntime.so beside it. The wheel is cached in
# <repo>/.cache/wheels so a re-run never downloads again. Idempotent; prints
# only the library path when everything is already in place.
#
# Needs: bash, python3 with pip (no unzip, no network beyond PyPI).
# Env overrides: ORT_CACHE_DIR (default <repo>/.cache), PYTHON (default python3).
set -euo pipefail

# ORT_VERSION, SHA256_x86_64, SHA256_aarch64
source "$(dirname "${BASH_SOURCE[0]}")/ort-pins.sh"
# The wheel's Python tag does not matter for the C library (it is the same
# libonnxruntime.so in every cpXY wheel); cp311 is pinned for a stable hash.
PY_VERSION="3.11"
PY_TAG="311"


log() { printf 'setup-ort: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${ORT_CACHE_DIR:-$REPO_ROOT/.cache}"
PYTHON="${PYTHON:-python3}"

arch="$(uname -m)"
case "$arch" in
    x86_64 | amd64) arch="x86_64"; expected_sha="$SHA256_x86_64" ;;
    aarch64 | arm64) arch="aarch64"; expected_sha="$SHA256_aarch64" ;;
    *) die "unsupported architecture '$arch' (expected x86_64 or aarch64)" ;;
esac

platform="manylinux_2_28_${arch}"
wheel_name="onnxruntime-${ORT_VERSION}-cp${PY_TAG}-cp${PY_TAG}-${platform}.whl"
wheel_dir="$CACHE_DIR/wheels"
wheel="$wheel_dir/$wheel_name"
lib_dir="$CACHE_DIR/onnxruntime/$ORT_VERSION"
lib_real="$lib_dir/libonnxruntime.so.$ORT_VERSION"
lib_link="$lib_dir/libonnxruntime.so"
stamp="$lib_dir/.sha256"

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        "$PYTHON" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

# Fast path: already extracted from the verified wheel.
if [[ -f "$lib_real" && -L "$lib_link" && -f "$stamp" && "$(cat "$stamp")" == "$expected_sha" ]]; then
    printf '%s\n' "$lib_link"
    exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (install python3 and python3-pip)"
mkdir -p "$wheel_dir" "$lib_dir"

# A cached wheel with the wrong hash (partial download, tampering) is removed.
if [[ -f "$wheel" && "$(sha256_of "$wheel")" != "$expected_sha" ]]; then
    log "cached wheel $wheel has a wrong sha256; downloading again"
    rm -f "$wheel"
fi

if [[ ! -f "$wheel" ]]; then
    "$PYTHON" -m pip --version >/dev/null 2>&1 \
        || die "pip is missing for $PYTHON (Debian: apt-get install -y python3-pip)"
    tmp="$(mktemp -d "$wheel_dir/.download.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    log "downloading onnxruntime==$ORT_VERSION ($platform) from PyPI"
    # --no-index is not used: the wheel comes from PyPI (or PIP_FIND_LINKS /
    # PIP_INDEX_URL mirrors if configured); the sha256 below is what we trust.
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform "$platform" --python-version "$PY_VERSION" \
        --implementation cp --abi "cp$PY_TAG" \
        "onnxruntime==$ORT_VERSION" -d "$tmp" >&2 \
        || die "pip download of onnxruntime==$ORT_VERSION failed"
    [[ -f "$tmp/$wheel_name" ]] || die "pip did not produce $wheel_name (got: $(ls "$tmp"))"
    mv "$tmp/$wheel_name" "$wheel"
    rm -rf "$tmp"
    trap - EXIT
fi

actual_sha="$(sha256_of "$wheel")"
if [[ "$actual_sha" != "$expected_sha" ]]; then
    rm -f "$wheel"
    die "sha256 mismatch for $wheel_name: expected $expected_sha, got $actual_sha (wheel removed)"
fi

# Extract onnxruntime/capi/libonnxruntime.so.* (and the tiny
# libonnxruntime_providers_shared.so that ORT looks for beside itself) with
# Python's zipfile, so `unzip` is not needed. Write to a temp name, then rename.
"$PYTHON" - "$wheel" "$lib_dir" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
wanted = []
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        base = name.rsplit("/", 1)[-1]
        if name.startswith("onnxruntime/capi/") and (
            base.startswith("libonnxruntime.so.") or base == "libonnxruntime_providers_shared.so"
        ):
            wanted.append((name, base))
    if not any(b.startswith("libonnxruntime.so.") for _, b in wanted):
        sys.exit("setup-ort: error: no onnxruntime/capi/libonnxruntime.so.* in " + wheel)
    for name, base in wanted:
        target = os.path.join(dest, base)
        tmp = target + ".tmp"
        with zf.open(name) as src, open(tmp, "wb") as out:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
PY

[[ -f "$lib_real" ]] || die "expected $lib_real after extraction"
ln -sfn "libonnxruntime.so.$ORT_VERSION" "$lib_link"
printf '%s\n' "$expected_sha" >"$stamp"
log "onnxruntime $ORT_VERSION ready in $lib_dir"
printf '%s\n' "$lib_link"
