"""The echo yuno: ``python -m yunos.echo [-f CONFIG]``."""

from __future__ import annotations

import sys

from gobj.entry import yuno_main
from gclasses.c_yuno import register_c_yuno

ROLE = "echo"
VERSION = "0.1.0"

DEFAULT_CONFIG = {
    "environment": {"work_dir": "(^^__default_work_dir__^^)", "domain_dir": "realms/echo"},
    "yuno": {"yuno_role": ROLE, "yuno_name": "echo"},
    "services": [],
}


def register() -> None:
    register_c_yuno()


def main(argv: list[str] | None = None) -> int:
    return yuno_main(role=ROLE, version=VERSION, register=register,
                     default_config=DEFAULT_CONFIG, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
