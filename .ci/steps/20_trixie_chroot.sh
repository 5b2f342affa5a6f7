#!/usr/bin/env bash
# ci: background
# CI step: the Debian trixie environment for the editor tests (GIMP 3.0 and Krita 5.2).
#
# trixie host:  no chroot; GIMP 3.0 comes from apt on the host (Krita 5.2 is installed there by 15_krita_host.sh).
# other hosts:  (bookworm, forky, sid, ...) a trixie chroot built with mmdebstrap at
#               ${ACE_TRIXIE_CHROOT:-/var/cache/ace-bridge/trixie} (no Recommends). Idempotent: the recipe is
#               stamped into the chroot and it is rebuilt only when it is missing or the recipe changed (new
#               packages, mirror, ...); a rebuild replaces the old chroot only once it succeeded (.ci/lib/chroot.sh).
# A host without apt says so and exits 0; the editor tests then skip (or fail under CI=true).
#
# Environment: ACE_TRIXIE_CHROOT (chroot folder), ACE_DEBIAN_MIRROR (default http://deb.debian.org/debian),
#              ACE_TRIXIE_REBUILD=1 or ACE_CHROOT_REBUILD=1 (force a rebuild). Must run as root (mmdebstrap, apt).
# run-tests runs it in the background (the "ci: background" line above), next to the other steps.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"
. "$(dirname "${BASH_SOURCE[0]}")/../lib/chroot.sh"

CHROOT="${ACE_TRIXIE_CHROOT:-/var/cache/ace-bridge/trixie}"
MIRROR="${ACE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Keep sorted: the stamp compares this list verbatim. The GIMP list has its own X tools (xvfb, xauth, xdotool:
# the interactive GIMP test), since a trixie host installs only this list; the chroot gets both lists, deduplicated.
GIMP_PACKAGES="gimp gir1.2-gimp-3.0 python3 python3-gi python3-pytest xauth xdotool xvfb"
KRITA_PACKAGES="krita python3-pyqt5 python3-pyqt5.qtwebsockets xauth xvfb"
RECIPE="recipe=1 suite=trixie mirror=$MIRROR packages=$GIMP_PACKAGES $KRITA_PACKAGES"
label=20_trixie_chroot

[ "$(id -u)" = 0 ] || { echo "[$label] must run as root (mmdebstrap/apt)"; exit 1; }
codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
export DEBIAN_FRONTEND=noninteractive
if ! command -v apt-get >/dev/null; then
    echo "[$label] host '${codename:-unknown}' has no apt: no editor environment built"; exit 0
fi
case "$codename" in
    trixie)
        # GIMP 3.0 is native here. Krita 5.2 is installed on the host by 15_krita_host.sh.
        apt_install_missing "[$label]" $GIMP_PACKAGES
        echo "[$label] trixie host: GIMP $(dpkg-query -W -f='${Version}' gimp) on the host, no chroot"
        exit 0
        ;;
    bookworm) ;;
    *) echo "[$label] host release '${codename:-unknown}': building the trixie chroot" ;;
esac
apt_install_missing "[$label]" mmdebstrap

build_trixie() {
    mmdebstrap --variant=apt --aptopt='APT::Install-Recommends "false"' \
        --include="$(echo $GIMP_PACKAGES $KRITA_PACKAGES | tr ' ' '\n' | sort -u | paste -sd, -)" \
        trixie "$1" "$MIRROR"
}
[ "${ACE_TRIXIE_REBUILD:-0}" != 1 ] || export ACE_CHROOT_REBUILD=1
ensure_chroot "$label" "$CHROOT" "$RECIPE" "usr/bin/gimp-console-3.0 usr/bin/krita usr/bin/kritarunner" build_trixie
echo "[$label] $(chroot_versions "$CHROOT" gimp krita python3)"
