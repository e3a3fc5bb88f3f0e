"""tools/deploy-hook.sh, run by certbot itself and run directly.

Every path the hook uses (log dir, store, last-run file, web server config,
ycommand) is pointed into the test's temp dir. The real ycommand is being
written elsewhere in this project, so these tests use small stand-in scripts
in its place: one that records its argv, one that fails. What they prove is
the hook's side of the contract: the exact command line it sends and that a
failing step does not stop the others.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.acme import CertbotEnv, Pebble, certbot_env, clean_env, pebble  # noqa: F401

TOOLS = Path(__file__).resolve().parent.parent / "tools"
DEPLOY_HOOK = TOOLS / "deploy-hook.sh"
COPY_CERTS = TOOLS / "copy-certs.sh"
RELOAD_LINE = "command-yuno command=reload-certs service=__yuno__"
NO_SUCH_USER = "yuneta-py-test-no-such-user"


def stand_in(path: Path, body: str) -> Path:
    """Write an executable shell script; return its path."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def recorder(path: Path, record: Path, rc: int = 0) -> Path:
    """A stand-in that writes its argv, NUL-separated, to ``record``."""
    return stand_in(
        path, f"printf '%s\\0' \"$@\" > '{record}'\necho answered\nexit {rc}\n")


def read_argv(record: Path) -> list[str]:
    return record.read_bytes().decode().split("\0")[:-1]


@dataclass
class Hook:
    """The settings of one hook run, all under one temp dir."""

    root: Path

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.argv_record = self.root / "ycommand.argv"
        self.ycommand = recorder(self.root / "ycommand", self.argv_record)

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def last_run(self) -> Path:
        return self.root / "lib" / "last-deploy-hook-run"

    def env(self, from_lineage: bool = False, **overrides: str) -> dict[str, str]:
        """The hook's settings; ``from_lineage`` leaves the letsencrypt dir
        unset so that the hook derives it from RENEWED_LINEAGE."""
        env = {
            # An empty dir of the test's own unless derived: the production
            # default /etc/letsencrypt is not ours to read.
            "YUNETA_LETSENCRYPT_DIR": str(self.root / "letsencrypt"),
            "YUNETA_COPY_CERTS": str(COPY_CERTS),
            "YUNETA_CERTS_STORE": str(self.store),
            "YUNETA_LOG_DIR": str(self.log_dir),
            "YUNETA_LAST_RUN_FILE": str(self.last_run),
            "YUNETA_YCOMMAND": str(self.ycommand),
            # Never the host's /etc/yuneta/webserver: a test must not reload
            # a real nginx.
            "YUNETA_WEBSERVER_FILE": str(self.root / "webserver"),
            "YUNETA_BIN_DIR": str(self.root / "bin"),
            "YUNETA_USER": NO_SUCH_USER,
        }
        if from_lineage:
            del env["YUNETA_LETSENCRYPT_DIR"]
        env.update(overrides)
        return env

    def run(self, lineage: Path | None = None, **overrides: str,
            ) -> subprocess.CompletedProcess[str]:
        """Run the hook as certbot would, without certbot."""
        extra = self.env(**overrides)
        if lineage is not None:
            extra |= {"RENEWED_LINEAGE": str(lineage), "RENEWED_DOMAINS": lineage.name}
        return subprocess.run([str(DEPLOY_HOOK)], env=clean_env(extra),
                              capture_output=True, text=True, timeout=60)

    def records(self) -> list[dict[str, Any]]:
        text = (self.log_dir / "deploy-hook.log").read_text()
        return [json.loads(line) for line in text.splitlines()]

    def steps(self) -> dict[str, tuple[str, int]]:
        """step -> (msgid, rc) of the last run's step lines."""
        return {r["step"]: (r["msgid"], r["rc"]) for r in self.records()
                if r["step"] != "summary"}


@pytest.fixture
def hook(tmp_path: Path) -> Hook:
    return Hook(tmp_path / "hook")


def assert_recent_stamp(path: Path, since: int) -> None:
    text = path.read_text()
    assert text.strip().isdigit(), text
    assert since <= int(text) <= int(time.time()) + 1


def test_certbot_renew_runs_the_whole_hook(
        certbot_env: CertbotEnv, hook: Hook) -> None:  # noqa: F811
    """certbot's own --deploy-hook: copy, reload broadcast, timestamp, logs.

    YUNETA_LETSENCRYPT_DIR is left unset: the hook finds certbot's config dir
    from RENEWED_LINEAGE. The ycommand here is a stand-in that records argv.
    """
    name = "hook.yuneta.test"
    certbot_env.issue(name)
    since = int(time.time())

    certbot_env.renew(deploy_hook=DEPLOY_HOOK, env=hook.env(from_lineage=True))

    live = certbot_env.live_dir / name
    crt = hook.store / f"{name}.crt"
    assert crt.read_bytes() == (live / "fullchain.pem").read_bytes()
    key = hook.store / "private" / f"{name}.key"
    assert key.read_bytes() == (live / "privkey.pem").read_bytes()
    assert_recent_stamp(hook.last_run, since)
    assert [r["msgid"] for r in hook.records()] == [
        "deploy-hook.start", "deploy-hook.ok", "deploy-hook.skipped",
        "deploy-hook.ok", "deploy-hook.ok", "deploy-hook.done"]
    assert hook.steps() == {
        "copy-certs": ("deploy-hook.ok", 0),
        "webserver": ("deploy-hook.skipped", 0),
        "ycommand": ("deploy-hook.ok", 0),
        "last-run": ("deploy-hook.ok", 0),
    }
    assert all(r["lineage"] == str(live) for r in hook.records())
    copy_log = (hook.log_dir / "copy-certs.log").read_text().splitlines()
    assert json.loads(copy_log[-1])["msgid"] == "copy-certs.done"
    assert read_argv(hook.argv_record) == ["-c", RELOAD_LINE]


