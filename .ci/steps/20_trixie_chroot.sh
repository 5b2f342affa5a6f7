#!/usr/bin/env bash
# CI step: the Debian trixie environment for the editor tests (GIMP 3.0 and, on a bookworm host, Krita 5.2).
#
# bookworm host: builds a trixie chroot with mmdebstrap at ${ACE_TRIXIE_CHROOT:-/var/cache/ace-bridge/trixie}
#                (no Recommends). Idempotent: a stamp file inside the chroot records the recipe; the chroot is
#                rebuilt only when it is missing or the recipe changed (new packages, mirror, ...). A rebuild goes
#                into a sibling folder and replaces the old chroot only once it succeeded.
# trixie host:   no chroot; GIMP 3 comes from apt on the host (Krita is installed on the host by the Krita step).
# other hosts:   says so and exits 0 without doing anything; the editor tests then skip (or fail under CI=true).
#
# Environment: ACE_TRIXIE_CHROOT (chroot folder), ACE_DEBIAN_MIRROR (default http://deb.debian.org/debian),
#              ACE_TRIXIE_REBUILD=1 (force a rebuild). Must run as root (mmdebstrap, apt).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"

CHROOT="${ACE_TRIXIE_CHROOT:-/var/cache/ace-bridge/trixie}"
MIRROR="${ACE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Keep sorted: the stamp compares this list verbatim. The GIMP list has its own X tools (xvfb, xauth, xdotool:
# the interactive GIMP test), since a trixie host installs only this list; the chroot gets both lists, deduplicated.
GIMP_PACKAGES="gimp gir1.2-gimp-3.0 python3 python3-gi python3-pytest xauth xdotool xvfb"
KRITA_PACKAGES="krita python3-pyqt5 python3-pyqt5.qtwebsockets xauth xvfb"
RECIPE_VERSION=1
STAMP="$CHROOT/.ace-bridge-stamp"

log() { echo "[20_trixie_chroot] $*"; }

if [ "$(id -u)" != 0 ]; then
    log "must run as root (mmdebstrap/apt)"; exit 1
fi

codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
export DEBIAN_FRONTEND=noninteractive

case "$codename" in
    trixie)
        # GIMP 3.0 is native here. Krita 5.2 is installed on the host by the Krita engineer's step.
        apt_install_missing "[20_trixie_chroot]" $GIMP_PACKAGES
        log "trixie host: GIMP $(dpkg-query -W -f='${Version}' gimp) on the host, no chroot"
        exit 0
        ;;
    bookworm) ;;
    *)
        log "host is '${codename:-unknown}', neither bookworm nor trixie: no editor environment built"
        exit 0
        ;;
esac

recipe="recipe=$RECIPE_VERSION suite=trixie mirror=$MIRROR packages=$GIMP_PACKAGES $KRITA_PACKAGES"

if [ "${ACE_TRIXIE_REBUILD:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$recipe" ] \
        && [ -x "$CHROOT/usr/bin/gimp-console-3.0" ] && [ -x "$CHROOT/usr/bin/krita" ]; then
    log "chroot $CHROOT is up to date"
    exit 0
fi

apt_install_missing "[20_trixie_chroot]" mmdebstrap

parent="$(dirname "$CHROOT")"
mkdir -p "$parent"
new="$CHROOT.new"
old="$CHROOT.old"
# Leftovers of an interrupted earlier run. A chroot is only ever mounted inside `unshare -m` namespaces,
# so nothing is mounted here; refuse to delete anything that is, to be safe.
for d in "$new" "$old"; do
    if [ -e "$d" ]; then
        if grep -q " $d" /proc/self/mounts; then log "$d has mounts, not removing it"; exit 1; fi
        rm -rf --one-file-system "$d"
    fi
done

includes="$(echo $GIMP_PACKAGES $KRITA_PACKAGES | tr ' ' '\n' | sort -u | paste -sd, -)"
log "building trixie chroot ($includes) in $new"
start=$SECONDS
RETRY_CLEANUP="rm -rf --one-file-system $new" retry mmdebstrap --variant=apt --aptopt='APT::Install-Recommends "false"' --include="$includes" \
    trixie "$new" "$MIRROR"
mkdir -p "$new/work"
echo "$recipe" > "$new/.ace-bridge-stamp"

if [ -e "$CHROOT" ]; then
    if grep -q " $CHROOT/" /proc/self/mounts; then log "$CHROOT has mounts, not replacing it"; exit 1; fi
    mv "$CHROOT" "$old"
fi
mv "$new" "$CHROOT"
rm -rf --one-file-system "$old"
log "chroot ready in $((SECONDS - start)) s: $(chroot "$CHROOT" dpkg-query -W -f='gimp ${Version}' gimp)," \
    "$(chroot "$CHROOT" dpkg-query -W -f='krita ${Version}' krita), $(du -sh "$CHROOT" | cut -f1)"
