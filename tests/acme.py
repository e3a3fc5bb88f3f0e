"""A throwaway ACME world on loopback: Pebble as the CA, certbot as the client.

Everything here stays on 127.0.0.1. Pebble listens there with a TLS certificate
minted per session; certbot talks only to that Pebble, its standalone HTTP-01
server binds 127.0.0.1, and Pebble runs with ``PEBBLE_VA_ALWAYS_VALID=1`` so its
validation authority never dials out. Pebble's ``-dnsserver`` is pointed at an
unused loopback port so that even a stray lookup cannot leave the machine, and
proxy variables are removed from both children's environments so that no HTTP
request is routed through another host.

Fixtures (import them into a test module to use them):

- ``pebble``: one Pebble per test session (:class:`Pebble`).
- ``certbot_env``: a certbot configuration of its own under ``tmp_path``
  (:class:`CertbotEnv`) with ``issue(name)``, ``renew(deploy_hook=...)`` and
  ``live_dir``.

Both skip with a reason naming the missing Debian package when ``pebble`` or
``certbot`` is not installed (``tools/install-system-deps.sh`` installs them).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = ["CertbotEnv", "Pebble", "certbot_env", "free_port", "pebble"]

# A certbot run against a local Pebble takes a few seconds; two minutes means
# something is stuck, and a stuck run must fail the test, not hang the suite.
CERTBOT_TIMEOUT = 120
# Pebble starts in well under a second here; the margin covers a loaded CI box.
PEBBLE_START_TIMEOUT = 20.0

# Variables that could send a child's traffic somewhere other than loopback,
# or change what the tools under test read as their settings.
_DROPPED_ENV_PREFIXES = ("YUNETA_", "PEBBLE_", "RENEWED_", "REQUESTS_CA", "CURL_CA")
_DROPPED_ENV_NAMES = {
    "http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
}


def _find_tool(name: str, package: str) -> str:
    """Return the path of a Debian-packaged tool, or skip the test."""
    path = shutil.which(name)
    if path is None and os.access(f"/usr/bin/{name}", os.X_OK):
        path = f"/usr/bin/{name}"
    if path is None:
        pytest.skip(
            f"{name} not found: install the Debian package {package!r} "
            "(tools/install-system-deps.sh does it when run as root)"
        )
    return path


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without proxies, CA overrides or Yuneta settings."""
    env = {
        k: v for k, v in os.environ.items()
        if k.lower() not in _DROPPED_ENV_NAMES
        and k not in _DROPPED_ENV_NAMES
        and not k.startswith(_DROPPED_ENV_PREFIXES)
    }
    if extra:
        env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    The port is released before it is returned, so another process could take
    it in between; on a test box that race is rare and shows as a bind error.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mint_directory_cert(workdir: Path) -> tuple[Path, Path, Path]:
    """Mint a CA and a 127.0.0.1 server certificate for Pebble's own HTTPS.

    Returns (ca_pem, cert_chain_pem, key_pem). The CA is what certbot trusts
    through REQUESTS_CA_BUNDLE; it has nothing to do with the CA Pebble uses to
    sign the certificates it issues (Pebble generates that one at start-up).
    """
    import trustme

    ca = trustme.CA(organization_name="yuneta-py test ACME directory")
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca_pem = workdir / "directory-ca.pem"
    cert_pem = workdir / "directory-cert.pem"
    key_pem = workdir / "directory-key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    leaf.private_key_pem.write_to_path(str(key_pem))
    cert_pem.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return ca_pem, cert_pem, key_pem


@dataclass
class Pebble:
    """A running Pebble bound to 127.0.0.1.

    ``directory_url`` is the ACME directory, ``ca_bundle`` the PEM that makes
    its HTTPS trusted, ``management_url`` its management interface (roots,
    intermediates), ``log`` the file its output goes to.
    """

    process: subprocess.Popen[bytes]
    port: int
    management_port: int
    ca_bundle: Path
    log: Path

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://127.0.0.1:{self.management_port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def fetch(self, url: str, timeout: float = 5.0) -> bytes:
        # An opener without ProxyHandler: the environment's proxies must not
        # see a request meant for loopback.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=self.ssl_context()),
        )
        with opener.open(url, timeout=timeout) as resp:
            return bytes(resp.read())

    def root_pem(self) -> bytes:
        """The root that signs the certificates this Pebble issues."""
        return self.fetch(f"{self.management_url}/roots/0")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no pebble log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_pebble(workdir: Path) -> Pebble:
    """Start Pebble on free loopback ports and wait until its directory answers.

    Raises RuntimeError (with Pebble's log tail) if it exits or does not answer
    within PEBBLE_START_TIMEOUT; the process is stopped in that case.
    """
    binary = _find_tool("pebble", "pebble")
    workdir.mkdir(parents=True, exist_ok=True)
    ca_pem, cert_pem, key_pem = _mint_directory_cert(workdir)
    port, mgmt = free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{mgmt}",
            "certificate": str(cert_pem),
            "privateKey": str(key_pem),
            # Never dialled (the VA always answers valid), but set to free
            # ports so that nothing depends on the well-known 5001/5002.
            "httpPort": free_port(),
            "tlsPort": free_port(),
            # Empty: issued certificates carry no OCSP URL, so certbot has no
            # responder to ask about them.
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    config_path = workdir / "pebble-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = clean_env({
        "PEBBLE_VA_ALWAYS_VALID": "1",
        "PEBBLE_VA_NOSLEEP": "1",
        # By default Pebble rejects 5% of good nonces to exercise client
        # retries; the tests want every run to take the same path.
        "PEBBLE_WFE_NONCEREJECT": "0",
    })
    log = workdir / "pebble.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-config", str(config_path),
             "-dnsserver", f"127.0.0.1:{free_port()}"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(workdir),
        )
    peb = Pebble(process, port, mgmt, ca_pem, log)
    try:
        _wait_for_directory(peb)
    except BaseException:
        peb.stop()
        raise
    return peb


