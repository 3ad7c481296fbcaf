"""CPU and memory of local processes, read from /proc (None where there is no /proc)."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used so far."""
    fields = _stat(pid)
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds process ``pid`` and its children have used so far: its own, its children's
    that have exited (cutime and cstime, fields 16 and 17), and its live children's. Taken
    twice, the difference is what the tree spent between, children come and gone included."""
    fields = _stat(pid)
    if fields is None:
        return None
    spent = sum(int(f) for f in fields[11:15]) / _TICK
    for child in _children(pid):
        spent += cpu_s(child) or 0.0
    return spent


def vm_hwm_kb(pid: int) -> int | None:
    """The peak resident set (VmHWM) of process ``pid``, in kB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def command(pid: int) -> str:
    """Process ``pid``'s command line ("" when it cannot be read)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def parent(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None and \
                int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
