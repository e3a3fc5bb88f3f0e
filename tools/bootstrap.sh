#!/usr/bin/env bash
# Creates .venv beside the project and installs the project with its test extras.
# Idempotent: a second run only re-installs when pyproject.toml changed.
# pip's output goes to .venv/bootstrap.log and is shown only when pip fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.venv"
stamp="$venv/.installed-pyproject"
if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv" >&2
    python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || ! cmp -s "$here/pyproject.toml" "$stamp"; then
    echo "bootstrap: installing the project and its dependencies into .venv" >&2
    log="$venv/bootstrap.log"
    # compat mode puts the project directory on sys.path, so modules added
    # after the install are found without reinstalling.
    if ! { "$venv/bin/python" -m pip install -q --upgrade pip &&
           "$venv/bin/python" -m pip install -q -e "${here}[test]" \
               --config-settings editable_mode=compat; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "bootstrap: pip failed (log above, also in $log)" >&2
        exit 1
    fi
    cp "$here/pyproject.toml" "$stamp"
fi
