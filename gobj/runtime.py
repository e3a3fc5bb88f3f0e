"""The gobj tree: creation, lifecycle, dispatch, publish/subscribe, walks, lookup.

Rules this module keeps (DESIGN §3):

* ``send_event`` looks the event up in the *current* state only; a row with a
  next state changes the state before its action runs, and a change publishes
  ``EV_STATE_CHANGED``.
* ``publish`` delivers to a snapshot of the subscriptions, so a subscriber may
  unsubscribe, or be destroyed, while the delivery is in progress.
* Walks take the list of children before visiting them, so a callback may
  destroy the node it was given (a destroyed node is not descended into).
* ``post_event`` defers to the next loop turn; it never uses a short timer.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from gobj.attrs import DTP, SDF, AttrError, coerce
from gobj.gclass import EV_STATE_CHANGED, EVF, GCF, SYSTEM_EVENTS, GClass, gclass_find
from gobj.log import log_debug, log_error, log_warning

__all__ = [
    "GObj",
    "GObjError",
    "ConfigError",
    "gobj_create",
    "gobj_create_yuno",
    "gobj_create_service",
    "gobj_create_default_service",
    "gobj_create_pure_child",
    "gobj_create_volatil",
    "gobj_create_tree",
    "gobj_destroy",
    "gobj_start",
    "gobj_stop",
    "gobj_play",
    "gobj_pause",
    "gobj_start_tree",
    "gobj_stop_tree",
    "gobj_start_children",
    "gobj_stop_children",
    "gobj_send_event",
    "gobj_post_event",
    "gobj_publish_event",
    "gobj_subscribe_event",
    "gobj_subscribe_owner",
    "gobj_unsubscribe_event",
    "gobj_change_state",
    "gobj_read_attr",
    "gobj_write_attr",
    "gobj_read_attrs",
    "gobj_find_service",
    "gobj_find_gobj",
    "gobj_find_child",
    "gobj_yuno",
    "gobj_walk_gobj_children_tree",
    "gobj_iter_descendants",
    "WALK_TOP2BOTTOM",
    "WALK_BOTTOM2TOP",
    "WALK_BYLEVEL",
    "kernel",
    "drain_posted",
    "gobj_end",
]

WALK_TOP2BOTTOM = "top2bottom"
WALK_BOTTOM2TOP = "bottom2top"
WALK_BYLEVEL = "bylevel"


class GObjError(RuntimeError):
    """Misuse of the tree API (a second yuno, a duplicate service name, ...)."""


class ConfigError(ValueError):
    """Bad configuration given to a gobj at creation: names the gobj, key and problem."""


class _Kernel:
    """Process-wide state: one yuno per process, its services, the posted-event queue."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.yuno: GObj | None = None
        self.default_service: GObj | None = None
        self.services: dict[str, GObj] = {}
        self.global_settings: dict[str, Any] = {}
        self.persist: Any = None  # gobj.persist.PersistStore, installed by the entry point
        self.posted: deque[tuple[GObj, str, dict[str, Any], GObj | None]] = deque()
        self.drain_scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.shutting_down = False
        self.last_write_error = ""


kernel = _Kernel()


class Subscription:
    __slots__ = ("publisher", "event", "subscriber", "filter", "rename", "global_kw", "local",
                 "hard", "own_event", "active")

    def __init__(self, publisher: GObj, event: str | None, subscriber: GObj) -> None:
        self.publisher = publisher
        self.event = event
        self.subscriber = subscriber
        self.filter: dict[str, Any] | None = None
        self.rename: str | None = None
        self.global_kw: dict[str, Any] | None = None
        self.local: list[str] | None = None
        self.hard = False
        self.own_event = False
        self.active = True


