"""Secrets before the first one arrives (issue 20): a credential comes from systemd's
credentials directory or a file only the service's user can read, is held as a `Secret`
that redacts itself everywhere, and a canary secret never reaches any file the system
writes or any line it prints: not an error message, a log, the journal, a recording, a
backup or a JSON dump."""

from __future__ import annotations

import os
import pickle
import pwd
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from sovereign.config import ConfigError, load
from sovereign.credentials import CredentialError, Secret, json_default
from sovereign.credentials import load as load_credential
from sovereign.state.store import StateStore

CANARY = "tg:123456:AAH-canary-Zq9x7Wv"


def test_a_secret_redacts_itself_everywhere_but_reveal(tmp_path: Path) -> None:
    s = Secret(CANARY)
    shown = [repr(s), str(s), f"{s}", f"{s!r}", f"{s:>40}", "%s" % s, repr([s]), repr({"k": s})]  # noqa: UP031
    assert all(CANARY not in x for x in shown) and s.reveal() == CANARY
    with pytest.raises(TypeError):
        pickle.dumps(s)
    assert orjson.dumps({"token": s}, default=json_default) == b'{"token":"***"}'
    with StateStore(tmp_path / "state") as st:  # the journal: what a log line with one keeps
        st.write(lambda t: t.journal("connected", token=s))
    assert CANARY.encode() not in (tmp_path / "state" / "data.mdb").read_bytes()


def test_credentials_come_from_the_credentials_directory_or_a_private_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "bot-token").write_text(CANARY + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_credential("bot-token").reveal() == CANARY
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    f = tmp_path / "token"
    f.write_text(CANARY)
    f.chmod(0o600)
    assert load_credential("bot-token", f).reveal() == CANARY
    bad: list[tuple[Path, str]] = []
    f.chmod(0o644)
    bad.append((f, "mode 644"))
    link = tmp_path / "link"
    link.symlink_to(creds / "bot-token")
    bad.append((link, "cannot open"))
    big = tmp_path / "big"
    big.write_text(CANARY * 500)
    big.chmod(0o600)
    bad.append((big, "larger than"))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    bad.append((empty, "empty"))
    for path, why in bad:
        with pytest.raises(CredentialError, match=why) as e:
            load_credential("bot-token", path)
        assert CANARY not in str(e.value)
    with pytest.raises(CredentialError, match="no file given"):
        load_credential("bot-token")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a file to another uid")
def test_a_credential_file_of_another_user_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text(CANARY)
    f.chmod(0o600)
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(f, nobody, -1)
    with pytest.raises(CredentialError, match=f"owned by uid {nobody}") as e:
        load_credential("t", f)
    assert CANARY not in str(e.value)


@pytest.mark.parametrize("toml", [f'[feed]\nkind = "{CANARY}"\n', f'[feed]\nsymbols = "{CANARY}"\n',
                                  f'[feed]\nstart = "{CANARY}"\n', f'[risk]\nmax_drawdown = "{CANARY}"\n',
                                  f'[feed]\nfiles = "{CANARY}"\n', f'[system]\ncores = ["{CANARY}"]\n',
                                  f'[symbols.EURUSD]\nquote_currency = "{CANARY}"\n', f'feed = "{CANARY}"\n',
                                  f'[broker]\naccount_currency = "{CANARY}"\n'])  # fmt: skip
def test_a_config_error_never_echoes_a_value_that_may_be_a_secret(tmp_path: Path, toml: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load(f)
    assert CANARY not in str(e.value) and CANARY[:8] not in str(e.value), str(e.value)
    r = subprocess.run([sys.executable, "-m", "sovereign.cli", "config", "check", str(f), "--json"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and CANARY not in r.stdout + r.stderr


def test_a_canary_in_the_environment_and_the_credentials_reaches_no_file_and_no_line(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mt5-password").write_text(CANARY)
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds), "SOVEREIGN_BROKER_PASSWORD": CANARY,
           "TELEGRAM_TOKEN": CANARY}  # fmt: skip
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp_path / "state"}"\n[feed]\nsymbols = 8\n')
    cli = [sys.executable, "-m", "sovereign.cli"]
    out = subprocess.run([*cli, "run", "--config", str(cfg), "--max-ticks", "300000"], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    printed = out.stdout + out.stderr
    for cmd in (["state", "backup", str(tmp_path / "backup")], ["journal", "--json"], ["orders", "--json"],
                ["config", "check", str(cfg), "--json"], ["state", "verify"]):  # fmt: skip
        args = [*cli, *cmd] if cmd[0] == "config" else [*cli, *cmd, "--config", str(cfg)]
        r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        printed += r.stdout + r.stderr
    assert CANARY not in printed
    written = [p for p in tmp_path.rglob("*") if p.is_file() and creds not in p.parents]
    assert any(p.name == "data.mdb" for p in written) and any(p.suffix == ".jsonl" for p in written)
    leaked = [p for p in written if CANARY.encode() in p.read_bytes()]
    assert leaked == []
