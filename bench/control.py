"""Control-plane benchmark (``./yuneta bench control``): commands through the agent.

An agent is started in a temporary work dir, on ports the kernel picks, with
one echo yuno. Then, each figure measured by wall-clock time on loopback:

* commands per second over one persistent WebSocket client, for a command the
  agent answers itself (``list-yunos``, the baseline) and for one it relays to
  a yuno and back (``command-yuno command=stats``): one at a time (latency
  bound) and pipelined (a window of requests in flight);
* the wall time of one ``ycommand`` CLI invocation (process start included);
* the time for ``command-yuno command=reload-certs`` to reach 1, 10 and 50
  echo yunos, from sending the line to the last answer, with a newly issued
  certificate before each round so that every listener really swaps.

Prints a table; asserts nothing. Everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from gobj.ytls.devcerts import issue_server_cert
from tests.agent_harness import Agent, WSClient, echo_config

RELAYED = "command-yuno yuno_name=echo command=stats"
BASELINE = "list-yunos yuno_name=echo"
RELOAD = "command-yuno yuno_role=echo command=reload-certs service=__yuno__"


def _sequential(client: WSClient, line: str, n: int) -> tuple[float, list[float]]:
    """n round trips one after the other; (commands/s, latencies in s)."""
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        [answer] = client.call(line)
        lat.append(time.perf_counter() - t)
        assert answer["result"] == 0, answer
    return n / (time.perf_counter() - t0), lat


def _pipelined(client: WSClient, line: str, n: int, window: int) -> float:
    """n commands with up to ``window`` in flight; commands/s."""
    sent = got = 0
    t0 = time.perf_counter()
    while sent < min(window, n):
        client.send_command(line)
        sent += 1
    while got < n:
        answer = client.recv_event()["kw"]
        assert answer["result"] == 0, answer
        got += 1
        if sent < n:
            client.send_command(line)
            sent += 1
    return n / (time.perf_counter() - t0)


def _cli(agent: Agent, line: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        proc = agent.ycommand(line)
        out.append(time.perf_counter() - t)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _grow(agent: Agent, client: WSClient, base: Path, total: int) -> None:
    """Create echo yunos until ``total`` run."""
    have = len(agent.list_yunos())
    for i in range(have, total):
        config = echo_config(base / f"echo-{i}.json", f"echo-{i}")
        [answer] = client.call(f"create-yuno config={config}")
        assert answer["result"] == 0, answer
    agent.wait_running(total, timeout=30 + total)


def _fanout(client: WSClient, store: Path, n: int, rounds: int) -> list[float]:
    """Rounds of reload-certs to every yuno, each after a new certificate."""
    out = []
    for _ in range(rounds):
        issue_server_cert(str(store))
        t = time.perf_counter()
        answers = client.call(RELOAD)
        out.append(time.perf_counter() - t)
        assert len(answers) == n, (len(answers), n)
        bad = [a for a in answers if a["result"] != 0 or a["data"]["failed"]
               or not a["data"]["reloaded"]]
        assert not bad, bad[:2]
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    base = Path(tempfile.mkdtemp(prefix="yuneta-bench-control-"))
    agent = Agent(base / "agent", yunos=[{
        "yuno_role": "echo", "yuno_name": "echo",
        "config": str(echo_config(base / "echo.json", "echo"))}])
    try:
        agent.start()
        client = agent.client()
        try:
            _sequential(client, RELAYED, 50)  # warm up both ends
            for name, line in (("agent only (list-yunos)", BASELINE),
                               ("relayed to 1 yuno (command-yuno stats)", RELAYED)):
                rate, lat = _sequential(client, line, args.requests)
                rows.append((f"{name}, one at a time", f"{rate:10,.0f} cmd/s",
                             f"p50 {_ms(statistics.median(lat)).strip()}, "
                             f"p99 {_ms(_pct(lat, 0.99)).strip()}"))
                rate = _pipelined(client, line, args.requests * 3, args.window)
                rows.append((f"{name}, {args.window} in flight", f"{rate:10,.0f} cmd/s", ""))
            base_rate = _sequential(client, BASELINE, args.requests)[0]
            relay_rate = _sequential(client, RELAYED, args.requests)[0]
            rows.append(("relay cost: agent-only rate / relayed rate",
                         f"{base_rate / relay_rate:10.2f} x", "(one at a time, rerun)"))

            cli = _cli(agent, RELAYED, args.cli)
            rows.append((f"ycommand CLI, one invocation ({args.cli} runs)",
                         _ms(statistics.median(cli)),
                         f"p90 {_ms(_pct(cli, 0.9)).strip()}, "
                         f"min {_ms(min(cli)).strip()}"))

            store = agent.work / "store" / "certs"
            for n in args.fanout:
                _grow(agent, client, base, n)
                times = _fanout(client, store, n, args.rounds)
                rows.append((f"reload-certs to {n} yuno(s), new cert ({args.rounds} rounds)",
                             _ms(statistics.median(times)),
                             f"min {_ms(min(times)).strip()}, max {_ms(max(times)).strip()}"
                             f", {statistics.median(times) / n * 1000:.2f} ms/yuno"))
        finally:
            client.close()
        code = agent.stop()
        left = agent.yuno_pids()
        rows.append(("agent stop (SIGTERM)", f"exit {code}", f"yunos left: {len(left)}"))
    finally:
        agent.cleanup()
        shutil.rmtree(base, ignore_errors=True)
    return rows


def _cpu_info() -> str:
    try:
        out = subprocess.run(["nproc"], capture_output=True, text=True, timeout=5).stdout
        return f"{out.strip()} CPU(s)"
    except OSError:
        return "CPUs unknown"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run (about 30 s)")
    ap.add_argument("--requests", type=int, default=2000, help="round trips per figure")
    ap.add_argument("--window", type=int, default=32, help="requests in flight when pipelined")
    ap.add_argument("--cli", type=int, default=20, help="ycommand invocations")
    ap.add_argument("--rounds", type=int, default=5, help="reload rounds per fan-out size")
    ap.add_argument("--fanout", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 10, 50], help="yuno counts for reload-certs (ascending)")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests, args.cli, args.rounds, args.fanout = 300, 5, 3, [1, 10]
    t0 = time.perf_counter()
    rows = run(args)
    print(f"Control plane on loopback ({_cpu_info()}), wall-clock:")
    width = max(len(r[0]) for r in rows)
    for what, figure, extra in rows:
        print(f"  {what:<{width}}  {figure:>14}  {extra}")
    print(f"(bench took {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

