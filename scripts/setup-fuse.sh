#!/usr/bin/env bash
# Make FUSE usable for the EFS-like test filesystem (tests/support/efs_sim.rs,
# docs/efs-sim.md): installs Debian's fuse3 (fusermount3) when it is missing,
# then says whether FUSE can be used here and, if not, why.
#
#   scripts/setup-fuse.sh        # scripts/test.sh runs it before cargo test
#
# Idempotent: with fusermount3 present it installs nothing. Never fails the
# caller because FUSE is unusable (tests that need it skip, or fail under CI,
# with the same reason); it fails only if an install it attempted failed.
set -euo pipefail

log() { printf 'setup-fuse: %s\n' "$*"; }

if ! command -v fusermount3 >/dev/null 2>&1; then
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "fusermount3 missing; installing Debian package fuse3"
        # Other set-up scripts may hold dpkg's lock: wait for it, not fail.
        apt-get -o DPkg::Lock::Timeout=300 update -qq
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
            install -y -qq --no-install-recommends fuse3 >/dev/null
    else
        log "fusermount3 missing and cannot install it (needs root and apt-get): apt-get install fuse3"
    fi
fi

why=""
if [[ ! -e /dev/fuse ]]; then
    why="/dev/fuse does not exist (no FUSE in this kernel or container; containers need --device /dev/fuse)"
elif [[ ! -r /dev/fuse || ! -w /dev/fuse ]]; then
    why="/dev/fuse is not readable and writable by $(id -un)"
elif ! command -v fusermount3 >/dev/null 2>&1; then
    why="fusermount3 is not installed"
elif [[ "$(id -u)" -ne 0 ]]; then
    fm="$(command -v fusermount3)"
    if [[ ! -u "$fm" ]]; then
        why="not root and $fm is not setuid root"
    elif ! grep -qx '[[:space:]]*user_allow_other[[:space:]]*' /etc/fuse.conf 2>/dev/null; then
        why="not root and /etc/fuse.conf lacks user_allow_other (auto_unmount needs allow_other)"
    fi
fi

if [[ -z "$why" ]]; then
    log "FUSE usable: /dev/fuse present, $(command -v fusermount3) ($(fusermount3 --version 2>&1 | head -n 1)), running as $(id -un)"
else
    log "FUSE NOT usable: $why; tests through the EFS-like filesystem will skip (fail under CI)"
fi
