"""Helpers for the TLS benchmark: the server processes and what the OS says about them.

Run as a module it is one of the servers ``bench.tls`` starts::

    python -m bench._util ours [--profile FILE] -- <echo yuno args>
    python -m bench._util bare asyncio|uvloop CERT KEY

``ours`` is the echo yuno (``yunos.echo.main``) with one addition for the
benchmark: SIGUSR1 runs the yuno-level ``reload-certs`` command on the yuno's
loop, which stands in for the agent or ycommand that would send it. ``bare``
is the reference: ``asyncio.start_server(handler, ssl=ctx)`` echoing what it
reads, on the stdlib loop or on uvloop. Every server prints
``{"msgid": "bench.port", "port": N}`` (the yuno its own ``tcp_s.listening``)
once it listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import ssl
import sys

__all__ = ["raise_nofile", "proc_cpu", "proc_rss"]

_TICK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Lift the soft descriptor limit to the hard one; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name (field 2) may hold spaces; count from after its ')'.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def proc_rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# The servers

def _serve_ours(argv: list[str]) -> int:
    raise_nofile()
    profile = None
    if argv[:1] == ["--profile"]:
        profile, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]

    import gobj.entry as entry
    from gobj import gobj_command, kernel
    from yunos import echo

    def reload_certs() -> None:
        if kernel.yuno is not None:
            gobj_command(kernel.yuno, "reload-certs", {}, None)

    new_loop = entry._new_loop

    def loop_with_reload_signal(uv: bool) -> asyncio.AbstractEventLoop:
        loop = new_loop(uv)
        loop.add_signal_handler(signal.SIGUSR1, reload_certs)
        return loop

    entry._new_loop = loop_with_reload_signal
    if profile is None:
        return echo.main(argv)
    import cProfile

    prof = cProfile.Profile()
    try:
        return prof.runcall(echo.main, argv)
    finally:
        prof.dump_stats(profile)


async def _bare(cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ctx, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"msgid": "bench.port", "port": port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


def _serve_bare(argv: list[str]) -> int:
    raise_nofile()
    flavour, cert, key = argv
    if flavour == "uvloop":
        import uvloop

        uvloop.run(_bare(cert, key))
    else:
        asyncio.run(_bare(cert, key))
    return 0


def main(argv: list[str]) -> int:
    kind, rest = argv[0], argv[1:]
    if kind == "ours":
        return _serve_ours(rest)
    if kind == "bare":
        return _serve_bare(rest)
    print(f"unknown server kind {kind!r}: ours or bare", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
