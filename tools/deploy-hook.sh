#!/usr/bin/env bash
# deploy-hook.sh: certbot deploy hook for a Yuneta host (renewal layer 1).
#
# certbot runs it once per renewed lineage, with RENEWED_LINEAGE (the live/
# directory of that lineage) and RENEWED_DOMAINS set. Four steps:
#   copy-certs   run copy-certs.sh; its own output goes to copy-certs.log
#   webserver    reload nginx or openresty, if one is configured
#   ycommand     ask every running yuno to reload-certs through the agent
#   last-run     write the Unix time of this run to the last-run file
# The steps are independent on purpose (no set -e): a yuno that does not
# answer must not stop the timestamp, and a failed copy must not stop the
# yunos from reloading what the store already holds. Each step logs one JSON
# line (timestamp, msgid, step, rc, result) to deploy-hook.log:
#   deploy-hook.ok / deploy-hook.failed / deploy-hook.skipped, then a final
#   deploy-hook.done. The last-run file is written on every run, success or
#   not: it says the hook fired; the log says how it went.
#
# Settings (environment variable, production default):
#   YUNETA_LOG_DIR                /var/log/yuneta
#   YUNETA_COPY_CERTS             /yuneta/store/certs/copy-certs.sh
#   YUNETA_YCOMMAND               /yuneta/bin/ycommand
#   YUNETA_YCOMMAND_TIMEOUT       60 (seconds; certbot waits for the hook)
#   YUNETA_LAST_RUN_FILE          /var/lib/yuneta/last-deploy-hook-run
#   YUNETA_USER                   yuneta (ycommand runs as this user when the
#                                 hook runs as root and the user exists)
#   YUNETA_WEBSERVER_FILE         /etc/yuneta/webserver (names nginx|openresty)
#   YUNETA_WEBSERVER_RELOAD_CMD   a shell command; overrides the file
#   YUNETA_BIN_DIR                /yuneta/bin (where nginx/openresty are looked
#                                 for first, then PATH)
# copy-certs.sh reads YUNETA_LETSENCRYPT_DIR, YUNETA_CERTS_STORE and
# YUNETA_USER from the environment it inherits. When YUNETA_LETSENCRYPT_DIR is
# unset and RENEWED_LINEAGE is <dir>/live/<name>, <dir> is used, so a certbot
# with its own --config-dir is mirrored from the right place.
# Exit status: 0 when no step failed, 1 otherwise.

set -u
umask 022

log_dir=${YUNETA_LOG_DIR:-/var/log/yuneta}
copy_certs=${YUNETA_COPY_CERTS:-/yuneta/store/certs/copy-certs.sh}
ycommand=${YUNETA_YCOMMAND:-/yuneta/bin/ycommand}
ycommand_timeout=${YUNETA_YCOMMAND_TIMEOUT:-60}
last_run_file=${YUNETA_LAST_RUN_FILE:-/var/lib/yuneta/last-deploy-hook-run}
run_as=${YUNETA_USER:-yuneta}
webserver_file=${YUNETA_WEBSERVER_FILE:-/etc/yuneta/webserver}
webserver_reload_cmd=${YUNETA_WEBSERVER_RELOAD_CMD:-}
bin_dir=${YUNETA_BIN_DIR:-/yuneta/bin}
lineage=${RENEWED_LINEAGE:-}

# The broadcast every yuno answers: the agent relays reload-certs to the
# __yuno__ service of each running yuno, which reloads each TLS listener.
reload_line='command-yuno command=reload-certs service=__yuno__'

hook_log="$log_dir/deploy-hook.log"
copy_log="$log_dir/copy-certs.log"
# A step's captured output is kept in its log line, cut to this many bytes.
output_max=2000

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

# log MSGID STEP RC MSG [key value]...: append one JSON line to the hook log.
# A key written int:KEY carries a number; every other value is a string.
# If the log cannot be written the line goes to stderr, which certbot keeps
# in its own log, so an outcome is never lost silently.
log() {
    local msgid=$1 step=$2 rc=$3 msg=$4 line result=${1#deploy-hook.}
    shift 4
    line="{\"timestamp\":$(json_str "$(date +%Y-%m-%dT%H:%M:%S%:z)")"
    line+=",\"msgid\":$(json_str "$msgid"),\"step\":$(json_str "$step")"
    line+=",\"rc\":$((rc + 0)),\"result\":$(json_str "$result")"
    line+=",\"msg\":$(json_str "$msg"),\"lineage\":$(json_str "$lineage")"
    while [ "$#" -ge 2 ]; do
        case "$1" in
            int:*) line+=",$(json_str "${1#int:}"):$(( $2 + 0 ))" ;;
            *) line+=",$(json_str "$1"):$(json_str "$2")" ;;
        esac
        shift 2
    done
    line+="}"
    if ! printf '%s\n' "$line" >>"$hook_log" 2>/dev/null; then
        printf '%s\n' "$line" >&2
    fi
}