def _wait_for_directory(peb: Pebble) -> None:
    deadline = time.monotonic() + PEBBLE_START_TIMEOUT
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if peb.process.poll() is not None:
            raise RuntimeError(
                f"pebble exited with status {peb.process.returncode} before "
                f"answering; its log ends with:\n{peb.log_tail()}"
            )
        try:
            directory = json.loads(peb.fetch(peb.directory_url, timeout=2.0))
            if "newOrder" in directory:
                return
        except (OSError, ValueError) as exc:
            last_error = exc
        time.sleep(0.1)
    raise RuntimeError(
        f"pebble did not answer {peb.directory_url} within "
        f"{PEBBLE_START_TIMEOUT}s (last error: {last_error}); its log ends "
        f"with:\n{peb.log_tail()}"
    )


@dataclass
class CertbotEnv:
    """One certbot configuration (config, work and logs dirs) under ``base``.

    ``issue`` and ``renew`` return the finished process and raise
    AssertionError with certbot's output when certbot fails, so a test reads
    as a sequence of steps. ``timings`` records (what, seconds) per run.
    """

    pebble: Pebble
    base: Path
    timings: list[tuple[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.certbot = _find_tool("certbot", "certbot")
        for d in (self.config_dir, self.work_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.cli_ini.write_text("# empty: keeps the host's certbot settings out\n")

    @property
    def config_dir(self) -> Path:
        """certbot's --config-dir: the letsencrypt dir (holds live/, archive/)."""
        return self.base / "letsencrypt"

    @property
    def live_dir(self) -> Path:
        return self.config_dir / "live"

    @property
    def work_dir(self) -> Path:
        return self.base / "certbot-work"

    @property
    def logs_dir(self) -> Path:
        return self.base / "certbot-logs"

    def lineage(self, name: str) -> Path:
        return self.live_dir / name

    @property
    def cli_ini(self) -> Path:
        return self.base / "cli.ini"

    def _common_args(self) -> list[str]:
        return [
            # Without -c, certbot also reads /etc/letsencrypt/cli.ini and the
            # user's ~/.config/letsencrypt/cli.ini; the tests use none of the
            # host's settings.
            "-c", str(self.cli_ini),
            "--config-dir", str(self.config_dir),
            "--work-dir", str(self.work_dir),
            "--logs-dir", str(self.logs_dir),
            "--non-interactive",
            # Standalone HTTP-01 on loopback. Pebble never connects to it (its
            # VA always answers valid), but certbot still binds it, so the
            # port is a fresh free one per run.
            "--standalone",
            "--http-01-address", "127.0.0.1",
            "--http-01-port", str(free_port()),
        ]

    def run(self, what: str, args: list[str], env: Mapping[str, str] | None = None,
            timeout: float = CERTBOT_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run certbot with ``args`` after the common ones; fail loudly."""
        full_env = clean_env({"REQUESTS_CA_BUNDLE": str(self.pebble.ca_bundle)})
        if env:
            full_env.update(env)
        t0 = time.monotonic()
        proc = subprocess.run(
            [self.certbot, *args, *self._common_args()],
            env=full_env, capture_output=True, text=True, timeout=timeout,
        )
        self.timings.append((what, time.monotonic() - t0))
        if proc.returncode != 0:
            raise AssertionError(
                f"certbot {what} failed with status {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def issue(self, name: str) -> Path:
        """Obtain a certificate for ``name``; return its live/ lineage dir."""
        self.run(f"issue {name}", [
            "certonly",
            "--server", self.pebble.directory_url,
            "--agree-tos", "--register-unsafely-without-email",
            "-d", name,
        ])
        return self.lineage(name)

    def renew(self, deploy_hook: str | os.PathLike[str] | None = None,
              env: Mapping[str, str] | None = None,
              ) -> subprocess.CompletedProcess[str]:
        """Force-renew every lineage, running ``deploy_hook`` after each one.

        ``deploy_hook`` is the path of an executable; certbot runs it through
        a shell, so it is quoted here. ``env`` is added to certbot's
        environment; certbot passes its whole environment on to the hook,
        which is how a test hands it settings.
        """
        args = ["renew", "--force-renewal", "--no-random-sleep-on-renew"]
        if deploy_hook is not None:
            args += ["--deploy-hook", shlex.quote(os.fspath(deploy_hook))]
        return self.run("renew", args, env=env)


# Each test module that imports the ``pebble`` fixture gets a fixture of its
# own in pytest's eyes, session scope notwithstanding. These two keep it to one
# Pebble per session: the first user starts it, the last one stops it.
_shared_pebble: Pebble | None = None
_shared_users = 0


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    global _shared_pebble, _shared_users
    if _shared_pebble is None or _shared_pebble.process.poll() is not None:
        _shared_pebble = start_pebble(tmp_path_factory.mktemp("pebble"))
    _shared_users += 1
    try:
        yield _shared_pebble
    finally:
        _shared_users -= 1
        if _shared_users == 0:
            _shared_pebble.stop()
            _shared_pebble = None


@pytest.fixture
def certbot_env(pebble: Pebble, tmp_path: Path) -> CertbotEnv:
    return CertbotEnv(pebble, tmp_path / "acme")
