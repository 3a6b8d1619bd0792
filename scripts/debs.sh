# shellcheck shell=bash
# ensure_debs PKG...: install the Debian packages that are missing (as root,
# without recommends: libvirtd's test driver is built in, no qemu needed).
# Sourced by scripts/demo.sh, scripts/test.sh and scripts/install-telemetry.sh.
ensure_debs() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages (${missing[*]}); run as root or install them" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}
