"""tools/copy-certs.sh against certificates issued by a real certbot and Pebble.

The certificates come from a Pebble on 127.0.0.1 (see tests/acme.py); the
store is a temp dir. Each test reads the script's JSON log lines, so the
assertions name the same msgids an operator would grep for.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from tests.acme import CertbotEnv, Pebble, certbot_env, clean_env, pebble  # noqa: F401
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

TOOLS = Path(__file__).resolve().parent.parent / "tools"
COPY_CERTS = TOOLS / "copy-certs.sh"
# A user that does not exist: the script then never chowns, even as root, so
# the tests behave the same whether or not the host has a real yuneta user.
NO_SUCH_USER = "yuneta-py-test-no-such-user"
NAMES = ("a.yuneta.test", "b.yuneta.test")


@dataclass
class CopyRun:
    rc: int
    records: list[dict[str, Any]]
    stderr: str

    def msgids(self, name: str | None = None) -> list[str]:
        return [r["msgid"] for r in self.records
                if name is None or r.get("name") == name]

    def files(self, msgid: str) -> set[str]:
        return {r["file"] for r in self.records if r["msgid"] == msgid}


def run_copy(le_dir: Path, store: Path, *args: str,
             env: Mapping[str, str] | None = None,
             owner: str = NO_SUCH_USER) -> CopyRun:
    """Run copy-certs.sh with the dirs as options; parse its JSON lines."""
    proc = subprocess.run(
        [str(COPY_CERTS), "--letsencrypt-dir", str(le_dir),
         "--store", str(store), "--owner", owner, *args],
        env=clean_env(env), capture_output=True, text=True, timeout=60,
    )
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records and records[-1]["msgid"] == "copy-certs.done", proc.stdout
    return CopyRun(proc.returncode, records, proc.stderr)


def store_paths(store: Path, name: str) -> tuple[Path, Path, Path]:
    return (store / f"{name}.crt", store / f"{name}.chain",
            store / "private" / f"{name}.key")


def assert_mirrors(store: Path, live: Path, name: str) -> None:
    crt, chain, key = store_paths(store, name)
    assert crt.read_bytes() == (live / name / "fullchain.pem").read_bytes()
    assert chain.read_bytes() == (live / name / "chain.pem").read_bytes()
    assert key.read_bytes() == (live / name / "privkey.pem").read_bytes()


def key_matches_cert(crt: Path, key: Path) -> bool:
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    cert_pub = x509.load_pem_x509_certificate(crt.read_bytes()).public_key()
    key_pub = serialization.load_pem_private_key(key.read_bytes(), None).public_key()
    return cert_pub.public_bytes(*spki) == key_pub.public_bytes(*spki)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(store: Path) -> list[Path]:
    """Temp files a run left behind (the lock file is kept on purpose)."""
    return [p for p in store.rglob(".*") if p.name != ".copy-certs.lock"]


def clone_letsencrypt(src: Path, dst: Path) -> Path:
    """Copy a certbot config dir, keeping live/ as symlinks into archive/."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="module")
def issued(
        pebble: Pebble,  # noqa: F811
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertbotEnv]:
    """Two lineages issued once for the tests that only read live/."""
    env = CertbotEnv(pebble, tmp_path_factory.mktemp("issued"))
    for name in NAMES:
        env.issue(name)
    yield env


def test_first_copy_mirrors_live_with_private_modes(
        issued: CertbotEnv, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run = run_copy(issued.config_dir, store)

    assert run.rc == 0, run.records
    for name in NAMES:
        assert_mirrors(store, issued.live_dir, name)
        crt, chain, key = store_paths(store, name)
        assert (mode(crt), mode(chain), mode(key)) == (0o644, 0o644, 0o600)
        assert run.msgids(name) == ["copy-certs.updated"] * 3
    assert mode(store / "private") == 0o700
    assert run.records[-1]["ok"] == 2 and run.records[-1]["failed"] == 0
    assert leftovers(store) == []


def test_second_run_writes_nothing(issued: CertbotEnv, tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert run_copy(issued.config_dir, store).rc == 0
    files = [p for name in NAMES for p in store_paths(store, name)]
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}

    run = run_copy(issued.config_dir, store)

    assert run.rc == 0
    assert set(run.msgids()) == {"copy-certs.unchanged", "copy-certs.done"}
    assert run.files("copy-certs.unchanged") == {str(p) for p in files}
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files} == before


