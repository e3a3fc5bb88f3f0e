"""GClass registration: declarative tables checked once, shared by every instance.

A gclass is data: its attrs, its event types, its FSM (states in order, the
first is initial, each with ``(event, action, next_state)`` rows), its command
table and its methods. :func:`gclass_create` validates the FSM the way the
dispatcher relies on it and refuses a broken table with a message naming the
gclass, the state and the event.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gobj.attrs import SData

__all__ = [
    "EVF",
    "GCF",
    "Cmd",
    "GClass",
    "GClassError",
    "EV_STATE_CHANGED",
    "gclass_create",
    "gclass_find",
    "gclass_names",
    "METHODS",
]

EV_STATE_CHANGED = "EV_STATE_CHANGED"


class EVF(enum.IntFlag):
    NONE = 0
    OUTPUT = 0x1  # may be published and subscribed
    NO_WARN_SUBS = 0x2  # publishing with no subscriber is not worth a warning
    SYSTEM = 0x4  # kernel event every gclass may publish (EV_STATE_CHANGED)
    PUBLIC = 0x8  # accepted from other yunos


class GCF(enum.IntFlag):
    NONE = 0
    MANUAL_START = 0x1  # start_tree skips it
    NO_CHECK_OUTPUT_EVENTS = 0x2
    IGNORE_UNKNOWN_ATTRS = 0x4
    REQUIRED_START_TO_PLAY = 0x8


# Methods a gclass may define. Anything else in its method table is a typo.
METHODS = frozenset(
    {
        "mt_create",
        "mt_destroy",
        "mt_start",
        "mt_stop",
        "mt_play",
        "mt_pause",
        "mt_writing",
        "mt_reading",
        "mt_child_added",
        "mt_child_removed",
        "mt_command_parser",
        "mt_stats",
        "mt_inject_event",
        "mt_subscription_added",
        "mt_subscription_deleted",
        "mt_publication_filter",
        "mt_disable",
        "mt_enable",
    }
)


# Kernel events every gclass may publish without declaring them. A subscriber
# gets one only if its own gclass declares it (so a catch-all subscription does
# not flood gobjs with state changes they never asked for).
SYSTEM_EVENTS: dict[str, EVF] = {
    EV_STATE_CHANGED: EVF.OUTPUT | EVF.SYSTEM | EVF.NO_WARN_SUBS,
}


class GClassError(ValueError):
    """A gclass table is inconsistent; the message names gclass, state and event."""


@dataclass(frozen=True)
class Cmd:
    """A command row: ``name`` is hyphenated (``reload-certs``)."""

    name: str
    handler: Callable[..., Any] | None
    params: Sequence[SData] = ()
    aliases: Sequence[str] = ()
    description: str = ""
    wild: bool = False  # accepts key=value pairs not in its parameter table


Action = Callable[..., int]
Row = tuple[str, "Action | None", "str | None"]


@dataclass(eq=False)
class GClass:
    name: str
    event_types: dict[str, EVF]
    states: list[str]
    fsm: dict[str, dict[str, tuple[Action | None, str | None]]]
    attrs: dict[str, SData]
    attr_index: dict[str, int]
    commands: list[Cmd]
    command_index: dict[str, Cmd]
    methods: dict[str, Callable[..., Any]]
    flags: GCF = GCF.NONE
    trace_levels: tuple[str, ...] = ()
    description: str = ""
    traced: bool = False  # per-gclass machine trace, switched on by operators
    # Coerced once at registration: a gobj copies this list (and its containers)
    # instead of coercing every default again at each creation.
    defaults: list[Any] = field(default_factory=list)
    container_slots: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.defaults = [row.default_value() for row in self.attrs.values()]
        self.container_slots = tuple(i for i, v in enumerate(self.defaults)
                                     if isinstance(v, (list, dict)))

    def has_event(self, event: str) -> bool:
        return event in self.event_types

    def is_output(self, event: str) -> bool:
        flags = self.event_types.get(event) or SYSTEM_EVENTS.get(event)
        return flags is not None and bool(flags & (EVF.OUTPUT | EVF.SYSTEM))

    def find_command(self, name: str) -> Cmd | None:
        return self.command_index.get(name.lower())


_registry: dict[str, GClass] = {}


def gclass_find(name: str) -> GClass | None:
    return _registry.get(name)


def gclass_names() -> list[str]:
    return sorted(_registry)


def gclass_create(
    name: str,
    *,
    event_types: Sequence[tuple[str, EVF]],
    states: Sequence[tuple[str, Sequence[Row]]],
    attrs: Sequence[SData] = (),
    commands: Sequence[Cmd] = (),
    methods: dict[str, Callable[..., Any]] | None = None,
    flags: GCF = GCF.NONE,
    trace_levels: Sequence[str] = (),
    description: str = "",
) -> GClass:
    """Validate the tables and register a gclass.

    Registering the same name twice returns the first registration when the
    tables are the same objects (module re-import in tests); otherwise raises.
    Raises GClassError naming the gclass, state and event at fault.
    """
    _check_name(name)
    ev_types = _build_event_types(name, event_types)
    fsm, state_names = _build_fsm(name, states, ev_types)
    _check_inputs_used(name, ev_types, fsm)
    attr_table, attr_index = _build_attrs(name, attrs)
    command_index = _build_commands(name, commands)
    meths = dict(methods or {})
    unknown = sorted(set(meths) - METHODS)
    if unknown:
        raise GClassError(f"gclass {name}: unknown method(s) {unknown}; known: {sorted(METHODS)}")
    existing = _registry.get(name)
    if existing is not None:
        raise GClassError(f"gclass {name}: already registered")
    gclass = GClass(
        name=name,
        event_types=ev_types,
        states=state_names,
        fsm=fsm,
        attrs=attr_table,
        attr_index=attr_index,
        commands=list(commands),
        command_index=command_index,
        methods=meths,
        flags=flags,
        trace_levels=tuple(trace_levels),
        description=description,
    )
    _registry[name] = gclass
    return gclass


def gclass_unregister(name: str) -> None:
    """Forget a gclass (tests that build throwaway gclasses use this)."""
    _registry.pop(name, None)


def _check_name(name: str) -> None:
    if not name or any(ch in name for ch in "`^."):
        raise GClassError(f"gclass name {name!r} is empty or holds one of '`', '^', '.'")


def _build_event_types(gclass: str, event_types: Sequence[tuple[str, EVF]]) -> dict[str, EVF]:
    table: dict[str, EVF] = {}
    for event, flags in event_types:
        if event in table:
            raise GClassError(f"gclass {gclass}: event {event} declared twice")
        table[event] = EVF(flags)
    return table


def _build_fsm(
    gclass: str, states: Sequence[tuple[str, Sequence[Row]]], ev_types: dict[str, EVF]
) -> tuple[dict[str, dict[str, tuple[Action | None, str | None]]], list[str]]:
    if not states:
        raise GClassError(f"gclass {gclass}: the FSM needs at least one state")
    names = [state for state, _ in states]
    if len(set(names)) != len(names):
        raise GClassError(f"gclass {gclass}: a state is declared twice in {names}")
    fsm: dict[str, dict[str, tuple[Action | None, str | None]]] = {}
    for state, rows in states:
        table: dict[str, tuple[Action | None, str | None]] = {}
        for row in rows:
            if len(row) != 3:
                raise GClassError(
                    f"gclass {gclass}, state {state}: row {row!r} is not (event, action, next_state)"
                )
            event, action, next_state = row
            if event not in ev_types:
                raise GClassError(
                    f"gclass {gclass}, state {state}: event {event} is used but not declared"
                )
            if event in table:
                raise GClassError(f"gclass {gclass}, state {state}: event {event} appears twice")
            if next_state is not None and next_state not in names:
                raise GClassError(
                    f"gclass {gclass}, state {state}, event {event}: "
                    f"next state {next_state} does not exist"
                )
            if action is not None and not callable(action):
                raise GClassError(
                    f"gclass {gclass}, state {state}, event {event}: action is not callable"
                )
            table[event] = (action, next_state)
        fsm[state] = table
    return fsm, names


def _check_inputs_used(
    gclass: str, ev_types: dict[str, EVF], fsm: dict[str, dict[str, Any]]
) -> None:
    used = {event for table in fsm.values() for event in table}
    for event, flags in ev_types.items():
        if flags & (EVF.OUTPUT | EVF.SYSTEM):
            continue
        if event not in used:
            raise GClassError(
                f"gclass {gclass}: input event {event} is declared but no state accepts it"
            )


def _build_attrs(gclass: str, attrs: Sequence[SData]) -> tuple[dict[str, SData], dict[str, int]]:
    table: dict[str, SData] = {}
    index: dict[str, int] = {}
    for i, row in enumerate(attrs):
        if row.name in table:
            raise GClassError(f"gclass {gclass}: attr {row.name} declared twice")
        table[row.name] = row
        index[row.name] = i
    return table, index


def _build_commands(gclass: str, commands: Sequence[Cmd]) -> dict[str, Cmd]:
    index: dict[str, Cmd] = {}
    for cmd in commands:
        for key in (cmd.name, *cmd.aliases):
            low = key.lower()
            if low in index:
                raise GClassError(f"gclass {gclass}: command name or alias {key!r} is used twice")
            index[low] = cmd
    return index
