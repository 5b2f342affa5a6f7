# Sourced by the CI steps: install the Debian packages that are missing, and only those, so a warm run does no
# network I/O. apt runs under a lock, since steps may run in parallel.
# Usage: apt_install_missing LABEL PKG...   (prints what it does, prefixed with LABEL)
. "$(dirname "${BASH_SOURCE[0]}")/retry.sh"

apt_install_missing() {
    local label="$1" missing=() p
    shift
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "$label packages already installed"
        return 0
    fi
    echo "$label installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Steps run side by side (run-tests starts the chroot steps in the background): one apt at a time.
    (
        flock 9
        retry apt-get -o DPkg::Lock::Timeout=300 update -qq
        retry apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
    ) 9>/run/lock/ace-bridge-apt.lock
}