class GObj:
    """One node of the tree. Attr values live in a list indexed by the gclass's
    attr table (``gclass.attr_index``) so that a gobj costs little memory."""

    __slots__ = (
        "name", "gclass", "parent", "children", "state", "last_state", "_fsm_state",
        "_av", "is_service", "is_yuno", "is_default_service", "pure_child", "volatil",
        "autostart", "autoplay", "running", "playing", "disabled", "created",
        "destroying", "destroyed", "priority", "priv", "subscriptions", "subscribings",
        "stats", "bottom", "user_data", "_full_name", "__weakref__",
    )

    def __init__(self, name: str, gclass: GClass) -> None:
        self.name = name
        self.gclass = gclass
        self.parent: GObj | None = None
        self.children: list[GObj] = []
        self.state = gclass.states[0]
        self.last_state = ""
        self._fsm_state = gclass.fsm[self.state]
        av = list(gclass.defaults)
        for i in gclass.container_slots:
            av[i] = copy.deepcopy(av[i])
        self._av: list[Any] = av
        self.is_service = self.is_yuno = self.is_default_service = False
        self.pure_child = self.volatil = self.autostart = self.autoplay = False
        self.running = self.playing = self.disabled = False
        self.created = self.destroying = self.destroyed = False
        self.priority = 5
        self.priv: Any = None
        self.subscriptions: list[Subscription] | None = None  # as publisher
        self.subscribings: list[Subscription] | None = None  # as subscriber
        self.stats: dict[str, Any] | None = None
        self.bottom: GObj | None = None
        self.user_data: dict[str, Any] | None = None
        self._full_name: str | None = None

    # Names -----------------------------------------------------------------
    @property
    def short_name(self) -> str:
        return f"{self.gclass.name}^{self.name}"

    @property
    def full_name(self) -> str:
        if self._full_name is None:
            parts = []
            node: GObj | None = self
            while node is not None:
                parts.append(node.short_name)
                node = node.parent
            self._full_name = "`".join(reversed(parts))
        return self._full_name

    def __repr__(self) -> str:
        return f"<GObj {self.full_name} {self.state}>"

    # Attr sugar --------------------------------------------------------------
    def read(self, name: str) -> Any:
        return gobj_read_attr(self, name)

    def write(self, name: str, value: Any) -> int:
        return gobj_write_attr(self, name, value)


def gobj_yuno() -> GObj | None:
    return kernel.yuno


# ---------------------------------------------------------------------------
# Creation
# ---------------------------------------------------------------------------
def _resolve_gclass(gclass: str | GClass) -> GClass:
    if isinstance(gclass, GClass):
        return gclass
    found = gclass_find(gclass)
    if found is None:
        raise ConfigError(f"gclass {gclass!r} is not registered")
    return found


def gobj_create(
    name: str,
    gclass: str | GClass,
    kw: dict[str, Any] | None,
    parent: GObj | None,
    *,
    service: bool = False,
    default_service: bool = False,
    yuno: bool = False,
    pure_child: bool = False,
    volatil: bool = False,
    autostart: bool = False,
    autoplay: bool = False,
    priority: int = 5,
) -> GObj:
    """Create a gobj: defaults, config (global slice then kw), persistent attrs
    (services only), ``mt_create``, then the parent's ``mt_child_added``.

    Raises ConfigError (nothing is left in the tree) when an attr of kw cannot be
    coerced to its type, and GObjError on tree misuse.
    """
    gc = _resolve_gclass(gclass)
    if default_service:
        service = True
    if yuno:
        service = True
        if kernel.yuno is not None:
            raise GObjError(f"a yuno already exists: {kernel.yuno.full_name}")
        if parent is not None:
            raise GObjError("the yuno has no parent")
    elif parent is None:
        raise GObjError(f"gobj {gc.name}^{name} needs a parent")
    if len(name) > 255 or any(ch in name for ch in "`^"):
        raise GObjError(f"gobj name {name!r} is longer than 255 or holds '`' or '^'")
    key = name.lower()
    if service and not yuno and key in kernel.services:
        raise GObjError(f"service {name!r} already exists: {kernel.services[key].full_name}")
    if default_service and kernel.default_service is not None:
        raise GObjError(f"a default service already exists: {kernel.default_service.full_name}")

    gobj = GObj(name, gc)
    gobj.is_service, gobj.is_yuno, gobj.is_default_service = service, yuno, default_service
    gobj.pure_child, gobj.volatil = pure_child, volatil
    gobj.autostart, gobj.autoplay = autostart, autoplay
    gobj.priority = priority if 0 <= priority <= 9 else 5
    if yuno:
        kernel.yuno = gobj  # found as __yuno__/__root__, not by its name
    elif service:
        kernel.services[key] = gobj
    if default_service:
        kernel.default_service = gobj
    if parent is not None:
        gobj.parent = parent
        parent.children.append(gobj)
    gobj.created = True

    try:
        _write_config(gobj, kw or {})
    except ConfigError:
        _unlink(gobj)
        raise
    if service and kernel.persist is not None:
        kernel.persist.load(gobj)
    mt = gc.methods.get("mt_create")
    if mt is not None:
        mt(gobj)
    if parent is not None:
        added = parent.gclass.methods.get("mt_child_added")
        if added is not None:
            added(parent, gobj)
    return gobj


