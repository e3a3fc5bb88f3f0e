#!/usr/bin/env bash
# copy-certs.sh: mirror certbot's live certificates into the Yuneta cert store.
#
# For every name, <letsencrypt_dir>/live/<name>/ becomes
#   <store>/<name>.crt            from fullchain.pem   (0644)
#   <store>/<name>.chain          from chain.pem       (0644)
#   <store>/private/<name>.key    from privkey.pem     (0600, in a 0700 dir)
# Names come from <store>/certs.list (one a line, '#' starts a comment) when
# that file exists, else from every directory under live/.
#
# A file is rewritten only when its bytes changed, so an unchanged store keeps
# its mtimes: the agent's cert sync (layer 2) treats a new mtime as "reload".
# A pair whose key does not match its certificate is refused and the store
# keeps the pair it had. Each name stands alone: a failing name is logged and
# the others are still processed.
#
# Settings (option, or environment variable, or production default):
#   --letsencrypt-dir DIR   YUNETA_LETSENCRYPT_DIR   /etc/letsencrypt
#   --store DIR             YUNETA_CERTS_STORE       /yuneta/store/certs
#   --owner USER            YUNETA_USER              yuneta
# Files are chowned to the owner only when running as root and the user
# exists, so the script also runs as an ordinary user on a store of its own.
#
# Output: one JSON line per action on stdout, with a stable "msgid":
#   copy-certs.updated     a file was written (new or changed content)
#   copy-certs.unchanged   a file already had these bytes; not touched
#   copy-certs.mode-fixed  an unchanged file had the wrong mode; chmod only
#   copy-certs.owner-fixed an unchanged file had the wrong owner; chown only
#   copy-certs.skipped     a name's files are missing or unreadable
#   copy-certs.mismatch    a name's key does not match its certificate
#   copy-certs.invalid     a name's PEM does not parse, or the name is unsafe
#   copy-certs.failed      writing into the store failed
#   copy-certs.done        summary; last line of every run that got going
# Exit status: 0 if every name it tried succeeded (also when there was none),
# 1 if any name failed, 2 on a usage error or an unusable store.

set -u
# Every temp file starts private; the public ones are opened up explicitly.
umask 077

letsencrypt_dir=${YUNETA_LETSENCRYPT_DIR:-/etc/letsencrypt}
store=${YUNETA_CERTS_STORE:-/yuneta/store/certs}
owner=${YUNETA_USER:-yuneta}

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
}

# A JSON string literal: escape backslash, quote and control characters.
json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    s=$(printf '%s' "$s" | tr -d '\000-\010\013\014\016-\037')
    printf '"%s"' "$s"
}

# log MSGID MSG [key value]...: one JSON object on one line. A key written
# int:KEY carries a number; every other value is a string.
log() {
    local msgid=$1 msg=$2 line
    shift 2
    line="{\"timestamp\":$(json_str "$(date +%Y-%m-%dT%H:%M:%S%:z)")"
    line+=",\"msgid\":$(json_str "$msgid"),\"msg\":$(json_str "$msg")"
    while [ "$#" -ge 2 ]; do
        case "$1" in
            int:*) line+=",$(json_str "${1#int:}"):$(( $2 + 0 ))" ;;
            *) line+=",$(json_str "$1"):$(json_str "$2")" ;;
        esac
        shift 2
    done
    printf '%s}\n' "$line"
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --letsencrypt-dir) letsencrypt_dir=${2-}; shift 2 || shift ;;
        --letsencrypt-dir=*) letsencrypt_dir=${1#*=}; shift ;;
        --store) store=${2-}; shift 2 || shift ;;
        --store=*) store=${1#*=}; shift ;;
        --owner) owner=${2-}; shift 2 || shift ;;
        --owner=*) owner=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) log copy-certs.usage "unknown argument" argument "$1" >&2; exit 2 ;;
    esac
done
for v in "$letsencrypt_dir" "$store"; do
    if [ -z "$v" ]; then
        log copy-certs.usage "a directory setting is empty" >&2
        exit 2
    fi
done

# chown only as root and only to a user that exists: as an ordinary user the
# files are ours already, and chown to a missing user would fail every name.
chown_to=""
if [ "$(id -u)" -eq 0 ] && id -u "$owner" >/dev/null 2>&1; then
    chown_to="$owner:$(id -gn "$owner")"
