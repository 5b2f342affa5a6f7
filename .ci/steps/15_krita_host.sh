#!/usr/bin/env bash
# Krita for the editor tests, on the host (idempotent).
#  bookworm host: apt's krita 5.1.5 here; the trixie chroot (20_trixie_chroot.sh) brings krita 5.2.9.
#  trixie host:   apt's krita 5.2.9 here; the other version (5.1.5) comes from a bookworm chroot built with
#                 mmdebstrap at ${ACE_BOOKWORM_CHROOT:-/var/cache/ace-bridge/bookworm}.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"

. /etc/os-release
codename="${VERSION_CODENAME:-unknown}"
host_pkgs=(krita python3-pyqt5 python3-pyqt5.qtwebsockets python3-pytest xvfb xauth imagemagick)

apt_install_missing "15_krita_host ($codename):" "${host_pkgs[@]}"
command -v kritarunner >/dev/null || { echo "15_krita_host: kritarunner missing after install" >&2; exit 1; }
echo "15_krita_host: host krita $(dpkg-query -W -f='${Version}' krita)"

case "$codename" in
    bookworm)
        # Krita 5.2.9 lives in the trixie chroot built by 20_trixie_chroot.sh; nothing more to do here.
        ;;
    trixie)
        chroot_dir="${ACE_BOOKWORM_CHROOT:-/var/cache/ace-bridge/bookworm}"
        if [ -x "$chroot_dir/usr/bin/kritarunner" ] && [ -e "$chroot_dir/.ace-bridge-ready" ]; then
            echo "15_krita_host: bookworm chroot ready at $chroot_dir"
        else
            apt_install_missing "15_krita_host:" mmdebstrap
            rm -rf "$chroot_dir"
            mkdir -p "$(dirname "$chroot_dir")"
            mmdebstrap --variant=apt \
                --include=krita,python3-pyqt5,python3-pyqt5.qtwebsockets,python3-pytest,xvfb,xauth \
                bookworm "$chroot_dir" http://deb.debian.org/debian
            mkdir -p "$chroot_dir/work"
            touch "$chroot_dir/.ace-bridge-ready"
            echo "15_krita_host: built bookworm chroot (krita 5.1.5) at $chroot_dir"
        fi
        ;;
    *)
        echo "15_krita_host: untested host release '$codename'; only the host Krita will be tested" >&2
        ;;
esac