def gobj_create_yuno(name: str, gclass: str | GClass, kw: dict[str, Any] | None) -> GObj:
    return gobj_create(name, gclass, kw, None, yuno=True)


def gobj_create_service(name: str, gclass: str | GClass, kw: dict[str, Any] | None,
                        parent: GObj) -> GObj:
    return gobj_create(name, gclass, kw, parent, service=True)


def gobj_create_default_service(name: str, gclass: str | GClass, kw: dict[str, Any] | None,
                                parent: GObj) -> GObj:
    return gobj_create(name, gclass, kw, parent, default_service=True, autostart=True)


def gobj_create_pure_child(name: str, gclass: str | GClass, kw: dict[str, Any] | None,
                           parent: GObj) -> GObj:
    return gobj_create(name, gclass, kw, parent, pure_child=True)


def gobj_create_volatil(name: str, gclass: str | GClass, kw: dict[str, Any] | None,
                        parent: GObj) -> GObj:
    return gobj_create(name, gclass, kw, parent, volatil=True)


def _global_slice(gobj: GObj) -> dict[str, Any]:
    """Keys ``GClass.attr`` (exact case) or ``name.attr`` (any case) of the global config."""
    out: dict[str, Any] = {}
    if not kernel.global_settings:
        return out
    gname = gobj.name.lower()
    for key, value in kernel.global_settings.items():
        head, dot, attr = key.rpartition(".")
        if not dot:
            continue
        if head == gobj.gclass.name or head.lower() == gname:
            if attr == "kw" and isinstance(value, dict):
                out.update(value)
            else:
                out[attr] = value
    return out


def _write_config(gobj: GObj, kw: dict[str, Any]) -> None:
    merged = _global_slice(gobj) if gobj.is_service else {}
    merged.update(kw)
    errors: list[str] = []
    for key, value in merged.items():
        if key == "__user_data__":
            gobj.user_data = dict(value) if isinstance(value, dict) else {"value": value}
            continue
        if key not in gobj.gclass.attr_index:
            if not gobj.gclass.flags & GCF.IGNORE_UNKNOWN_ATTRS:
                log_warning(gobj, "gobj.config.unknown_attr", "unknown attr in config ignored",
                            attr=key)
            continue
        if _set_attr(gobj, key, value, log=False) < 0:
            row = gobj.gclass.attrs[key]
            errors.append(f"{key}: expected {row.type.value}, got {value!r}")
    if errors:
        raise ConfigError(f"{gobj.short_name}: bad config value(s): " + "; ".join(errors))


def gobj_create_tree(parent: GObj, node: dict[str, Any]) -> GObj:
    """Create a gobj and its ``children`` from a config node.

    Node keys: gclass (required), name, default_service, as_service|service,
    autostart, autoplay, disabled, pure_child, priority, kw, children.
    Raises ConfigError naming the node when it is malformed.
    """
    if not isinstance(node, dict):
        raise ConfigError(f"a tree node must be an object, got {type(node).__name__}")
    gclass = node.get("gclass")
    if not isinstance(gclass, str) or not gclass:
        raise ConfigError(f"tree node {node.get('name', '?')!r}: 'gclass' is required")
    if gclass_find(gclass) is None:
        raise ConfigError(f"tree node {node.get('name', '?')!r}: gclass {gclass!r} is not registered")
    kw = node.get("kw") or {}
    if not isinstance(kw, dict):
        raise ConfigError(f"tree node {node.get('name', '?')!r}: 'kw' must be an object")
    children = node.get("children") or []
    if not isinstance(children, list):
        raise ConfigError(f"tree node {node.get('name', '?')!r}: 'children' must be a list")
    default = bool(node.get("default_service"))
    service = bool(node.get("as_service") or node.get("service")) or default
    gobj = gobj_create(
        str(node.get("name") or ""), gclass, kw, parent,
        service=service, default_service=default,
        pure_child=bool(node.get("pure_child")),
        autostart=bool(node.get("autostart", default)),
        autoplay=bool(node.get("autoplay")),
        priority=int(node.get("priority", 5)),
    )
    if kernel.yuno is not None and parent is kernel.yuno and service:
        gobj.autostart = bool(node.get("autostart", True))
    for child in children:
        gobj_create_tree(gobj, child)
    if len(gobj.children) == 1:
        gobj.bottom = gobj.children[0]
    if node.get("disabled"):
        gobj_disable(gobj)
    return gobj


