#!/usr/bin/env bash
# Build the zip deployment package of model-router for Lambda's provided.al2023
# runtime: an executable named `bootstrap` at the root of the zip.
# ONNX Runtime is not inside: it comes from the layer that
# scripts/build-ort-layer.sh builds (ORT_DYLIB_PATH=/opt/lib/libonnxruntime.so.1.32.0).
#
#   scripts/build-lambda-zip.sh [--arch x86_64|arm64] [--binary PATH] [--out DIR]
#
# How the binary is made:
#   --binary PATH         package an existing binary (no build)
#   cargo lambda present  `cargo lambda build --release --bin model-router`
#                         (cross-compiles with zig; the way to build arm64 on x86_64)
#   otherwise             `cargo build --release --locked --bin model-router`
#                         (host architecture only)
# Either way the binary is checked: an ELF for the requested architecture whose
# glibc symbol versions are all <= 2.34 (what provided.al2023 has).
#
# Output (DIR defaults to target/lambda):
#   DIR/model-router/bootstrap     (CodeUri of infra/template-zip.yaml)
#   DIR/model-router-<arch>.zip    (for aws lambda update-function-code --zip-file)
set -euo pipefail

MAX_GLIBC="2.34"   # Amazon Linux 2023

log() { printf 'build-lambda-zip: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
arch="$(uname -m)"
binary=""
out="$REPO_ROOT/target/lambda"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) arch="${2:?--arch needs a value}"; shift 2 ;;
        --binary) binary="${2:?--binary needs a value}"; shift 2 ;;
        --out) out="${2:?--out needs a value}"; shift 2 ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

case "$arch" in
    x86_64 | amd64) arch="x86_64"; lambda_arch="x86_64"; cl_flag="--x86-64" ;;
    aarch64 | arm64) arch="aarch64"; lambda_arch="arm64"; cl_flag="--arm64" ;;
    *) die "unsupported architecture '$arch' (x86_64 or arm64)" ;;
esac
host_arch="$(uname -m)"; [[ "$host_arch" == "arm64" ]] && host_arch="aarch64"

cd "$REPO_ROOT"
if [[ -z "$binary" ]]; then
    if cargo lambda --version >/dev/null 2>&1; then
        log "cargo lambda build --release $cl_flag --bin model-router"
        cargo lambda build --release "$cl_flag" --bin model-router >&2
        binary="$REPO_ROOT/target/lambda/model-router/bootstrap"
    elif [[ "$arch" == "$host_arch" ]]; then
        log "cargo-lambda not found; cargo build --release --locked --bin model-router (host $host_arch)"
        cargo build --release --locked --bin model-router >&2
        binary="$REPO_ROOT/target/release/model-router"
    else
        die "building $arch on $host_arch needs cargo-lambda (cargo install cargo-lambda --locked) or the container image (infra/Dockerfile)"
    fi
fi
[[ -f "$binary" ]] || die "no binary at $binary"

# Check the ELF machine and the newest glibc symbol version it needs.
"$PYTHON" - "$binary" "$arch" "$MAX_GLIBC" <<'PY' || die "binary check failed"
import re, struct, sys
path, arch, max_glibc = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(path, "rb").read()
if data[:4] != b"\x7fELF":
    sys.exit(f"{path} is not an ELF executable")
machine = struct.unpack_from("<H", data, 18)[0]
want = {"x86_64": 62, "aarch64": 183}[arch]
if machine != want:
    sys.exit(f"{path} is for ELF machine {machine}, expected {want} ({arch})")
def ver(s): return tuple(int(x) for x in s.split("."))
versions = sorted({m.decode() for m in re.findall(rb"GLIBC_(2\.[0-9]+(?:\.[0-9]+)?)", data)}, key=ver)
newest = versions[-1] if versions else "none"
if versions and ver(newest) > ver(max_glibc):
    sys.exit(f"{path} needs GLIBC_{newest} but provided.al2023 has {max_glibc}: "
             "build with cargo lambda (zig links against an older glibc) or in infra/Dockerfile's build stage")
print(f"build-lambda-zip: {path}: {arch} ELF, newest glibc symbol {newest} (<= {max_glibc})", file=sys.stderr)
PY

pkg_dir="$out/model-router"
zip_path="$out/model-router-${lambda_arch}.zip"
mkdir -p "$pkg_dir"
if [[ "$(realpath "$binary")" != "$(realpath -m "$pkg_dir/bootstrap")" ]]; then
    install -m 0755 "$binary" "$pkg_dir/bootstrap"
fi
"$PYTHON" - "$pkg_dir/bootstrap" "$zip_path" <<'PY'
import os, sys, zipfile
src, zip_path = sys.argv[1], sys.argv[2]
info = zipfile.ZipInfo("bootstrap", date_time=(2020, 1, 1, 0, 0, 0))
info.external_attr = 0o100755 << 16
info.compress_type = zipfile.ZIP_DEFLATED
with zipfile.ZipFile(zip_path + ".tmp", "w") as z, open(src, "rb") as f:
    z.writestr(info, f.read(), compresslevel=9)
os.replace(zip_path + ".tmp", zip_path)
PY
log "package: $pkg_dir/bootstrap, zip: $zip_path ($(du -h "$zip_path" | cut -f1))"
log "ONNX Runtime comes from the layer: scripts/build-ort-layer.sh --arch $lambda_arch"
printf '%s\n' "$zip_path"
