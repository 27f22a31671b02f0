#!/usr/bin/env bash
# Build the ONNX Runtime Lambda layer for the zip deployment
# (infra/template-zip.yaml): the pinned wheel onnxruntime==1.32.0 from PyPI,
# checked against the same sha256 values as scripts/setup-ort.sh and
# infra/Dockerfile, unpacked so that Lambda puts the library at
#   /opt/lib/libonnxruntime.so.1.32.0
# (layers are extracted under /opt). The function sets
# ORT_DYLIB_PATH=/opt/lib/libonnxruntime.so.1.32.0.
#
# The layer also carries compiled locale data, en_US.UTF-8 and C.UTF-8, under
#   /opt/lib/locale/<name>/LC_*
# and the function sets LOCPATH=/opt/lib/locale: provided.al2023 has only the C
# locales, and scikit-learn text models exported with skl2onnx's defaults need
# en_US.UTF-8 (scripts/setup-locale.sh). With LOCPATH set, glibc looks for
# locales only there, so C.UTF-8 is carried too. The data is compiled by the
# build host's localedef: build on Amazon Linux 2023 (glibc 2.34, `dnf install
# glibc-locale-source`) to match Lambda's glibc exactly.
#
#   scripts/build-ort-layer.sh [--arch x86_64|arm64] [--out DIR]
#
# Output (DIR defaults to target/lambda):
#   DIR/ort-layer/lib/libonnxruntime.so.1.32.0       (the layer's content, for
#   DIR/ort-layer/lib/libonnxruntime_providers_shared.so   sam deploy's ContentUri)
#   DIR/ort-layer/lib/locale/en_US.UTF-8/, C.UTF-8/
#   DIR/ort-layer-<arch>.zip                          (the same, zipped, for
#                                                      aws lambda publish-layer-version)
# Needs: bash, python3 with pip, localedef with the locale sources (Debian:
# locales; AL2023: glibc-locale-source). Network: PyPI only (the wheel is cached in
# .cache/wheels, shared with setup-ort.sh).
set -euo pipefail

# ORT_VERSION, SHA256_x86_64, SHA256_aarch64
source "$(dirname "${BASH_SOURCE[0]}")/ort-pins.sh"

log() { printf 'build-ort-layer: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
arch="$(uname -m)"
out="$REPO_ROOT/target/lambda"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) arch="${2:?--arch needs a value}"; shift 2 ;;
        --out) out="${2:?--out needs a value}"; shift 2 ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

case "$arch" in
    x86_64 | amd64) arch="x86_64"; lambda_arch="x86_64"; expected_sha="$SHA256_x86_64" ;;
    aarch64 | arm64) arch="aarch64"; lambda_arch="arm64"; expected_sha="$SHA256_aarch64" ;;
    *) die "unsupported architecture '$arch' (x86_64 or arm64)" ;;
esac

wheel_name="onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_${arch}.whl"
wheel_dir="${ORT_CACHE_DIR:-$REPO_ROOT/.cache}/wheels"
wheel="$wheel_dir/$wheel_name"
mkdir -p "$wheel_dir" "$out"

sha256_of() { "$PYTHON" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"; }

if [[ -f "$wheel" && "$(sha256_of "$wheel")" != "$expected_sha" ]]; then
    log "cached $wheel_name has a wrong sha256; downloading again"
    rm -f "$wheel"
fi
if [[ ! -f "$wheel" ]]; then
    tmp="$(mktemp -d "$wheel_dir/.download.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    log "downloading onnxruntime==$ORT_VERSION (manylinux_2_28_$arch) from PyPI"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform "manylinux_2_28_${arch}" --python-version 3.11 \
        --implementation cp --abi cp311 \
        "onnxruntime==$ORT_VERSION" -d "$tmp" >&2 \
        || die "pip download of onnxruntime==$ORT_VERSION failed"
    [[ -f "$tmp/$wheel_name" ]] || die "pip did not produce $wheel_name"
    mv "$tmp/$wheel_name" "$wheel"
fi
actual_sha="$(sha256_of "$wheel")"
[[ "$actual_sha" == "$expected_sha" ]] \
    || { rm -f "$wheel"; die "sha256 mismatch for $wheel_name: expected $expected_sha, got $actual_sha"; }

layer_dir="$out/ort-layer"
zip_path="$out/ort-layer-${lambda_arch}.zip"
rm -rf "$layer_dir" "$zip_path"
mkdir -p "$layer_dir/lib"

LOCALES="C.UTF-8 en_US.UTF-8" "$REPO_ROOT/scripts/setup-locale.sh" --dir "$layer_dir/lib/locale" >/dev/null

# Unpack the two libraries and zip them with the locale data as lib/... with
# Python's zipfile (no unzip/zip needed). Libraries are mode 0755, data 0644.
"$PYTHON" - "$wheel" "$layer_dir" "$zip_path" "$ORT_VERSION" <<'PY'
import os, sys, zipfile
wheel, layer_dir, zip_path, version = sys.argv[1:5]
names = ["libonnxruntime.so." + version, "libonnxruntime_providers_shared.so"]

def add(dst, name, data, mode):
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = ((0o100000 | mode) << 16)
    info.compress_type = zipfile.ZIP_DEFLATED
    dst.writestr(info, data)

with zipfile.ZipFile(wheel) as src, \
     zipfile.ZipFile(zip_path + ".tmp", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
    for base in names:
        data = src.read("onnxruntime/capi/" + base)
        path = os.path.join(layer_dir, "lib", base)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o755)
        add(dst, "lib/" + base, data, 0o755)
    locale_dir = os.path.join(layer_dir, "lib", "locale")
    for root, _, files in sorted(os.walk(locale_dir)):
        for base in sorted(files):
            path = os.path.join(root, base)
            with open(path, "rb") as f:
                add(dst, os.path.relpath(path, layer_dir), f.read(), 0o644)
os.replace(zip_path + ".tmp", zip_path)
PY

log "layer content: $layer_dir/lib ($(du -sh "$layer_dir" | cut -f1) unpacked)"
log "layer zip:     $zip_path ($(du -h "$zip_path" | cut -f1))"
log "the function sets ORT_DYLIB_PATH=/opt/lib/libonnxruntime.so.$ORT_VERSION and LOCPATH=/opt/lib/locale"
printf '%s\n' "$zip_path"