# ---------------------------------------------------------------------------
# Destruction
# ---------------------------------------------------------------------------
def _unlink(gobj: GObj) -> None:
    if gobj.is_service:
        kernel.services.pop(gobj.name.lower(), None)
    if gobj is kernel.default_service:
        kernel.default_service = None
    if gobj is kernel.yuno:
        kernel.yuno = None
    parent = gobj.parent
    if parent is not None:
        try:
            parent.children.remove(gobj)
        except ValueError:
            pass
        if parent.bottom is gobj:
            parent.bottom = None


def gobj_destroy(gobj: GObj) -> None:
    """Pause and stop it if needed, drop its subscriptions both ways, destroy its
    children, run ``mt_destroy``, and unlink it. Idempotent."""
    if gobj.destroying or gobj.destroyed:
        return
    if gobj.playing:
        gobj_pause(gobj)
    if gobj.running:
        gobj_stop(gobj)
    gobj.destroying = True
    parent = gobj.parent
    if parent is not None and not parent.destroying:
        removed = parent.gclass.methods.get("mt_child_removed")
        if removed is not None:
            removed(parent, gobj)
    for sub in list(gobj.subscriptions or ()):
        _drop_subscription(sub)
    for sub in list(gobj.subscribings or ()):
        _drop_subscription(sub)
    for child in list(gobj.children):
        gobj_destroy(child)
    mt = gobj.gclass.methods.get("mt_destroy")
    if mt is not None:
        mt(gobj)
    _unlink(gobj)
    gobj.destroyed = True


def gobj_end() -> None:
    """Destroy the yuno and forget the process-wide state (end of process, tests)."""
    kernel.shutting_down = True
    if kernel.yuno is not None:
        gobj_destroy(kernel.yuno)
    kernel.reset()


# ---------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------
def _missing_required(gobj: GObj) -> list[str]:
    missing = []
    for i, row in enumerate(gobj.gclass.attrs.values()):
        if row.flag & SDF.REQUIRED:
            value = gobj._av[i]
            if row.type in (DTP.STRING, DTP.LIST, DTP.DICT, DTP.JSON) and not value:
                missing.append(row.name)
            elif row.type is DTP.POINTER and value is None:
                missing.append(row.name)
    return missing


def gobj_start(gobj: GObj) -> int:
    if gobj.running:
        log_warning(gobj, "gobj.start.already_running", "gobj already running")
        return -1
    if gobj.disabled or gobj.destroying:
        return -1
    missing = _missing_required(gobj)
    if missing:
        log_error(gobj, "gobj.start.required_missing",
                  "cannot start without all required attrs", missing=missing)
        return -1
    gobj.running = True
    mt = gobj.gclass.methods.get("mt_start")
    if mt is not None:
        ret = mt(gobj)
        if ret is not None and ret < 0:
            gobj.running = False
            return ret
    return 0


def gobj_stop(gobj: GObj) -> int:
    if not gobj.running:
        if not kernel.shutting_down:
            log_debug(gobj, "gobj.stop.not_running", "gobj not running")
        return -1
    if gobj.playing:
        gobj_pause(gobj)
    gobj.running = False
    mt = gobj.gclass.methods.get("mt_stop")
    if mt is not None:
        mt(gobj)
    return 0


def gobj_play(gobj: GObj) -> int:
    if gobj.destroying or gobj.disabled:
        return -1
    if gobj.playing:
        return 0
    if not gobj.running:
        if gobj.gclass.flags & GCF.REQUIRED_START_TO_PLAY:
            log_error(gobj, "gobj.play.not_running", "cannot play a gobj that is not running")
            return -1
        if gobj_start(gobj) < 0:
            return -1
    gobj.playing = True
    mt = gobj.gclass.methods.get("mt_play")
    if mt is not None:
        ret = mt(gobj)
        if ret is not None and ret < 0:
            gobj.playing = False
            return ret
    return 0


def gobj_pause(gobj: GObj) -> int:
    if not gobj.playing:
        return -1
    gobj.playing = False
    mt = gobj.gclass.methods.get("mt_pause")
    if mt is not None:
        mt(gobj)
    return 0


def _manual_start(gobj: GObj) -> bool:
    return bool(gobj.gclass.flags & GCF.MANUAL_START)


