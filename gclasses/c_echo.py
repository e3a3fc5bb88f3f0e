"""C_ECHO: sends back whatever a connection receives.

It is the subscriber of the connections its listeners accept (they are its
children, so the child subscription model makes it so): EV_RX_DATA from a
connection is answered with EV_TX_DATA to that same connection.
"""

from __future__ import annotations

from typing import Any

from gobj import DTP, EVF, SDATA, SDF, GObj, gclass_create, gclass_find, gobj_send_event

__all__ = ["C_ECHO", "register_c_echo"]

C_ECHO = "C_ECHO"

ATTRS = [
    SDATA(DTP.INTEGER, "sessions", SDF.RD | SDF.STATS, 0, "Connections open now"),
    SDATA(DTP.INTEGER, "echoed_bytes", SDF.RD | SDF.RSTATS, 0, "Bytes echoed"),
    SDATA(DTP.INTEGER, "tx_ready", SDF.RD | SDF.RSTATS, 0, "Times a slow peer caught up"),
]


def ac_connected(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    gobj._av[gobj.gclass.attr_index["sessions"]] += 1
    return 0


def ac_disconnected(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    gobj._av[gobj.gclass.attr_index["sessions"]] -= 1
    return 0


def ac_rx_data(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    data = kw["data"]
    gobj._av[gobj.gclass.attr_index["echoed_bytes"]] += len(data)
    # A datagram listener needs to know where to send it back; a stream ignores it.
    return gobj_send_event(src, "EV_TX_DATA", {"data": data, "addr": kw.get("addr")}, gobj)


def ac_tx_ready(gobj: GObj, event: str, kw: dict[str, Any], src: GObj | None) -> int:
    gobj._av[gobj.gclass.attr_index["tx_ready"]] += 1
    return 0


EVENT_TYPES = [
    ("EV_CONNECTED", EVF.NONE),
    ("EV_DISCONNECTED", EVF.NONE),
    ("EV_RX_DATA", EVF.NONE),
    ("EV_TX_READY", EVF.NONE),
]

STATES = [("ST_IDLE", [("EV_CONNECTED", ac_connected, None),
                       ("EV_DISCONNECTED", ac_disconnected, None),
                       ("EV_RX_DATA", ac_rx_data, None),
                       ("EV_TX_READY", ac_tx_ready, None)])]


def register_c_echo() -> None:
    if gclass_find(C_ECHO) is not None:
        return
    gclass_create(C_ECHO, event_types=EVENT_TYPES, states=STATES, attrs=ATTRS,
                  description="Echo service: answers each connection with its own bytes")
