"""Dispatch and memory benchmark for the kernel (``./yuneta bench dispatch``).

Three ways of doing the same work — toggle between two states and count — are
timed back to back in one process, by CPU time (``time.process_time``), best of
several rounds so that the machine's speed drift hits them alike:

* ``send_event`` between two gobjs through a two-state FSM,
* a plain Python method call that toggles an attribute and counts,
* a ``transitions.Machine`` trigger on a model with the same two states.

Then the memory of 100,000 gobjs of a gclass with a 20-attr table (tracemalloc).
Prints figures and ratios; it asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

from transitions import Machine

from gobj import DTP, EVF, SDATA, SDF, gclass_create, gobj_create, gobj_create_yuno, \
    gobj_end, gobj_send_event

N_EVENTS = 200_000


def ac_go(gobj, event, kw, src):
    gobj.priv[0] += 1
    return 0


def _fsm_gclass():
    return gclass_create("C_BENCH_TOGGLE", event_types=[("EV_GO", EVF.NONE)],
                         states=[("ST_A", [("EV_GO", ac_go, "ST_B")]),
                                 ("ST_B", [("EV_GO", ac_go, "ST_A")])])


class Plain:
    def __init__(self) -> None:
        self.state = "ST_A"
        self.count = 0

    def on_go(self, event, kw, src):
        self.state = "ST_B" if self.state == "ST_A" else "ST_A"
        self.count += 1
        return 0


class Model:
    count = 0

    def on_enter(self):
        self.count += 1


def _cpu(fn, n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        fn(n)
        best = min(best, time.process_time() - t0)
    return best / n


def bench_dispatch(n: int, rounds: int) -> dict[str, float]:
    gc_ = _fsm_gclass()
    yuno = gobj_create_yuno("bench", _yuno_gclass(), {})
    dst = gobj_create("dst", gc_, {}, yuno)
    dst.priv = [0]
    src = yuno
    kw: dict = {}

    def via_send(k):
        for _ in range(k):
            gobj_send_event(dst, "EV_GO", kw, src)

    p = Plain()

    def via_plain(k):
        on_go = p.on_go
        for _ in range(k):
            on_go("EV_GO", kw, src)

    m = Model()
    Machine(model=m, states=["ST_A", "ST_B"], initial="ST_A", auto_transitions=False,
            transitions=[{"trigger": "go", "source": "ST_A", "dest": "ST_B",
                          "after": "on_enter"},
                         {"trigger": "go", "source": "ST_B", "dest": "ST_A",
                          "after": "on_enter"}])

    def via_transitions(k):
        go = m.go
        for _ in range(k):
            go()

    out = {}
    # Interleave the three so that drift affects each alike.
    for _ in range(rounds):
        for name, fn, k in (("send_event", via_send, n), ("plain", via_plain, n),
                            ("transitions", via_transitions, n // 10)):
            out[name] = min(out.get(name, float("inf")), _cpu(fn, k, 1))
    assert dst.state in ("ST_A", "ST_B") and dst.priv[0] > 0
    gobj_end()
    return out


def _yuno_gclass():
    from gobj.gclass import gclass_find
    gc_ = gclass_find("C_BENCH_ROOT")
    if gc_ is None:
        gc_ = gclass_create("C_BENCH_ROOT", event_types=[], states=[("ST", [])])
    return gc_


def bench_memory(count: int) -> float:
    attrs = [SDATA(DTP.INTEGER if i % 2 else DTP.STRING, f"attr{i}", SDF.RD | SDF.WR,
                   i if i % 2 else f"v{i}", "bench attr") for i in range(20)]
    gc_ = gclass_create("C_BENCH_MEM", event_types=[], states=[("ST", [])], attrs=attrs)
    yuno = gobj_create_yuno("mem", _yuno_gclass(), {})
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(count):
        gobj_create(f"g{i}", gc_, None, yuno)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    gobj_end()
    return (after - before) / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=N_EVENTS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gobjs", type=int, default=100_000)
    args = ap.parse_args()
    r = bench_dispatch(args.events, args.rounds)
    print(f"CPU per event (best of {args.rounds}, interleaved):")
    for name in ("plain", "send_event", "transitions"):
        print(f"  {name:12s} {r[name] * 1e9:9.0f} ns   {1 / r[name]:12,.0f} ev/s")
    print(f"ratio send_event / plain call        : {r['send_event'] / r['plain']:.2f}x "
          f"(aim: <= 10x)")
    print(f"ratio transitions / send_event       : {r['transitions'] / r['send_event']:.1f}x "
          f"(aim: >= 20x)")
    per = bench_memory(args.gobjs)
    print(f"memory per gobj (20 attrs, {args.gobjs:,} gobjs): {per:,.0f} bytes "
          f"= {per / 1024:.2f} KiB (aim: < 2 KiB)")


if __name__ == "__main__":
    main()