def gobj_start_tree(gobj: GObj) -> int:
    """Start gobj then its descendants top-down; a skipped node's subtree is skipped."""
    if gobj.disabled or _manual_start(gobj):
        return 0
    if not gobj.running and gobj_start(gobj) < 0:
        return -1  # a gobj that cannot start does not start its children either

    def cb(child: GObj) -> int:
        if child.disabled or _manual_start(child):
            return 1
        if not child.running and gobj_start(child) < 0:
            return 1
        return 0

    return gobj_walk_gobj_children_tree(gobj, WALK_TOP2BOTTOM, cb)


def gobj_stop_tree(gobj: GObj) -> int:
    if gobj.running:
        gobj_stop(gobj)

    def cb(child: GObj) -> int:
        if child.running:
            gobj_stop(child)
        return 0

    return gobj_walk_gobj_children_tree(gobj, WALK_TOP2BOTTOM, cb)


def gobj_start_children(gobj: GObj) -> None:
    for child in list(gobj.children):
        if not child.running and not child.disabled and not _manual_start(child):
            gobj_start(child)


def gobj_stop_children(gobj: GObj) -> None:
    for child in list(gobj.children):
        if child.running:
            gobj_stop(child)


def gobj_disable(gobj: GObj) -> int:
    gobj.disabled = True
    mt = gobj.gclass.methods.get("mt_disable")
    if mt is not None:
        return int(mt(gobj) or 0)
    return gobj_stop_tree(gobj)


def gobj_enable(gobj: GObj) -> int:
    gobj.disabled = False
    mt = gobj.gclass.methods.get("mt_enable")
    if mt is not None:
        return int(mt(gobj) or 0)
    return gobj_start_tree(gobj)


# ---------------------------------------------------------------------------
# Attrs
# ---------------------------------------------------------------------------
def _set_attr(gobj: GObj, name: str, value: Any, *, log: bool = True) -> int:
    row = gobj.gclass.attrs[name]
    try:
        coerced = coerce(row.type, value, name)
    except AttrError as exc:
        if log:
            log_error(gobj, "gobj.attr.bad_value", "attr value rejected, old value kept",
                      attr=name, error=str(exc))
        return -1
    idx = gobj.gclass.attr_index[name]
    previous = gobj._av[idx]
    gobj._av[idx] = coerced
    if gobj.created and not gobj.destroyed:
        mt = gobj.gclass.methods.get("mt_writing")
        if mt is not None:
            veto = mt(gobj, name)
            if isinstance(veto, str):
                # mt_writing refused the value (a crypto that does not load, say):
                # the previous value stays, as if the write never happened.
                gobj._av[idx] = previous
                kernel.last_write_error = veto
                return -1
    return 0


def _attr_owner(gobj: GObj, name: str) -> GObj | None:
    node: GObj | None = gobj
    while node is not None:
        if name in node.gclass.attr_index:
            return node
        node = node.bottom
    return None


def gobj_read_attr(gobj: GObj, name: str, src: GObj | None = None) -> Any:
    """The attr's value, from gobj or down its bottom chain. Unknown: logged, None."""
    if name == "__state__":
        return gobj.state
    idx = gobj.gclass.attr_index.get(name)
    if idx is not None:
        mt = gobj.gclass.methods.get("mt_reading")
        if mt is not None:
            value = mt(gobj, name)
            if value is not None:
                return value
        return gobj._av[idx]
    owner = _attr_owner(gobj, name)
    if owner is None:
        log_error(gobj, "gobj.attr.not_found", "attr not found", attr=name)
        return None
    return gobj_read_attr(owner, name, src)


def gobj_write_attr(gobj: GObj, name: str, value: Any, src: GObj | None = None) -> int:
    """Coerce and write; -1 (logged, old value kept) when the value does not fit.
    ``mt_writing(name)`` runs after a successful write."""
    owner = _attr_owner(gobj, name)
    if owner is None:
        log_error(gobj, "gobj.attr.not_found", "attr not found", attr=name)
        return -1
    return _set_attr(owner, name, value)


def gobj_read_attrs(gobj: GObj, flags: SDF | int = -1) -> dict[str, Any]:
    """Own attrs whose flags intersect ``flags`` (-1: all), as a new dict."""
    out: dict[str, Any] = {}
    for i, row in enumerate(gobj.gclass.attrs.values()):
        if flags == -1 or row.flag & flags:
            value = gobj._av[i]
            if row.type is DTP.POINTER:
                value = None if value is None else repr(value)
            out[row.name] = copy.deepcopy(value) if isinstance(value, (list, dict)) else value
    return out