def test_unchanged_file_with_wrong_mode_is_chmodded_not_rewritten(
        issued: CertbotEnv, tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert run_copy(issued.config_dir, store).rc == 0
    key = store_paths(store, "a.yuneta.test")[2]
    key.chmod(0o644)
    mtime = key.stat().st_mtime_ns

    run = run_copy(issued.config_dir, store)

    assert run.rc == 0
    assert run.files("copy-certs.mode-fixed") == {str(key)}
    assert mode(key) == 0o600 and key.stat().st_mtime_ns == mtime
    assert "copy-certs.updated" not in run.msgids()


def test_settings_from_environment(issued: CertbotEnv, tmp_path: Path) -> None:
    store = tmp_path / "store"
    proc = subprocess.run(
        [str(COPY_CERTS)], capture_output=True, text=True, timeout=60,
        env=clean_env({
            "YUNETA_LETSENCRYPT_DIR": str(issued.config_dir),
            "YUNETA_CERTS_STORE": str(store),
            "YUNETA_USER": NO_SUCH_USER,
        }),
    )
    assert proc.returncode == 0, proc.stdout
    for name in NAMES:
        assert_mirrors(store, issued.live_dir, name)


def test_certs_list_selects_names_and_refuses_unsafe_ones(
        issued: CertbotEnv, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "certs.list").write_text(
        "# only the first lineage\n  a.yuneta.test  # trailing comment\n\n../escape\n")

    run = run_copy(issued.config_dir, store)

    assert run.rc == 1
    assert_mirrors(store, issued.live_dir, "a.yuneta.test")
    assert not (store / "b.yuneta.test.crt").exists()
    assert run.msgids("../escape") == ["copy-certs.invalid"]
    assert not (tmp_path / "escape.crt").exists()


def test_renewed_lineage_is_copied_and_pair_matches(
        certbot_env: CertbotEnv, tmp_path: Path) -> None:  # noqa: F811
    name = "renew.yuneta.test"
    certbot_env.issue(name)
    store = tmp_path / "store"
    assert run_copy(certbot_env.config_dir, store).rc == 0
    crt, chain, key = store_paths(store, name)
    old_crt, old_key = crt.read_bytes(), key.read_bytes()

    certbot_env.renew()
    run = run_copy(certbot_env.config_dir, store)

    assert run.rc == 0
    assert crt.read_bytes() != old_crt and key.read_bytes() != old_key
    assert_mirrors(store, certbot_env.live_dir, name)
    assert key_matches_cert(crt, key)
    # Key before certificate: whoever sees the new .crt also finds its key.
    updated = [r["file"] for r in run.records if r["msgid"] == "copy-certs.updated"]
    # The chain is rewritten only if Pebble's intermediate changed, which it
    # does not within one Pebble run; the order is what matters here.
    assert [f for f in updated if f != str(chain)] == [str(key), str(crt)]


def test_mismatched_pair_is_refused_and_store_keeps_old_pair(
        certbot_env: CertbotEnv, tmp_path: Path) -> None:  # noqa: F811
    name = "mismatch.yuneta.test"
    certbot_env.issue(name)
    store = tmp_path / "store"
    assert run_copy(certbot_env.config_dir, store).rc == 0
    crt, chain, key = store_paths(store, name)
    good = crt.read_bytes(), chain.read_bytes(), key.read_bytes()

    # A renewal whose key is then swapped for a stranger's: new certificate,
    # wrong key. Written through the live/ symlink, as certbot's files are.
    certbot_env.renew()
    stranger = ec.generate_private_key(ec.SECP256R1())
    (certbot_env.live_dir / name / "privkey.pem").write_bytes(stranger.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))

    run = run_copy(certbot_env.config_dir, store)

    assert run.rc == 1
    assert run.msgids(name) == ["copy-certs.mismatch"]
    assert (crt.read_bytes(), chain.read_bytes(), key.read_bytes()) == good
    assert key_matches_cert(crt, key)
    assert leftovers(store) == []


@pytest.mark.parametrize("how", ["dangling-symlink", "mode-000"])
def test_unreadable_name_is_skipped_and_others_copied(
        issued: CertbotEnv, tmp_path: Path, how: str) -> None:
    if how == "mode-000" and os.geteuid() == 0:
        pytest.skip("root reads a mode-000 file; the dangling-symlink case covers root")
    le = clone_letsencrypt(issued.config_dir, tmp_path / "letsencrypt")
    broken = le / "live" / "b.yuneta.test" / "privkey.pem"
    if how == "dangling-symlink":
        broken.resolve().unlink()
    else:
        broken.resolve().chmod(0)
    store = tmp_path / "store"

    run = run_copy(le, store)

    assert run.rc == 1
    assert_mirrors(store, le / "live", "a.yuneta.test")
    assert run.msgids("b.yuneta.test") == ["copy-certs.skipped"]
    assert not any(p.exists() for p in store_paths(store, "b.yuneta.test"))
    assert run.records[-1]["ok"] == 1 and run.records[-1]["failed"] == 1


def test_nothing_to_copy_is_success(tmp_path: Path) -> None:
    run = run_copy(tmp_path / "no-letsencrypt", tmp_path / "store")
    assert run.rc == 0
    assert run.msgids() == ["copy-certs.done"]
    assert run.records[-1]["names"] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_root_chowns_to_an_existing_owner(issued: CertbotEnv, tmp_path: Path) -> None:
    nobody = int(subprocess.check_output(["id", "-u", "nobody"]))

    # New files are chowned before they are renamed into place.
    store = tmp_path / "new"
    assert run_copy(issued.config_dir, store, owner="nobody").rc == 0
    paths = (*store_paths(store, "a.yuneta.test"), store / "private")
    assert {p.stat().st_uid for p in paths} == {nobody}

    # Unchanged files that belong to someone else are chowned, not rewritten.
    store = tmp_path / "fixed"
    assert run_copy(issued.config_dir, store).rc == 0
    run = run_copy(issued.config_dir, store, owner="nobody")
    paths = store_paths(store, "a.yuneta.test")
    assert run.files("copy-certs.owner-fixed") >= {str(p) for p in paths}
    assert {p.stat().st_uid for p in paths} == {nobody}
    assert "copy-certs.updated" not in run.msgids()


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed")
def test_copy_certs_is_shellcheck_clean() -> None:
    proc = subprocess.run(["shellcheck", str(COPY_CERTS)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
