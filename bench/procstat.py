"""CPU time of process trees, read from /proc (Linux only)."""

from __future__ import annotations

import os
from collections.abc import Mapping

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat after the command name, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    # Index 0 is then field 3 of proc(5) (state), index 1 the parent pid.
    return raw[raw.rindex(b")") + 2 :].split()


def tree_cpu_seconds(roots: Mapping[str, int]) -> dict[str, float]:
    """User plus system CPU seconds used so far by each root pid and all its descendants.

    Walks /proc once for all roots rather than reading
    /proc/<pid>/task/*/children, which only exists on kernels built with
    CONFIG_PROC_CHILDREN. Per process it counts the time of all its threads
    (utime, stime) and of children it has already reaped (cutime, cstime), so
    a worker process that exits mid-run is not lost.
    """
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        fields = _stat_fields(pid)
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(pid)
        # utime, stime, cutime, cstime are fields 14-17 of proc(5): 11-14 here.
        ticks[pid] = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    result: dict[str, float] = {}
    for name, root in roots.items():
        tree = [root]
        for pid in tree:  # grows while iterating: a breadth-first walk
            tree.extend(children.get(pid, ()))
        result[name] = sum(ticks.get(pid, 0) for pid in tree) / _TICKS_PER_S
    return result


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches so far, summed over the threads of
    ``pid`` that are alive now: each is a thread going to sleep or being preempted,
    i.e. a wake-up to pay for later."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/status", "rb") as f:
                for line in f:
                    if line.startswith((b"voluntary_ctxt_switches", b"nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            continue  # the thread ended meanwhile
    return total