def gobj_reset_rstats(gobj: GObj) -> None:
    for i, row in enumerate(gobj.gclass.attrs.values()):
        if row.flag & SDF.RSTATS:
            gobj._av[i] = row.default_value()
    if gobj.stats:
        for key in gobj.stats:
            gobj.stats[key] = 0


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------
def gobj_send_event(dst: GObj | None, event: str, kw: dict[str, Any] | None = None,
                    src: GObj | None = None) -> int:
    """Run the action of ``event`` in dst's current state; -1 if it is not there.

    A row with a next state changes the state before the action runs.
    """
    if dst is None or dst.destroyed:
        log_error(src, "gobj.event.no_destination", "event sent to a destroyed or null gobj",
                  event=event, dst=getattr(dst, "full_name", None))
        return -1
    row = dst._fsm_state.get(event)
    if row is None:
        inject = dst.gclass.methods.get("mt_inject_event")
        if inject is not None:
            return int(inject(dst, event, kw or {}, src))
        log_error(dst, "gobj.event.not_defined", "event not defined in state",
                  event=event, src=src.full_name if src is not None else None)
        return -1
    action, next_state = row
    if dst.gclass.traced:
        log_debug(dst, "gobj.trace.event", "event", event=event,
                  src=src.full_name if src is not None else None)
    if next_state is not None and next_state != dst.state:
        gobj_change_state(dst, next_state)
    if action is None:
        return 0
    return action(dst, event, kw if kw is not None else {}, src)


def gobj_change_state(gobj: GObj, state: str) -> bool:
    """Move to ``state``; publish EV_STATE_CHANGED. False when already there."""
    if state == gobj.state:
        return False
    table = gobj.gclass.fsm.get(state)
    if table is None:
        log_error(gobj, "gobj.state.unknown", "state does not exist", new_state=state)
        return False
    previous = gobj.state
    gobj.last_state = previous
    gobj.state = state
    gobj._fsm_state = table
    if gobj.subscriptions:
        gobj_publish_event(gobj, EV_STATE_CHANGED,
                           {"previous_state": previous, "current_state": state})
    return True


def gobj_post_event(dst: GObj, event: str, kw: dict[str, Any] | None = None,
                    src: GObj | None = None) -> int:
    """Queue the event for the next loop turn (events posted while the queue is
    being delivered wait one more turn). -1 when dst does not declare it."""
    if not dst.gclass.has_event(event):
        log_error(dst, "gobj.event.post_undeclared", "posted event not declared by gclass",
                  event=event)
        return -1
    kernel.posted.append((dst, event, kw or {}, src))
    _schedule_drain()
    return 0


def _schedule_drain() -> None:
    if kernel.drain_scheduled:
        return
    loop = kernel.loop
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: drain_posted() is called by hand (tests, tools)
    kernel.drain_scheduled = True
    loop.call_soon(drain_posted)


def drain_posted() -> int:
    """Deliver the events queued so far; return how many were delivered."""
    kernel.drain_scheduled = False
    n = len(kernel.posted)
    done = 0
    for _ in range(n):
        dst, event, kw, src = kernel.posted.popleft()
        if dst.destroyed or dst.destroying:
            continue
        if src is not None and src.destroyed:
            src = None
        gobj_send_event(dst, event, kw, src)
        done += 1
    if kernel.posted:
        _schedule_drain()
    return done


# ---------------------------------------------------------------------------
# Publish / subscribe
# ---------------------------------------------------------------------------
_SUB_KEYS = {"__config__", "__global__", "__local__", "__filter__", "__service__"}


