#!/usr/bin/env bash
# Create (or update) the repo's Python virtualenv at <repo>/.venv and install a
# requirements file into it.
#
#   scripts/python-env.sh scripts/requirements-fixtures.txt
#   PY=$(scripts/python-env.sh scripts/requirements-fixtures.txt | tail -1)
#
# Idempotent: the install is skipped when a stamp file in the venv holds the
# same hash of the requirements file (and of the Python that made the venv).
# Prints the venv's python path as the last line of output.
#
# Env overrides: VENV_DIR (default <repo>/.venv), PYTHON (default python3).
set -euo pipefail

log() { printf 'python-env: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 REQUIREMENTS_FILE"
req="$1"
[[ -f "$req" ]] || die "requirements file '$req' not found"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
venv_python="$VENV_DIR/bin/python"

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (Debian: apt-get install -y python3)"

hash_of() {
    "$PYTHON" -c 'import hashlib,sys
h=hashlib.sha256()
for p in sys.argv[1:]:
    with open(p,"rb") as f: h.update(f.read())
print(h.hexdigest())' "$@"
}

make_venv() {
    rm -rf "$VENV_DIR"
    if ! "$PYTHON" -m venv "$VENV_DIR" >/dev/null 2>&1; then
        # Debian ships venv/ensurepip separately (python3-venv).
        rm -rf "$VENV_DIR"
        if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
            log "python3 -m venv failed; installing python3-venv with apt-get"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq >&2
            apt-get install -y -qq python3-venv >&2 \
                || apt-get install -y -qq "python${pyver}-venv" >&2 \
                || die "apt-get install python3-venv failed"
            "$PYTHON" -m venv "$VENV_DIR" >&2 || die "python3 -m venv still fails after installing python3-venv"
        else
            die "python3 -m venv failed; install python3-venv (apt-get install -y python3-venv) and retry"
        fi
    fi
}

# (Re)create the venv when it is missing or its interpreter no longer runs
# (e.g. the base Python it pointed to was removed or upgraded).
if ! [[ -x "$venv_python" ]] || ! "$venv_python" -c 'import sys' >/dev/null 2>&1; then
    log "creating virtualenv at $VENV_DIR"
    make_venv
fi
"$venv_python" -m pip --version >/dev/null 2>&1 || {
    log "pip missing in $VENV_DIR; recreating it"
    make_venv
}

# The stamp covers the requirements file's content and the venv's Python version.
pyid="$("$venv_python" -c 'import sys; print(sys.version)')"
want="$(hash_of "$req")-$(printf '%s' "$pyid" | "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')"
stamp="$VENV_DIR/.stamp-$(basename "$req").sha256"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    printf '%s\n' "$venv_python"
    exit 0
fi

log "installing $req into $VENV_DIR"
"$venv_python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2 \
    || die "pip install -r $req failed"
printf '%s\n' "$want" >"$stamp"
log "done"
printf '%s\n' "$venv_python"
