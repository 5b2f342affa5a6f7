#!/usr/bin/env bash
# Krita for the editor tests, on the host (idempotent).
#  bookworm host: apt's krita 5.1.5 here; the trixie chroot (20_trixie_chroot.sh) brings krita 5.2.9.
#  trixie host:   apt's krita 5.2.9 here; 5.1.5 comes from the bookworm chroot (23_bookworm_chroot.sh).
#  every host:    Krita 5.3 and 6.0 come from the sid chroots (21_sid_chroot.sh, 22_sid_experimental_chroot.sh).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"

. /etc/os-release
codename="${VERSION_CODENAME:-unknown}"
host_pkgs=(krita python3-pyqt5 python3-pytest xvfb xauth imagemagick)
# QtWebSockets as in the releases the tests grew up on; sid (forky) has no python3-pyqt5.qtwebsockets.
case "$codename" in bookworm|trixie) host_pkgs+=(python3-pyqt5.qtwebsockets) ;; esac

apt_install_missing "15_krita_host ($codename):" "${host_pkgs[@]}"
command -v kritarunner >/dev/null || { echo "15_krita_host: kritarunner missing after install" >&2; exit 1; }
echo "15_krita_host: host krita $(dpkg-query -W -f='${Version}' krita)"

case "$codename" in
    bookworm|trixie)
        # The other Krita versions come from chroots built in the background: 5.2 from 20_trixie_chroot.sh (or the
        # host on trixie), 5.1 from 23_bookworm_chroot.sh on a trixie host, 5.3 and 6.0 from 21_sid_chroot.sh and
        # 22_sid_experimental_chroot.sh.
        ;;
    *)
        echo "15_krita_host: untested host release '$codename'; the chroots bring Krita 5.1, 5.2, 5.3 and 6.0" >&2
        ;;
esac