def gobj_subscribe_event(publisher: GObj, event: str | None, kw: dict[str, Any] | None,
                         subscriber: GObj) -> Subscription | None:
    """Subscribe to one output event of publisher (None or "" for all of them).

    kw may carry ``__config__`` (``__rename_event_name__``, ``__hard_subscription__``,
    ``__own_event__``), ``__filter__`` (kw keys that must match), ``__global__``
    (keys added to every delivery) and ``__local__`` (keys removed).
    """
    kw = kw or {}
    if event and not publisher.gclass.is_output(event):
        if not publisher.gclass.flags & GCF.NO_CHECK_OUTPUT_EVENTS:
            log_error(publisher, "gobj.subscribe.not_output", "event is not an output event",
                      event=event, subscriber=subscriber.full_name)
            return None
    for key in kw:
        if key not in _SUB_KEYS:
            log_warning(publisher, "gobj.subscribe.bad_key", "subscription key ignored", key=key)
    sub = Subscription(publisher, event or None, subscriber)
    config = kw.get("__config__") or {}
    sub.rename = config.get("__rename_event_name__")
    sub.hard = bool(config.get("__hard_subscription__"))
    sub.own_event = bool(config.get("__own_event__"))
    sub.filter = kw.get("__filter__")
    sub.global_kw = kw.get("__global__")
    local = kw.get("__local__")
    sub.local = list(local) if local else None
    # An identical subscription is replaced, not doubled.
    for old in list(publisher.subscriptions or ()):
        if old.subscriber is subscriber and old.event == sub.event and old.rename == sub.rename \
                and old.filter == sub.filter:
            _drop_subscription(old)
    if publisher.subscriptions is None:
        publisher.subscriptions = []
    if subscriber.subscribings is None:
        subscriber.subscribings = []
    publisher.subscriptions.append(sub)
    subscriber.subscribings.append(sub)
    mt = publisher.gclass.methods.get("mt_subscription_added")
    if mt is not None and mt(publisher, sub) < 0:
        _drop_subscription(sub)
        return None
    return sub


def gobj_subscribe_owner(gobj: GObj) -> GObj | None:
    """The child subscription model: the gobj named by the ``subscriber`` attr, or
    else the parent (unless it is the yuno), subscribes to all of gobj's output
    events. Returns the subscriber, or None when there is none."""
    subscriber = gobj.read("subscriber") if "subscriber" in gobj.gclass.attr_index else None
    if subscriber is None and gobj.parent is not None and not gobj.parent.is_yuno:
        subscriber = gobj.parent
    if subscriber is not None:
        gobj_subscribe_event(gobj, None, {}, subscriber)
    return subscriber


def _drop_subscription(sub: Subscription) -> None:
    if not sub.active:
        return
    sub.active = False
    if sub.publisher.subscriptions is not None and sub in sub.publisher.subscriptions:
        sub.publisher.subscriptions.remove(sub)
    if sub.subscriber.subscribings is not None and sub in sub.subscriber.subscribings:
        sub.subscriber.subscribings.remove(sub)
    mt = sub.publisher.gclass.methods.get("mt_subscription_deleted")
    if mt is not None:
        mt(sub.publisher, sub)


def gobj_unsubscribe_event(publisher: GObj, event: str | None, kw: dict[str, Any] | None,
                           subscriber: GObj) -> int:
    """Remove the subscriptions of subscriber to event (None: to all). -1 if none found."""
    found = 0
    for sub in list(publisher.subscriptions or ()):
        if sub.subscriber is subscriber and (event is None or sub.event == (event or None)):
            _drop_subscription(sub)
            found += 1
    return 0 if found else -1