def test_failing_ycommand_still_copies_and_stamps(
        certbot_env: CertbotEnv, hook: Hook) -> None:  # noqa: F811
    """A ycommand that exits 1 fails its own step and no other.

    The ycommand is a stand-in script that exits 1: the real one is being
    written elsewhere in this project, and what is under test is the hook's
    independence of steps. certbot itself runs the hook.
    """
    name = "failing.yuneta.test"
    certbot_env.issue(name)
    failing = stand_in(hook.root / "ycommand-fails",
                       "echo 'agent unreachable' >&2\nexit 1\n")
    since = int(time.time())

    certbot_env.renew(deploy_hook=DEPLOY_HOOK,
                      env=hook.env(from_lineage=True, YUNETA_YCOMMAND=str(failing)))

    live = certbot_env.live_dir / name
    crt = hook.store / f"{name}.crt"
    assert crt.read_bytes() == (live / "fullchain.pem").read_bytes()
    assert_recent_stamp(hook.last_run, since)
    steps = hook.steps()
    assert steps["ycommand"] == ("deploy-hook.failed", 1)
    assert steps["copy-certs"] == ("deploy-hook.ok", 0)
    assert steps["last-run"] == ("deploy-hook.ok", 0)
    ycommand_line = next(r for r in hook.records() if r["step"] == "ycommand")
    assert ycommand_line["output"] == "agent unreachable"
    assert hook.records()[-1]["failed_steps"] == 1


def test_missing_copy_script_does_not_stop_the_other_steps(
        hook: Hook, tmp_path: Path) -> None:
    since = int(time.time())
    proc = hook.run(YUNETA_COPY_CERTS=str(tmp_path / "no-such-copy-certs.sh"))

    assert proc.returncode == 1
    steps = hook.steps()
    assert steps["copy-certs"] == ("deploy-hook.failed", 127)
    assert steps["ycommand"] == ("deploy-hook.ok", 0)
    assert steps["last-run"] == ("deploy-hook.ok", 0)
    assert read_argv(hook.argv_record) == ["-c", RELOAD_LINE]
    assert_recent_stamp(hook.last_run, since)


def test_missing_ycommand_is_a_failed_step(hook: Hook, tmp_path: Path) -> None:
    proc = hook.run(YUNETA_YCOMMAND=str(tmp_path / "no-such-ycommand"))
    assert proc.returncode == 1
    assert hook.steps()["ycommand"] == ("deploy-hook.failed", 127)
    assert hook.steps()["last-run"] == ("deploy-hook.ok", 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_as_root_ycommand_runs_as_the_yuneta_user(hook: Hook) -> None:
    """As root, with YUNETA_USER naming an existing user (here nobody), the
    stand-in ycommand runs as that user, with that user's HOME."""
    # pytest's temp dirs are private to root; nobody needs a dir it can
    # enter to find the stand-in and write its record.
    shared = Path(tempfile.mkdtemp(prefix="yuneta-hook-"))
    try:
        shared.chmod(0o777)
        record = shared / "who"
        script = f"printf '%s %s %s' \"$(id -un)\" \"$HOME\" \"$2\" > '{record}'\n"
        who = stand_in(shared / "ycommand", script)
        home = pwd.getpwnam("nobody").pw_dir

        assert hook.run(YUNETA_YCOMMAND=str(who), YUNETA_USER="nobody").returncode == 0

        assert record.read_text() == f"nobody {home} {RELOAD_LINE}"
        assert hook.steps()["ycommand"] == ("deploy-hook.ok", 0)
    finally:
        shutil.rmtree(shared)


@pytest.mark.parametrize("server", ["nginx", "openresty"])
def test_configured_web_server_is_reloaded(hook: Hook, server: str) -> None:
    (hook.root / "bin").mkdir()
    record = hook.root / f"{server}.argv"
    recorder(hook.root / "bin" / server, record)
    (hook.root / "webserver").write_text(f"{server}\n")

    assert hook.run().returncode == 0
    assert hook.steps()["webserver"] == ("deploy-hook.ok", 0)
    assert read_argv(record) == ["-s", "reload"]


def test_web_server_reload_command_overrides_the_file(hook: Hook) -> None:
    record = hook.root / "reload.argv"
    recorder(hook.root / "reload", record)
    (hook.root / "webserver").write_text("nginx\n")

    command = f"{hook.root / 'reload'} now"
    assert hook.run(YUNETA_WEBSERVER_RELOAD_CMD=command).returncode == 0
    assert hook.steps()["webserver"] == ("deploy-hook.ok", 0)
    assert read_argv(record) == ["now"]


def test_unknown_web_server_is_a_failed_step(hook: Hook) -> None:
    (hook.root / "webserver").write_text("apache\n")
    assert hook.run().returncode == 1
    assert hook.steps()["webserver"] == ("deploy-hook.failed", 2)
    assert hook.steps()["ycommand"] == ("deploy-hook.ok", 0)


def test_last_run_file_is_replaced_whole(hook: Hook) -> None:
    hook.last_run.parent.mkdir(parents=True)
    hook.last_run.write_text("12\n")
    since = int(time.time())

    assert hook.run().returncode == 0

    assert_recent_stamp(hook.last_run, since)
    assert [p.name for p in hook.last_run.parent.iterdir()] == [hook.last_run.name]


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed")
@pytest.mark.parametrize("script", ["deploy-hook.sh", "install-system-deps.sh"])
def test_hook_scripts_are_shellcheck_clean(script: str) -> None:
    proc = subprocess.run(["shellcheck", str(TOOLS / script)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
