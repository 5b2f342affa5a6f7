#!/usr/bin/env bash
# ci: background
# CI step: Krita 5.1 (Debian bookworm) for the editor tests on hosts that are not bookworm.
#
# bookworm host: nothing to do; 15_krita_host.sh installs apt's Krita 5.1.5 on the host.
# other hosts:   (trixie, forky, sid, ...) a bookworm chroot built with mmdebstrap at
#                ${ACE_BOOKWORM_CHROOT:-/var/cache/ace-bridge/bookworm} (no Recommends), idempotent with a recipe
#                stamp (see .ci/lib/chroot.sh).
# Environment: ACE_BOOKWORM_CHROOT, ACE_DEBIAN_MIRROR (default http://deb.debian.org/debian), ACE_CHROOT_REBUILD=1.
# Must run as root. run-tests runs it in the background (the "ci: background" line above).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"
. "$(dirname "${BASH_SOURCE[0]}")/../lib/chroot.sh"

CHROOT="${ACE_BOOKWORM_CHROOT:-/var/cache/ace-bridge/bookworm}"
MIRROR="${ACE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Keep sorted: the stamp compares the recipe verbatim.
PACKAGES="krita python3-pyqt5 python3-pyqt5.qtwebsockets python3-pytest xauth xvfb"
RECIPE="recipe=1 suite=bookworm mirror=$MIRROR packages=$PACKAGES"
label=23_bookworm_chroot

codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
if [ "$codename" = bookworm ]; then
    echo "[$label] bookworm host: Krita 5.1 is the host's (15_krita_host.sh), no chroot"; exit 0
fi
[ "$(id -u)" = 0 ] || { echo "[$label] must run as root (mmdebstrap)"; exit 1; }
if ! command -v apt-get >/dev/null; then
    echo "[$label] host '${codename:-unknown}' has no apt: no bookworm chroot"; exit 0
fi
apt_install_missing "[$label]" mmdebstrap

build_bookworm() {
    mmdebstrap --variant=apt --aptopt='APT::Install-Recommends "false"' \
        --include="$(echo $PACKAGES | tr ' ' ',')" bookworm "$1" "$MIRROR"
}
ensure_chroot "$label" "$CHROOT" "$RECIPE" "usr/bin/krita usr/bin/kritarunner usr/bin/xvfb-run" build_bookworm
echo "[$label] $(chroot_versions "$CHROOT" krita python3)"