def _matches(filter_: dict[str, Any], kw: dict[str, Any]) -> bool:
    for key, want in filter_.items():
        have = kw.get(key)
        if isinstance(want, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def gobj_publish_event(publisher: GObj, event: str, kw: dict[str, Any] | None = None) -> int:
    """Deliver an output event to its subscribers; return the sum of their answers."""
    kw = kw if kw is not None else {}
    flags = publisher.gclass.event_types.get(event) or SYSTEM_EVENTS.get(event)
    if flags is None or not flags & (EVF.OUTPUT | EVF.SYSTEM):
        if not publisher.gclass.flags & GCF.NO_CHECK_OUTPUT_EVENTS:
            log_error(publisher, "gobj.publish.not_output", "event is not an output event",
                      event=event)
            return -1
        flags = EVF.OUTPUT
    system = bool(flags & EVF.SYSTEM)
    total = 0
    delivered = 0
    for sub in list(publisher.subscriptions or ()):
        if not sub.active:
            continue
        subscriber = sub.subscriber
        if subscriber.destroying or subscriber.destroyed:
            continue
        if sub.event is not None and sub.event != event:
            continue
        if system and not subscriber.gclass.has_event(event):
            continue
        mt_filter = publisher.gclass.methods.get("mt_publication_filter")
        if mt_filter is not None:
            if not mt_filter(publisher, event, kw, subscriber):
                continue
        elif sub.filter and not _matches(sub.filter, kw):
            continue
        out = dict(kw)
        if sub.local:
            for key in sub.local:
                out.pop(key, None)
        if sub.global_kw:
            out.update(sub.global_kw)
        ret = gobj_send_event(subscriber, sub.rename or event, out, publisher)
        delivered += 1
        total += ret
        if ret < 0 and sub.own_event:
            break
        if publisher.destroyed:
            break
    if not delivered and not flags & EVF.NO_WARN_SUBS:
        log_warning(publisher, "gobj.publish.no_subscribers", "event published with no subscriber",
                    event=event)
    return total


# ---------------------------------------------------------------------------
# Walks and lookup
# ---------------------------------------------------------------------------
Walker = Callable[..., int]


def gobj_walk_gobj_children_tree(gobj: GObj, walk_type: str, cb: Walker, *args: Any) -> int:
    """Visit gobj's descendants (not gobj itself).

    TOP2BOTTOM: pre-order; cb < 0 aborts the walk, > 0 skips that branch.
    BOTTOM2TOP: post-order, last child first; cb < 0 aborts.
    BYLEVEL: breadth-first, first child first; cb < 0 aborts.
    The callback may destroy the node it is given. Returns 0, or the aborting value.
    """
    if walk_type == WALK_TOP2BOTTOM:
        return _walk_top(gobj, cb, args)
    if walk_type == WALK_BOTTOM2TOP:
        return _walk_bottom(gobj, cb, args)
    if walk_type == WALK_BYLEVEL:
        return _walk_level(gobj, cb, args)
    raise ValueError(f"unknown walk type {walk_type!r}")


def _walk_top(node: GObj, cb: Walker, args: tuple[Any, ...]) -> int:
    for child in list(node.children):
        if child.destroyed:
            continue
        ret = cb(child, *args)
        if ret < 0:
            return ret
        if ret == 0 and not child.destroyed:
            ret = _walk_top(child, cb, args)
            if ret < 0:
                return ret
    return 0


def _walk_bottom(node: GObj, cb: Walker, args: tuple[Any, ...]) -> int:
    for child in reversed(list(node.children)):
        if child.destroyed:
            continue
        ret = _walk_bottom(child, cb, args)
        if ret < 0:
            return ret
        if child.destroyed:
            continue
        ret = cb(child, *args)
        if ret < 0:
            return ret
    return 0


def _walk_level(node: GObj, cb: Walker, args: tuple[Any, ...]) -> int:
    queue = deque(node.children)
    while queue:
        child = queue.popleft()
        if child.destroyed:
            continue
        ret = cb(child, *args)
        if ret < 0:
            return ret
        if not child.destroyed:
            queue.extend(child.children)
    return 0


def gobj_iter_descendants(gobj: GObj) -> Iterator[GObj]:
    """Pre-order iteration over a snapshot (a convenience for read-only scans)."""
    stack = list(reversed(gobj.children))
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def gobj_find_service(name: str) -> GObj | None:
    low = name.lower()
    if low in ("__yuno__", "__root__"):
        return kernel.yuno
    if low == "__default_service__":
        return kernel.default_service
    return kernel.services.get(low)


def _match_segment(gobj: GObj, segment: str) -> bool:
    if "^" in segment:
        gclass, _, name = segment.partition("^")
        return gobj.gclass.name == gclass and gobj.name == name
    return gobj.name == segment


def gobj_find_gobj(path: str) -> GObj | None:
    """A service name, ``__yuno__``/``__default_service__``, or a backtick path from
    the yuno whose segments are ``name`` or ``GCLASS^name`` (the yuno's own
    segment may lead)."""
    if not path:
        return None
    found = gobj_find_service(path) if "`" not in path and "^" not in path else None
    if found is not None:
        return found
    yuno = kernel.yuno
    if yuno is None:
        return None
    segments = path.split("`")
    if segments and _match_segment(yuno, segments[0]):
        segments = segments[1:]
    node = yuno
    for segment in segments:
        nxt = next((c for c in node.children if _match_segment(c, segment)), None)
        if nxt is None:
            return None
        node = nxt
    return node if node is not yuno or not segments else node


def gobj_find_child(gobj: GObj, **filters: Any) -> GObj | None:
    """First child matching: __gclass_name__, __gobj_name__, __state__, or attr=value."""
    for child in gobj.children:
        if _child_matches(child, filters):
            return child
    return None


def _child_matches(child: GObj, filters: dict[str, Any]) -> bool:
    for key, want in filters.items():
        if key == "__gclass_name__":
            ok = child.gclass.name == want
        elif key == "__gobj_name__":
            ok = child.name == want
        elif key == "__state__":
            ok = child.state == want
        elif key == "__disabled__":
            ok = child.disabled == want
        else:
            ok = key in child.gclass.attr_index and gobj_read_attr(child, key) == want
        if not ok:
            return False
    return True
