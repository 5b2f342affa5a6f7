# Sourced by the chroot CI steps (20_trixie, 21_sid, 22_sid_experimental): build a Debian chroot with mmdebstrap,
# idempotently. Usage:
#     ensure_chroot LABEL DIR RECIPE "BIN..." BUILD_FUNCTION
# - RECIPE: one line that describes everything the chroot is made of (suite, mirror, packages, pins); it is kept in
#   DIR/.ace-bridge-stamp and the chroot is rebuilt only when it is missing, the recipe changed, one of the BIN
#   paths (relative to DIR, e.g. usr/bin/krita) is not executable, or ACE_CHROOT_REBUILD=1.
# - BUILD_FUNCTION TARGET: builds a fresh chroot in TARGET (normally one mmdebstrap call). It runs under `retry`,
#   with TARGET removed between tries. The new chroot replaces the old one only once it was built completely.
# mmdebstrap itself must be installed already (the steps install it before they start building in the background,
# so two background builds never run apt on the host at the same time).
# A chroot is only ever mounted inside `unshare -m` namespaces (tests/editors/chroot.py), so nothing is mounted in
# it here; leftovers that are mounted anyway are refused, never deleted.
. "$(dirname "${BASH_SOURCE[0]}")/retry.sh"

ACE_CHROOT_STAMP=.ace-bridge-stamp

_chroot_log() { echo "[$_chroot_label] $*"; }

_chroot_unmounted_rm() {
    local d="$1"
    [ -e "$d" ] || return 0
    if grep -q " $d[/ ]" /proc/self/mounts; then
        _chroot_log "$d has mounts, not removing it"
        return 1
    fi
    rm -rf --one-file-system "$d"
}

# chroot_up_to_date DIR RECIPE "BIN..."  -> 0 when nothing needs doing
chroot_up_to_date() {
    local dir="$1" recipe="$2" bin
    [ "${ACE_CHROOT_REBUILD:-0}" != 1 ] || return 1
    [ -f "$dir/$ACE_CHROOT_STAMP" ] && [ "$(cat "$dir/$ACE_CHROOT_STAMP")" = "$recipe" ] || return 1
    for bin in $3; do
        [ -x "$dir/$bin" ] || return 1
    done
}

ensure_chroot() {
    _chroot_label="$1"
    local dir="$2" recipe="$3" bins="$4" build="$5" start=$SECONDS bin
    if chroot_up_to_date "$dir" "$recipe" "$bins"; then
        _chroot_log "chroot $dir is up to date"
        return 0
    fi
    command -v mmdebstrap >/dev/null || { _chroot_log "mmdebstrap is not installed"; return 1; }
    mkdir -p "$(dirname "$dir")"
    local new="$dir.new" old="$dir.old"
    _chroot_unmounted_rm "$new" && _chroot_unmounted_rm "$old" || return 1
    _chroot_log "building $dir ($recipe)"
    RETRY_CLEANUP="rm -rf --one-file-system $new" retry "$build" "$new" || return 1
    for bin in $bins; do
        [ -x "$new/$bin" ] || { _chroot_log "$bin missing in the new chroot"; return 1; }
    done
    mkdir -p "$new/work"
    echo "$recipe" > "$new/$ACE_CHROOT_STAMP"
    if [ -e "$dir" ]; then
        if grep -q " $dir/" /proc/self/mounts; then _chroot_log "$dir has mounts, not replacing it"; return 1; fi
        mv "$dir" "$old"
    fi
    mv "$new" "$dir"
    _chroot_unmounted_rm "$old"
    _chroot_log "chroot ready in $((SECONDS - start)) s, $(du -sh "$dir" | cut -f1)"
}

# chroot_versions DIR PKG...: "pkg version" of each installed package (for the step's log line)
chroot_versions() {
    local dir="$1"
    shift
    chroot "$dir" dpkg-query -W -f='${Package} ${Version}\n' "$@" 2>/dev/null | paste -sd, - | sed 's/,/, /g'
}
