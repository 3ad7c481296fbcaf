"""The embedded server's file-system rules and its one-line errors, with no PostgreSQL run."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import embedded
from orchestrator.embedded import EmbeddedServer, first_blocked, make_dirs
from orchestrator.errors import EmbeddedServerError
from tests.support.database import private_dir

ROOT = os.geteuid() == 0
OUTSIDER = "nobody"  # owns nothing here and is in none of its groups


@pytest.fixture
def base() -> Iterator[Path]:
    """A scratch folder anyone may enter (mode 0711)."""
    with private_dir("unit") as path:
        path.chmod(0o711)
        yield path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_blocked_names_the_first_folder_a_user_cannot_enter(base: Path) -> None:
    (base / "open" / "closed" / "inner").mkdir(parents=True)
    (base / "open").chmod(0o755)
    (base / "open" / "closed").chmod(0o700)
    assert first_blocked(base / "open", OUTSIDER) is None
    assert first_blocked(base / "open" / "closed" / "inner", OUTSIDER) == base / "open" / "closed"
    assert first_blocked(base / "open" / "missing" / "deeper", OUTSIDER) is None
    (base / "open" / "tool").write_text("")
    (base / "open" / "tool").chmod(0o644)
    assert first_blocked(base / "open" / "tool", OUTSIDER) == base / "open" / "tool"


def test_make_dirs_opens_only_the_folders_it_creates(base: Path) -> None:
    (base / "mine").mkdir(mode=0o700)
    (base / "mine").chmod(0o700)
    old_umask = os.umask(0o077)
    try:
        make_dirs(base / "mine" / "a" / "b")
    finally:
        os.umask(old_umask)
    assert mode(base / "mine") == 0o700
    assert mode(base / "mine" / "a") == mode(base / "mine" / "a" / "b") == 0o755


def fake_bin(folder: Path, initdb: str) -> Path:
    """A bin directory whose ``initdb`` is the shell script ``initdb``."""
    folder.mkdir(mode=0o755)
    (folder / "initdb").write_text(f"#!/bin/sh\n{initdb}\n")
    (folder / "initdb").chmod(0o755)
    return folder


def test_a_failing_initdb_is_reported_in_one_line(base: Path) -> None:
    bin_dir = fake_bin(base / "bin", "echo 'initdb: first problem' >&2\n"
                                     "echo 'initdb: second problem' >&2\nexit 1")
    server = EmbeddedServer(base / "pgdata", bin_dir=bin_dir, state_dir=base / "state")
    with pytest.raises(EmbeddedServerError) as failure:
        server.start()
    message = str(failure.value)
    assert "\n" not in message
    assert "first problem / initdb: second problem" in message
    assert str(base / "pgdata") in message


def test_a_missing_binary_is_reported_in_one_line(base: Path) -> None:
    server = EmbeddedServer(base / "pgdata", bin_dir=base / "nowhere", state_dir=base / "state")
    with pytest.raises(EmbeddedServerError, match=r"cannot run .*nowhere/initdb") as failure:
        server.start()
    assert "\n" not in str(failure.value)


def test_a_cluster_the_server_user_cannot_reach_is_refused_in_one_line(base: Path) -> None:
    home = base / "home"
    (home / "pgdata").mkdir(parents=True)
    home.chmod(0o700)
    (home / "pgdata" / "PG_VERSION").write_text("18\n")
    if not ROOT:
        # A normal user's server runs as that user: its own folder is always in reach.
        server = EmbeddedServer(home / "pgdata", state_dir=base / "state")
        assert server.data_dir == home / "pgdata"
        return
    with pytest.raises(EmbeddedServerError) as failure:
        EmbeddedServer(home / "pgdata", state_dir=base / "state")
    message = str(failure.value)
    assert "\n" not in message
    assert f"cannot enter {home} (mode 0700)" in message
    assert mode(home) == 0o700


@pytest.mark.parametrize("kind", ["symlink", "group-writable"])
def test_a_state_dir_that_is_not_roots_alone_is_refused(base: Path, kind: str) -> None:
    state = base / "state"
    if kind == "symlink":
        (base / "elsewhere").mkdir(mode=0o755)
        state.symlink_to(base / "elsewhere")
    else:
        state.mkdir()
        state.chmod(0o775)
    with pytest.raises(EmbeddedServerError, match="must be a directory of root's"):
        embedded._owned_dir(state, OUTSIDER)