fi

# Temp files made by this run, removed on any exit: an interrupted run must
# not leave key material lying around under a name nobody cleans.
temps=()
# shellcheck disable=SC2317  # reached through the EXIT trap
cleanup() {
    local t
    for t in "${temps[@]+"${temps[@]}"}"; do
        rm -f -- "$t"
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

private_dir="$store/private"
# The store and its parents are world-readable (the .crt files are public);
# only private/ is closed. The subshell keeps umask 077 for everything else.
if ! (umask 022 && mkdir -p -- "$store") \
        || ! { [ -d "$private_dir" ] || mkdir -m 0700 -- "$private_dir"; } \
        || ! chmod 0700 -- "$private_dir"; then
    log copy-certs.failed "cannot prepare the store" store "$store"
    exit 2
fi
if [ -n "$chown_to" ]; then
    chown -- "$chown_to" "$store" "$private_dir"
fi

# Two runs at once (the deploy hook and the agent's timer) would interleave
# their renames; the second waits for the first. flock is util-linux, present
# on every Debian, but the script still works (unserialised) without it.
if command -v flock >/dev/null 2>&1; then
    exec 9>>"$store/.copy-certs.lock"
    if ! flock -w 120 9; then
        log copy-certs.failed "another copy-certs run holds the lock" \
            lock "$store/.copy-certs.lock"
        exit 2
    fi
fi

# The names to mirror: certs.list when present, else every dir under live/.
names=()
if [ -f "$store/certs.list" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line%%#*}
        line=$(printf '%s' "$line" | tr -d '[:space:]')
        if [ -n "$line" ]; then
            names+=("$line")
        fi
    done <"$store/certs.list"
elif [ -d "$letsencrypt_dir/live" ]; then
    for d in "$letsencrypt_dir/live"/*/; do
        if [ -d "$d" ]; then
            d=${d%/}
            names+=("${d##*/}")
        fi
    done
fi

# snapshot SRC DIR TAG: copy SRC (read through its symlink) to a new temp file
# in DIR and leave the temp's path in $snap. It runs in this shell, not in a
# $(...) subshell, so that the temp is registered for cleanup. The temp lives
# beside its destination so that the final rename stays inside one filesystem
# and is atomic; its name starts with a dot and does not end in .crt, so
# nobody scanning *.crt sees it.
snap=""
snapshot() {
    local src=$1 dir=$2 tag=$3
    snap=$(mktemp -- "$dir/.$tag.XXXXXX") || return 1
    temps+=("$snap")
    cat -- "$src" >"$snap"
}

# The SubjectPublicKeyInfo of the first certificate in a PEM file, and of a
# private key. Equal outputs mean the key belongs to the certificate.
cert_pubkey() { openssl x509 -in "$1" -noout -pubkey 2>/dev/null; }
key_pubkey() { openssl pkey -in "$1" -pubout 2>/dev/null; }

# place TMP DEST MODE NAME: put TMP at DEST unless DEST already has its bytes.
# Returns 0 when done or unchanged, 1 on failure.
place() {
    local tmp=$1 dest=$2 mode=$3 name=$4 have
    if [ -f "$dest" ] && cmp -s -- "$tmp" "$dest"; then
        rm -f -- "$tmp"
        # Same bytes: leave the mtime alone, but a wrong mode or owner (a
        # hand copy, an earlier run as another user) is still corrected.
        have=$(stat -c '%a' -- "$dest" 2>/dev/null)
        if [ "$have" != "${mode#0}" ]; then
            chmod "$mode" -- "$dest" || return 1
            log copy-certs.mode-fixed "file content unchanged, mode corrected" \
                name "$name" file "$dest" mode "$mode" was "$have"
        fi
        have=$(stat -c '%U:%G' -- "$dest" 2>/dev/null)
        if [ -n "$chown_to" ] && [ "$have" != "$chown_to" ]; then
            chown -- "$chown_to" "$dest" || return 1
            log copy-certs.owner-fixed "file content unchanged, owner corrected" \
                name "$name" file "$dest" owner "$chown_to" was "$have"
        fi
        log copy-certs.unchanged "file content unchanged, not written" \
            name "$name" file "$dest"
        return 0
    fi
    chmod "$mode" -- "$tmp" || return 1
    if [ -n "$chown_to" ]; then
        chown -- "$chown_to" "$tmp" || return 1
    fi
    # Data on disk before the rename makes it visible: after a crash the name
    # holds either the old bytes or the new ones, never an empty file.
    sync -- "$tmp" 2>/dev/null || true
    mv -f -T -- "$tmp" "$dest" || return 1
    log copy-certs.updated "file written" name "$name" file "$dest"
    return 0
}

# copy_name NAME: mirror one lineage. Returns 0 on success, 1 on failure.
copy_name() {
    local name=$1 src_dir="$letsencrypt_dir/live/$1" f
    local tmp_crt tmp_chain tmp_key

    # An unsafe name from certs.list could write outside the store.
    case "$name" in
        */*|.|..|.*)
            log copy-certs.invalid "unsafe certificate name" name "$name"
            return 1 ;;
    esac

    # Present and readable, through the symlinks certbot keeps in live/.
    for f in fullchain.pem chain.pem privkey.pem; do
        if [ ! -f "$src_dir/$f" ] || [ ! -r "$src_dir/$f" ]; then
            log copy-certs.skipped "source file missing or unreadable" \
                name "$name" file "$src_dir/$f"
            return 1
        fi
    done

    # Take one snapshot of each source first and work only on the snapshots
    # from here on: certbot may swap the live/ symlinks while we run, and the
    # pair we validate must be the pair we install.
    if ! { snapshot "$src_dir/privkey.pem" "$private_dir" "$name.key" \
                && tmp_key=$snap \
                && snapshot "$src_dir/chain.pem" "$store" "$name.chain" \
                && tmp_chain=$snap \
                && snapshot "$src_dir/fullchain.pem" "$store" "$name.crt" \
                && tmp_crt=$snap; }; then
        log copy-certs.skipped "cannot read a source file into the store" \
            name "$name" dir "$src_dir"
        return 1
    fi

    # Validate before anything becomes visible.
    local cert_pub key_pub
    cert_pub=$(cert_pubkey "$tmp_crt")
    key_pub=$(key_pubkey "$tmp_key")
    if [ -z "$cert_pub" ] || [ -z "$key_pub" ] \
            || ! openssl x509 -in "$tmp_chain" -noout 2>/dev/null; then
        log copy-certs.invalid "certificate, chain or key does not parse" \
            name "$name" dir "$src_dir"
        return 1
    fi
    if [ "$cert_pub" != "$key_pub" ]; then
        log copy-certs.mismatch \
            "private key does not match the certificate; store left as it was" \
            name "$name" cert "$src_dir/fullchain.pem" key "$src_dir/privkey.pem"
        return 1
    fi

    # Install order: key, chain, certificate. Readers (the agent's cert sync,
    # a listener's reload-certs) decide that something changed by looking at
    # the .crt, then load the .crt with its .key. Putting the key in place
    # first means that whoever sees the new .crt also finds its key. The short
    # window in between (new key, old .crt) is the safe one: nothing watches
    # for a key change, and a reload that loads that pair anyway fails its own
    # key-matches-cert check and keeps serving the old context.
    if ! place "$tmp_key" "$private_dir/$name.key" 0600 "$name" \
            || ! place "$tmp_chain" "$store/$name.chain" 0644 "$name" \
            || ! place "$tmp_crt" "$store/$name.crt" 0644 "$name"; then
        log copy-certs.failed "cannot write into the store" name "$name" store "$store"
        return 1
    fi
    return 0
}

ok=0
failed=0
for name in "${names[@]+"${names[@]}"}"; do
    if copy_name "$name"; then
        ok=$((ok + 1))
    else
        failed=$((failed + 1))
    fi
done

# The renames are durable only once their directories are on disk too.
sync -- "$private_dir" "$store" 2>/dev/null || true

log copy-certs.done "copy-certs finished" \
    letsencrypt_dir "$letsencrypt_dir" store "$store" \
    int:names "${#names[@]}" int:ok "$ok" int:failed "$failed"
if [ "$failed" -gt 0 ]; then
    exit 1
fi
exit 0
