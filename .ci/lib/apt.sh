# Sourced by the CI steps: install the Debian packages that are missing, and only those, so a warm run does no
# network I/O. Usage: apt_install_missing LABEL PKG...   (prints what it does, prefixed with LABEL)
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
    retry apt-get update -qq
    retry apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
