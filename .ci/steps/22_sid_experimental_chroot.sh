#!/usr/bin/env bash
# ci: background
# CI step: the Debian sid + experimental chroot for the editor tests: Krita 6.0 (Qt6, PyQt6). Krita 5.3 (sid) and 6
# (experimental) are the same binary package `krita`, hence a chroot of its own next to 21_sid_chroot.sh's.
# experimental is pinned for krita and krita-data only (priority 990); everything else comes from sid.
# Built with mmdebstrap at ${ACE_SID_EXPERIMENTAL_CHROOT:-/var/cache/ace-bridge/sid-experimental} (no Recommends),
# idempotent with a recipe stamp (see .ci/lib/chroot.sh). Every Debian host gets it, whatever its release.
# qt6-svg-plugins: a minimal chroot lacks Qt6's SVG image plugin, and Krita's icons are SVG.
#
# Environment: ACE_SID_EXPERIMENTAL_CHROOT, ACE_DEBIAN_MIRROR (default http://deb.debian.org/debian),
# ACE_CHROOT_REBUILD=1. Must run as root. run-tests runs it in the background (the "ci: background" line above).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"
. "$(dirname "${BASH_SOURCE[0]}")/../lib/chroot.sh"

CHROOT="${ACE_SID_EXPERIMENTAL_CHROOT:-/var/cache/ace-bridge/sid-experimental}"
MIRROR="${ACE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Keep sorted: the stamp compares the recipe verbatim.
PACKAGES="krita python3 python3-pyqt6 python3-pytest qt6-svg-plugins xauth xvfb"
PINNED="krita krita-data"
RECIPE="recipe=1 suite=sid+experimental mirror=$MIRROR pinned=$PINNED packages=$PACKAGES"
label=22_sid_experimental_chroot

[ "$(id -u)" = 0 ] || { echo "[$label] must run as root (mmdebstrap)"; exit 1; }
codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
if ! command -v apt-get >/dev/null; then
    echo "[$label] host '${codename:-unknown}' has no apt: no sid + experimental chroot"; exit 0
fi
case "$codename" in
    bookworm|trixie|forky|sid) ;;
    *) echo "[$label] host release '${codename:-unknown}' is untested; building the chroot anyway" ;;
esac
apt_install_missing "[$label]" mmdebstrap

build_sid_experimental() {
    local pin
    pin="Package: $PINNED\nPin: release a=experimental\nPin-Priority: 990\n"
    mmdebstrap --variant=apt --aptopt='APT::Install-Recommends "false"' \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --setup-hook="mkdir -p \"\$1/etc/apt/preferences.d\" && printf '$pin' > \"\$1/etc/apt/preferences.d/ace-bridge-krita\"" \
        --include="$(echo $PACKAGES | tr ' ' ',')" sid "$1" \
        "deb $MIRROR sid main" "deb $MIRROR experimental main"
}
ensure_chroot "$label" "$CHROOT" "$RECIPE" "usr/bin/krita usr/bin/kritarunner usr/bin/xvfb-run" \
    build_sid_experimental
version="$(chroot "$CHROOT" dpkg-query -W -f='${Version}' krita)"
case "$version" in
    *:6.*|6.*) ;;
    *) echo "[$label] krita $version is not Krita 6: is experimental still pinned?" >&2; exit 1 ;;
esac
echo "[$label] $(chroot_versions "$CHROOT" krita python3 python3-pyqt6)"
