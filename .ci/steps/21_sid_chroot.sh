#!/usr/bin/env bash
# ci: background
# CI step: the Debian sid chroot for the editor tests: GIMP 3.2 and Krita 5.3 (PyQt5), the editors Debian ships
# today. Built with mmdebstrap at ${ACE_SID_CHROOT:-/var/cache/ace-bridge/sid} (no Recommends), idempotent: the
# recipe is stamped into the chroot and it is rebuilt only when the recipe changed (see .ci/lib/chroot.sh).
#
# Every Debian host gets the chroot, whatever its release (bookworm, trixie, forky, sid): the host's own editors
# are older or unknown, and a chroot pins exactly what the tests expect. A host without apt says so and exits 0
# (the editor tests then skip, or fail under CI=true).
# The mirror's sid Release files may have expired (a mirror snapshot): Check-Valid-Until is off for this chroot.
# sid has no python3-pyqt5.qtwebsockets and no gimp-python3 (the plug-ins need neither).
#
# Environment: ACE_SID_CHROOT, ACE_DEBIAN_MIRROR (default http://deb.debian.org/debian), ACE_CHROOT_REBUILD=1.
# Must run as root. run-tests runs it in the background (the "ci: background" line above).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"
. "$(dirname "${BASH_SOURCE[0]}")/../lib/chroot.sh"

CHROOT="${ACE_SID_CHROOT:-/var/cache/ace-bridge/sid}"
MIRROR="${ACE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Keep sorted: the stamp compares the recipe verbatim.
PACKAGES="gimp gir1.2-gimp-3.0 krita python3 python3-gi python3-pyqt5 python3-pytest xauth xdotool xvfb"
RECIPE="recipe=1 suite=sid mirror=$MIRROR packages=$PACKAGES"
label=21_sid_chroot

[ "$(id -u)" = 0 ] || { echo "[$label] must run as root (mmdebstrap)"; exit 1; }
codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
if ! command -v apt-get >/dev/null; then
    echo "[$label] host '${codename:-unknown}' has no apt: no sid chroot"; exit 0
fi
case "$codename" in
    bookworm|trixie|forky|sid) ;;
    *) echo "[$label] host release '${codename:-unknown}' is untested; building the sid chroot anyway" ;;
esac
apt_install_missing "[$label]" mmdebstrap

build_sid() {
    mmdebstrap --variant=apt --aptopt='APT::Install-Recommends "false"' \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --include="$(echo $PACKAGES | tr ' ' ',')" sid "$1" "$MIRROR"
}
ensure_chroot "$label" "$CHROOT" "$RECIPE" "usr/bin/krita usr/bin/kritarunner usr/bin/xvfb-run" build_sid
echo "[$label] $(chroot_versions "$CHROOT" gimp krita python3)"
