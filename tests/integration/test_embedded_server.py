"""The embedded server behind folders its user cannot enter (a checkout or home of mode 0700).

As root the server runs as a system user; it must start from a copy of the binaries and a data
directory that user can reach, without opening any folder that was there before. As a normal
user nothing is copied or moved.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import psycopg

from orchestrator import embedded
from orchestrator.embedded import WHEEL_BIN, EmbeddedServer
from tests.support.database import private_dir

ROOT = os.geteuid() == 0


def closed_copy_of_the_wheel(folder: Path) -> Path:
    """The wheel's server (bin, lib, share and its vendored libraries, same layout) copied
    into ``folder``, made mode 0700; the copy's bin directory."""
    folder.mkdir()
    folder.chmod(0o700)
    package = WHEEL_BIN.parents[1]
    target = folder / package.name / "pginstall"
    for name in ("bin", "lib", "share"):
        shutil.copytree(WHEEL_BIN.parent / name, target / name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, folder / libs.name, symlinks=True)
    return target / "bin"


def folder_modes(*tops: Path) -> dict[Path, int]:
    """The mode of every folder under ``tops`` and of each one's parents."""
    found = {parent: parent.stat().st_mode for top in tops for parent in top.parents}
    for top in tops:
        for root, _, _ in os.walk(top):
            found[Path(root)] = Path(root).stat().st_mode
    return found


def test_a_server_behind_closed_folders_starts_without_opening_them() -> None:
    with private_dir("closed") as work:
        bin_dir = closed_copy_of_the_wheel(work / "checkout")
        home = work / "home"
        home.mkdir()
        home.chmod(0o700)
        state = work / "state"
        before = folder_modes(work, Path.home())
        server = EmbeddedServer(home / "pgdata", bin_dir=bin_dir, state_dir=state)
        uri = server.start("postgres")
        try:
            with psycopg.connect(uri) as conn:
                row = conn.execute("SELECT current_setting('data_directory')").fetchone()
            assert row == (str(server.data_dir),)
        finally:
            server.stop("immediate")
        assert not server.running()
        if ROOT:
            assert server.bin_dir.is_relative_to(state)
            assert server.data_dir.parent == state / "data"
            assert not (home / "pgdata").exists()
        else:
            assert (server.bin_dir, server.data_dir) == (bin_dir, home / "pgdata")
            assert not state.exists()
        after = folder_modes(work, Path.home())
        assert {path: mode for path, mode in after.items() if path in before} == before
        server.discard()  # a throwaway server leaves nothing behind, wherever its data went
        assert not server.data_dir.exists()


def test_concurrent_copies_publish_one_whole_installation() -> None:
    with private_dir("copies") as work:
        work.chmod(0o755)
        barrier = threading.Barrier(3)
        results: list[Path] = []

        def copy() -> None:
            barrier.wait()
            results.append(embedded._copy_install(WHEEL_BIN, work))

        threads = [threading.Thread(target=copy) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 3 and len(set(results)) == 1
        assert [path.name for path in work.iterdir()] == [results[0].parents[2].name]
        version = subprocess.run([results[0] / "postgres", "--version"], capture_output=True,
                                 text=True, check=True).stdout
        assert "PostgreSQL" in version


def test_a_server_whose_install_was_removed_is_restarted_from_the_current_one() -> None:
    with private_dir("gone") as work:
        bin_dir = closed_copy_of_the_wheel(work / "old-venv")
        (work / "old-venv").chmod(0o755)
        data = work / "pgdata"
        EmbeddedServer(data, bin_dir=bin_dir).start("postgres")
        try:
            shutil.rmtree(work / "old-venv")  # the venv rebuilt while its server ran on
            uri = EmbeddedServer(data).start("postgres")
            with psycopg.connect(uri, autocommit=True) as conn:
                conn.execute("DO $$ BEGIN PERFORM 1; END $$")  # loads plpgsql from its install
        finally:
            EmbeddedServer(data).discard()
