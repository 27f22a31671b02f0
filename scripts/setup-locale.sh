#!/usr/bin/env bash
# Make the en_US.UTF-8 locale available, which scikit-learn text models need:
# skl2onnx exports TfidfVectorizer / CountVectorizer with a StringNormalizer
# whose default locale `en_US` ONNX Runtime maps to `en_US.UTF-8`, and session
# creation fails where that locale is missing ("Failed to construct locale
# with name:en_US.UTF-8"). Debian's base images carry only C, C.utf8 and POSIX.
#
#   scripts/setup-locale.sh                  # system-wide, Debian (apt-get, locale-gen)
#   scripts/setup-locale.sh --dir DIR        # compile it into DIR/en_US.UTF-8 (no root):
#                                            # use with LOCPATH=DIR (the zip's layer does)
#
# Idempotent: with the locale already there it only runs `locale -a` (a few ms).
# System-wide: installs the `locales` package with apt-get when localedef is
# missing (`apt-get update` once first), enables en_US.UTF-8 in /etc/locale.gen
# and runs locale-gen. Needs root for that; otherwise it says what to run.
# LOCALES (default "en_US.UTF-8") names the locales, space-separated, as
# LANG_TERRITORY.CODESET.
set -euo pipefail

log() { printf 'setup-locale: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

locales="${LOCALES:-en_US.UTF-8}"
dir=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
        -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done

# glibc lists en_US.UTF-8 as en_US.utf8: compare lower-case, without dashes.
normalized() { printf '%s' "$1" | tr 'A-Z' 'a-z' | tr -d '-'; }
has_locale() { # has_locale NAME [LOCPATH]: glibc can open NAME
    local want
    want="$(normalized "$1")"
    if [[ -n "${2:-}" ]]; then
        [[ -f "$2/$1/LC_CTYPE" ]]
    else
        locale -a 2>/dev/null | while IFS= read -r l; do
            [[ "$(normalized "$l")" == "$want" ]] && echo yes && break
        done | grep -q yes
    fi
}

install_localedef() {
    command -v localedef >/dev/null 2>&1 && [[ -d /usr/share/i18n/locales ]] && return 0
    [[ "$(id -u)" -eq 0 ]] \
        || die "localedef and the locale sources are missing; install them (Debian: apt-get install -y locales; Amazon Linux 2023: dnf install -y glibc-locale-source)"
    if command -v apt-get >/dev/null 2>&1; then
        log "installing the locales package with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends locales >&2 || die "apt-get install locales failed"
    elif command -v dnf >/dev/null 2>&1; then
        log "installing glibc-locale-source with dnf"
        dnf install -y -q glibc-locale-source >&2 || die "dnf install glibc-locale-source failed"
    else
        die "localedef and the locale sources are missing, and neither apt-get nor dnf is here"
    fi
}

if [[ -n "$dir" ]]; then
    mkdir -p "$dir"
    for l in $locales; do
        if has_locale "$l" "$dir"; then continue; fi
        install_localedef
        log "compiling $l into $dir/$l"
        # localedef warns (exit 1) about harmless things in some glibc versions'
        # sources; the files it wrote are what counts.
        localedef --no-archive -i "${l%%.*}" -f "${l#*.}" "$dir/$l" >&2 || true
        has_locale "$l" "$dir" || die "localedef did not write $dir/$l"
    done
    log "ready: LOCPATH=$dir ($(du -sk "$dir" | cut -f1) KiB)"
    printf '%s\n' "$dir"
    exit 0
fi

missing=()
for l in $locales; do has_locale "$l" || missing+=("$l"); done
if [[ ${#missing[@]} -eq 0 ]]; then
    log "already available: $locales"
    exit 0
fi
[[ "$(id -u)" -eq 0 ]] || die "missing ${missing[*]}; as root run: apt-get install -y locales && \
sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' /etc/locale.gen && locale-gen (or use --dir DIR with LOCPATH=DIR)"
install_localedef
for l in "${missing[@]}"; do
    line="$l ${l#*.}"
    if grep -qE "^# *${line}\$" /etc/locale.gen 2>/dev/null; then
        sed -i -E "s/^# *(${line})\$/\1/" /etc/locale.gen
    elif ! grep -qE "^${line}\$" /etc/locale.gen 2>/dev/null; then
        printf '%s\n' "$line" >>/etc/locale.gen
    fi
done
log "generating ${missing[*]} (locale-gen)"
locale-gen >&2
for l in "${missing[@]}"; do has_locale "$l" || die "$l is still missing after locale-gen"; done
log "ready: ${missing[*]}"
