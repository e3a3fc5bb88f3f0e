"""Yuneta-Py kernel: gclasses, the gobj tree, FSM dispatch, attrs, persistence,
commands, stats, publish/subscribe, walks, config, logging and the yuno loop.

The kernel imports no gclass; gclasses import the kernel.
"""

from gobj.attrs import DTP, SDATA, SDATAPM, SDF, AttrError, SData
from gobj.command import (CommandError, build_command_response, gobj_command, gobj_stats,
                          split_command_line)
from gobj.gclass import EV_STATE_CHANGED, EVF, GCF, Cmd, GClass, GClassError, gclass_create, \
    gclass_find
from gobj.log import log_critical, log_debug, log_error, log_info, log_warning
from gobj.runtime import (WALK_BOTTOM2TOP, WALK_BYLEVEL, WALK_TOP2BOTTOM, ConfigError, GObj,
                          GObjError, drain_posted, gobj_change_state, gobj_create,
                          gobj_create_default_service, gobj_create_pure_child,
                          gobj_create_service, gobj_create_tree, gobj_create_volatil,
                          gobj_create_yuno, gobj_destroy, gobj_end, gobj_find_child,
                          gobj_find_gobj, gobj_find_service, gobj_iter_descendants, gobj_pause,
                          gobj_play, gobj_post_event, gobj_publish_event, gobj_read_attr,
                          gobj_read_attrs, gobj_send_event, gobj_start, gobj_start_children,
                          gobj_start_tree, gobj_stop, gobj_stop_children, gobj_stop_tree,
                          gobj_subscribe_event, gobj_subscribe_owner, gobj_unsubscribe_event,
                          gobj_walk_gobj_children_tree, gobj_write_attr, gobj_yuno, kernel)

__all__ = [
    "DTP", "SDATA", "SDATAPM", "SDF", "AttrError", "SData",
    "CommandError", "build_command_response", "gobj_command", "gobj_stats", "split_command_line",
    "EV_STATE_CHANGED", "EVF", "GCF", "Cmd", "GClass", "GClassError", "gclass_create",
    "gclass_find",
    "log_critical", "log_debug", "log_error", "log_info", "log_warning",
    "WALK_BOTTOM2TOP", "WALK_BYLEVEL", "WALK_TOP2BOTTOM", "ConfigError", "GObj", "GObjError",
    "drain_posted", "gobj_change_state", "gobj_create", "gobj_create_default_service",
    "gobj_create_pure_child", "gobj_create_service", "gobj_create_tree", "gobj_create_volatil",
    "gobj_create_yuno", "gobj_destroy", "gobj_end", "gobj_find_child", "gobj_find_gobj",
    "gobj_find_service", "gobj_iter_descendants", "gobj_pause", "gobj_play", "gobj_post_event",
    "gobj_publish_event", "gobj_read_attr", "gobj_read_attrs", "gobj_send_event", "gobj_start",
    "gobj_start_children", "gobj_start_tree", "gobj_stop", "gobj_stop_children",
    "gobj_stop_tree", "gobj_subscribe_event", "gobj_subscribe_owner", "gobj_unsubscribe_event",
    "gobj_walk_gobj_children_tree", "gobj_write_attr", "gobj_yuno", "kernel",
]
