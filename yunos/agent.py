"""The agent yuno: ``python -m yunos.agent [-f CONFIG]``.

On its embedded default it listens for control clients on ws://127.0.0.1:1991,
launches the echo yuno (configs/echo.json), and runs the cert-sync timer over
``<work_dir>/store/certs``.

The yunos registered at first start come from the variable ``__agent_yunos__``
(a list of ``{yuno_role, yuno_name, config, must_play}``). It is a variable and
not a plain ``yunos`` list because config files merge lists by appending: a
file that set ``yunos`` could add to the embedded echo yuno but never replace
it, while a variable is replaced whole by the last file that sets it.
"""

from __future__ import annotations

import os
import sys

from gobj.entry import yuno_main
from gclasses.c_agent import register_c_agent
from gclasses.c_echo import register_c_echo
from gclasses.c_ievent_cli import register_c_ievent_cli
from gclasses.c_tcp_s import register_c_tcp_s
from gclasses.c_udp_s import register_c_udp_s
from gclasses.c_yuno import register_c_yuno

ROLE = "yuneta_agent"
VERSION = "0.1.0"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_CONFIG = {
    "__json_config_variables__": {
        "__agent_url__": "ws://127.0.0.1:1991",
        "__store__": "(^^__work_dir__^^)/store/certs",
        "__agent_yunos__": [{"yuno_role": "echo", "yuno_name": "echo",
                             "config": os.path.join(HERE, "configs", "echo.json")}],
    },
    "environment": {"work_dir": "(^^__default_work_dir__^^)", "domain_dir": "realms/agent"},
    "yuno": {"yuno_role": ROLE, "yuno_name": "agent"},
    "services": [
        {"name": "__input_side__", "gclass": "C_IOGATE", "as_service": True, "priority": 0,
         "children": [{"name": "agent_server_port", "gclass": "C_TCP_S",
                       # Bounded: every client is a control client or a yuno.
                       "kw": {"url": "(^^__agent_url__^^)", "max_connections": 1024}}]},
        {"name": "agent", "gclass": "C_AGENT", "default_service": True, "priority": 1,
         "kw": {
             "yunos": "(^^__agent_yunos__^^)",
             "cert_sync_store_dir": "(^^__store__^^)",
             "cert_sync_copy_cmd": os.path.join(HERE, "tools", "copy-certs.sh")
             + " --letsencrypt-dir (^^__work_dir__^^)/letsencrypt"
             + " --store (^^__store__^^)",
             "deploy_hook_last_run_file": "(^^__work_dir__^^)/last-deploy-hook-run",
         }},
    ],
}


def register() -> None:
    register_c_yuno()
    register_c_tcp_s()
    register_c_udp_s()
    register_c_echo()
    register_c_ievent_cli()
    register_c_agent()


def main(argv: list[str] | None = None) -> int:
    return yuno_main(role=ROLE, version=VERSION, register=register,
                     default_config=DEFAULT_CONFIG, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
