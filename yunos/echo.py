"""The echo yuno: a TLS echo service, ``python -m yunos.echo [-f CONFIG]``.

On its embedded default it serves TLS on 127.0.0.1:7443 and DTLS on
127.0.0.1:7444 (UDP) with a certificate
issued by a local CA that it creates, on first run only, under
``<work_dir>/store/certs`` (never overwriting files already there).
"""

from __future__ import annotations

import os
import sys

from gobj.entry import yuno_main
from gobj.ytls.devcerts import ensure_dev_certs
from gclasses.c_echo import register_c_echo
from gclasses.c_tcp_s import register_c_tcp_s
from gclasses.c_udp_s import register_c_udp_s
from gclasses.c_yuno import register_c_yuno

ROLE = "echo"
VERSION = "0.1.0"

DEFAULT_CONFIG = {
    "__json_config_variables__": {
        "__certs__": "(^^__default_work_dir__^^)/store/certs",
        "__echo_url__": "tcps://127.0.0.1:7443",
        "__echo_dtls_url__": "udps://127.0.0.1:7444",
    },
    "environment": {"work_dir": "(^^__default_work_dir__^^)", "domain_dir": "realms/echo"},
    "yuno": {"yuno_role": ROLE, "yuno_name": "echo"},
    "global": {
        "echo_tls.crypto": {
            "library": "openssl",
            "ssl_certificate": "(^^__certs__^^)/server.crt",
            "ssl_certificate_key": "(^^__certs__^^)/private/server.key",
        },
        "echo_dtls.crypto": {
            "library": "openssl",
            "ssl_certificate": "(^^__certs__^^)/server.crt",
            "ssl_certificate_key": "(^^__certs__^^)/private/server.key",
        },
    },
    "services": [
        {"name": "echo", "gclass": "C_ECHO", "default_service": True, "autostart": True,
         "children": [
             {"name": "echo_tls", "gclass": "C_TCP_S", "as_service": True,
              "kw": {"url": "(^^__echo_url__^^)"}},
             {"name": "echo_dtls", "gclass": "C_UDP_S", "as_service": True,
              "kw": {"url": "(^^__echo_dtls_url__^^)"}},
         ]},
    ],
}


def register() -> None:
    register_c_yuno()
    register_c_tcp_s()
    register_c_udp_s()
    register_c_echo()


def prepare(config: dict) -> None:
    """Create the local CA and server pair on first run, where the config expects them."""
    crypto = config.get("global", {}).get("echo_tls.crypto") or {}
    cert = str(crypto.get("ssl_certificate") or "")
    if cert.endswith(os.path.join("store", "certs", "server.crt")) and not os.path.exists(cert):
        directory = os.path.dirname(cert)
        if ensure_dev_certs(directory):
            print(f"echo: created a local CA and server certificate under {directory}",
                  file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return yuno_main(role=ROLE, version=VERSION, register=register,
                     default_config=DEFAULT_CONFIG, prepare=prepare, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
