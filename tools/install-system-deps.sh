#!/usr/bin/env bash
# install-system-deps.sh: make sure the Debian packages the tests need are here.
#
# Required: certbot and pebble (the ACME tests issue and renew real
# certificates against a Pebble on 127.0.0.1) and openssl (copy-certs.sh
# checks that each key matches its certificate with it). Optional: shellcheck
# (the tests lint the shell tools when it is present).
#
# Installs what is missing with apt-get when running as root; as an ordinary
# user it only reports. Prints one line per package. Exit status: 0 when every
# required package is installed afterwards, 1 otherwise.

set -u

required=(certbot pebble openssl)
optional=(shellcheck)

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing_from() {
    local p
    for p in "$@"; do
        installed "$p" || printf '%s\n' "$p"
    done
}

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "install-system-deps: dpkg-query not found;" \
        "this script only knows Debian packages" >&2
    exit 1
fi

mapfile -t missing < <(missing_from "${required[@]}" "${optional[@]}")

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-system-deps: not root, not installing: ${missing[*]}"
    elif ! command -v apt-get >/dev/null 2>&1; then
        echo "install-system-deps: apt-get not found, not installing: ${missing[*]}"
    else
        export DEBIAN_FRONTEND=noninteractive
        echo "install-system-deps: installing ${missing[*]}"
        # One package at a time, so that an optional package the mirror does
        # not carry cannot stop the required ones. A failure is retried once
        # after refreshing the package lists, which a fresh image may lack.
        for p in "${missing[@]}"; do
            if ! apt-get install -y -q "$p" >/dev/null 2>&1; then
                apt-get update -q >/dev/null 2>&1
                apt-get install -y -q "$p" >/dev/null 2>&1 \
                    || echo "install-system-deps: apt-get could not install $p"
            fi
        done
    fi
fi

status=0
for p in "${required[@]}" "${optional[@]}"; do
    kind=required
    case " ${optional[*]} " in *" $p "*) kind=optional ;; esac
    if installed "$p"; then
        version=$(dpkg-query -W -f='${Version}' "$p")
        echo "install-system-deps: $p ($kind) present: $version"
    else
        echo "install-system-deps: $p ($kind) MISSING"
        if [ "$kind" = required ]; then
            status=1
        fi
    fi
done
exit "$status"
