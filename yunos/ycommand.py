"""ycommand: Yuneta's control CLI, same syntax.

    ycommand -c 'command-yuno command=reload-certs service=__yuno__'
    ycommand -c 'list-yunos; cert-sync-status'
    ycommand -i

It connects to the agent (``-u``, default ws://127.0.0.1:1991) with the agent's
credential (``-j``, or $YUNETA_JWT, or the token file the agent made at its
first start), runs each line, prints each answer (a table when the answer has
a schema, raw JSON with ``--json``), and exits 0 when the last result is not
negative, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from gobj import gobj_create, gobj_create_yuno, gobj_end, gobj_play, gobj_start, kernel
from gobj.config import default_work_dir
from gobj.log import add_handler
from gclasses.c_ycommand import C_YCOMMAND, register_c_ycommand, split_lines
from gclasses.c_yuno import C_YUNO, register_c_yuno

DEFAULT_URL = "ws://127.0.0.1:1991"


def default_token_file() -> str:
    return os.path.join(default_work_dir(), "realms", "agent", "data", "agent.token")


def _read_token(args: argparse.Namespace) -> str:
    if args.jwt:
        return str(args.jwt)
    if os.environ.get("YUNETA_JWT"):
        return os.environ["YUNETA_JWT"]
    try:
        with open(args.token_file, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def _stderr_sink(record: dict, line: str) -> None:
    sys.stderr.write(line + "\n")


def run(args: argparse.Namespace) -> int:
    register_c_yuno()
    register_c_ycommand()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    kernel.loop = loop
    add_handler(_stderr_sink, "debug" if args.verbose else "error")
    code = {"value": 1}

    def done(value: int) -> None:
        code["value"] = value
        loop.call_soon(loop.stop)

    yuno = gobj_create_yuno("ycommand", C_YUNO, {"yuno_role": "ycommand",
                                                  "timeout_cert_check": 0})
    lines = split_lines(args.command) if args.command else []
    ycmd = gobj_create("ycommand", C_YCOMMAND, {
        "url": args.url, "jwt": _read_token(args), "commands": lines, "wait": args.wait,
        "json": args.json, "binary": args.binary, "interactive": args.interactive or not lines,
        "timeout": args.timeout, "service": args.service, "on_done": done}, yuno)
    gobj_start(yuno)
    gobj_start(ycmd)
    gobj_play(yuno)
    try:
        loop.run_forever()
    finally:
        gobj_end()
        loop.close()
    return code["value"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ycommand", description=__doc__.split("\n")[0])
    ap.add_argument("-c", "--command", help="command line(s), separated by ';'")
    ap.add_argument("-u", "--url", default=DEFAULT_URL, help=f"agent url (default {DEFAULT_URL})")
    ap.add_argument("-w", "--wait", type=float, default=2.0,
                    help="seconds to wait for more answers from several yunos (default 2)")
    ap.add_argument("-t", "--timeout", type=float, default=10.0,
                    help="seconds to wait for the connection (default 10)")
    ap.add_argument("-S", "--service", default="__default_service__",
                    help="agent service that runs the commands (default __default_service__; "
                         "__yuno__ for the agent's own yuno commands)")
    ap.add_argument("-i", "--interactive", action="store_true", help="read lines from the prompt")
    ap.add_argument("-j", "--jwt", help="the agent's credential (default: its token file)")
    ap.add_argument("--token-file", default=default_token_file(),
                    help="file holding the agent's credential")
    ap.add_argument("--json", action="store_true", help="print raw answers as JSON")
    ap.add_argument("-b", "--binary", action="store_true", help="speak msgpack (binary frames)")
    ap.add_argument("-l", "--verbose", action="store_true", help="log everything to stderr")
    args = ap.parse_args(argv)
    if args.interactive or not args.command:
        try:
            import readline  # noqa: F401  (history and line editing at the prompt)
        except ImportError:
            pass
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