failed=0
# outcome STEP RC MSG [key value]...: log a finished step as ok or failed.
outcome() {
    local step=$1 rc=$2
    shift 2
    if [ "$rc" -eq 0 ]; then
        log deploy-hook.ok "$step" 0 "$@"
    else
        failed=$((failed + 1))
        log deploy-hook.failed "$step" "$rc" "$@"
    fi
}

mkdir -p -- "$log_dir" 2>/dev/null
log deploy-hook.start summary 0 "deploy hook started" domains "${RENEWED_DOMAINS:-}"

if [ -z "${YUNETA_LETSENCRYPT_DIR:-}" ]; then
    case "$lineage" in
        */live/*) export YUNETA_LETSENCRYPT_DIR="${lineage%/live/*}" ;;
    esac
fi

# (a) Mirror the live certificates into the store.
step_copy_certs() {
    local rc
    if [ ! -x "$copy_certs" ]; then
        outcome copy-certs 127 "copy-certs script missing or not executable" \
            script "$copy_certs"
        return
    fi
    "$copy_certs" >>"$copy_log" 2>&1
    rc=$?
    outcome copy-certs "$rc" "copy-certs finished" script "$copy_certs" \
        output_log "$copy_log"
}

# (b) Reload the web server, which serves the same certificates from files.
step_webserver() {
    local name bin out rc
    if [ -n "$webserver_reload_cmd" ]; then
        out=$(bash -c "$webserver_reload_cmd" 2>&1)
        rc=$?
        outcome webserver "$rc" "web server reload command finished" \
            command "$webserver_reload_cmd" output "${out:0:output_max}"
        return
    fi
    if [ ! -f "$webserver_file" ]; then
        log deploy-hook.skipped webserver 0 "no web server configured" \
            config "$webserver_file"
        return
    fi
    read -r name _ <"$webserver_file"
    case "${name:-}" in
        nginx|openresty) ;;
        *)
            outcome webserver 2 "web server config names neither nginx nor openresty" \
                config "$webserver_file" name "${name:-}"
            return ;;
    esac
    if [ -x "$bin_dir/$name" ]; then
        bin="$bin_dir/$name"
    else
        bin=$(command -v -- "$name") || bin=""
    fi
    if [ -z "$bin" ]; then
        outcome webserver 127 "web server binary not found" name "$name" \
            bin_dir "$bin_dir"
        return
    fi
    out=$("$bin" -s reload 2>&1)
    rc=$?
    outcome webserver "$rc" "web server reloaded" command "$bin -s reload" \
        output "${out:0:output_max}"
}

# (c) Tell every running yuno to reload its TLS listeners. As root, ycommand
# runs as the Yuneta user, whose credentials and HOME the agent expects.
step_ycommand() {
    local cmd out rc home
    if [ ! -x "$ycommand" ]; then
        outcome ycommand 127 "ycommand missing or not executable" ycommand "$ycommand"
        return
    fi
    cmd=("$ycommand" -c "$reload_line")
    if [ "$(id -u)" -eq 0 ] && id -u "$run_as" >/dev/null 2>&1; then
        home=$(getent passwd "$run_as" | cut -d: -f6)
        cmd=(runuser -u "$run_as" -- env "HOME=${home:-/}" "${cmd[@]}")
    fi
    # Bounded: certbot waits for its hooks, and an agent that never answers
    # must not hold up the renewal of the next lineage.
    if command -v timeout >/dev/null 2>&1; then
        cmd=(timeout -- "$ycommand_timeout" "${cmd[@]}")
    fi
    out=$("${cmd[@]}" 2>&1)
    rc=$?
    outcome ycommand "$rc" "reload-certs broadcast finished" \
        command "$reload_line" output "${out:0:output_max}"
}

# (d) Record that the hook ran. Written via a temp file and a rename so that
# a reader (the agent's cert-sync-status) never sees an empty or partial file.
step_last_run() {
    local dir tmp rc=0
    dir=$(dirname -- "$last_run_file")
    if ! mkdir -p -- "$dir" \
            || ! tmp=$(mktemp -- "$dir/.last-deploy-hook-run.XXXXXX"); then
        outcome last-run 1 "cannot create a temp file beside the last-run file" \
            file "$last_run_file"
        return
    fi
    { printf '%s\n' "$(date +%s)" >"$tmp" \
        && chmod 0644 -- "$tmp" \
        && mv -f -T -- "$tmp" "$last_run_file"; } || rc=$?
    if [ "$rc" -ne 0 ]; then
        rm -f -- "$tmp"
    fi
    outcome last-run "$rc" "last-run time written" file "$last_run_file"
}

step_copy_certs
step_webserver
step_ycommand
step_last_run

log deploy-hook.done summary "$failed" "deploy hook finished" int:failed_steps "$failed"
if [ "$failed" -gt 0 ]; then
    exit 1
fi
exit 0
