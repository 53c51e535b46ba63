"""How busy the CPU is: the CPU seconds of this process and its child processes (DataLoader workers included while
they run), the cores this process may use, the whole machine's busy and stolen shares from /proc/stat, and how many
threads of a process tree want a core (run or wait to run) at a moment.

A child's CPU time reaches ``os.times()`` only once it has ended and been waited for, so the CPU of live children
(persistent DataLoader workers) is read from /proc/<pid>/stat on Linux. Elsewhere the live children are not counted
until they end: figures are then a lower bound. Reading costs one /proc scan (about a millisecond), so it is done
per epoch, not per step.
"""
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

PROC = Path("/proc")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset or a container's cpuset); the
    machine's core count where the affinity cannot be read."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):
        return 100


def _stat_fields(pid: int, *, proc: Path) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, is element 0); None when the
    process is gone or unreadable. The name is in parentheses and may hold spaces and parentheses itself."""
    try:
        text = (proc / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def live_children_cpu_seconds(*, pid: int | None = None, proc: Path = PROC) -> float | None:
    """User + system CPU seconds of the live child processes of ``pid`` (default: this process), with those of
    the children they have waited for; None where /proc cannot be read."""
    pid = os.getpid() if pid is None else pid
    try:
        entries = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return None
    ticks = 0
    for name in entries:
        fields = _stat_fields(int(name), proc=proc)
        # fields[1] is the parent pid (stat field 4); [11:15] utime, stime, cutime, cstime (fields 14-17) in ticks
        if fields is not None and len(fields) > 14 and fields[1] == str(pid):
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / _clock_ticks()


def process_tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process, its ended children and its live children."""
    times = os.times()
    live = live_children_cpu_seconds()
    return times.user + times.system + times.children_user + times.children_system + (live or 0.0)


class MachineTicks(NamedTuple):
    """CPU time of the whole machine since boot in clock ticks, summed over its cores."""
    busy: int  # user, nice, system, irq, softirq: work done on this machine
    steal: int  # time a virtual machine's cores were given to other guests by the hypervisor
    total: int  # everything, idle and iowait included


def machine_ticks(*, proc: Path = PROC) -> MachineTicks | None:
    """The machine's CPU ticks from /proc/stat's ``cpu`` line; None where it cannot be read."""
    try:
        with open(proc / "stat", encoding="ascii") as file:
            first = file.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu" or len(first) < 5:
        return None
    values = [int(value) for value in first[1:9]] + [0] * (9 - len(first))  # user nice system idle iowait irq
    steal = values[7]  # softirq steal (guest time is counted within user and nice)
    return MachineTicks(busy=sum(values) - values[3] - values[4] - steal, steal=steal, total=sum(values))


def busy_share(start: MachineTicks | None, end: MachineTicks | None, *, field: str = "busy") -> float | None:
    """The machine's busy (or, with ``field="steal"``, stolen) fraction of its CPU time, 0 to 1, between two
    ``machine_ticks`` readings; None when either is missing or no time passed."""
    if start is None or end is None or end.total <= start.total:
        return None
    return (getattr(end, field) - getattr(start, field)) / (end.total - start.total)


def descendants(pid: int, *, proc: Path = PROC) -> list[int]:
    """The live processes below ``pid`` (children, their children, ...), from the parent pids in /proc."""
    children: dict[str, list[int]] = {}
    try:
        names = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return []
    for name in names:
        fields = _stat_fields(int(name), proc=proc)
        if fields is not None and len(fields) > 1:
            children.setdefault(fields[1], []).append(int(name))
    found, queue = [], [pid]
    while queue:
        below = children.get(str(queue.pop()), [])
        found += below
        queue += below
    return found


def runnable_threads(pids: list[int], *, proc: Path = PROC) -> int:
    """Threads of the processes ``pids`` in state R (running, or runnable and waiting for a core): how many cores
    these processes would use at this moment on a machine of their own."""
    count = 0
    for pid in pids:
        try:
            tasks = os.listdir(proc / str(pid) / "task")
        except OSError:  # ended meanwhile
            continue
        for task in tasks:
            fields = _stat_fields(int(task), proc=proc / str(pid) / "task")
            count += fields is not None and fields[:1] == ["R"]
    return count


@dataclass
class CpuMeter:
    """CPU use from its creation to ``read()``: of this process tree and of the whole machine."""
    wall_start: float = 0.0
    cpu_start: float = 0.0
    machine_start: MachineTicks | None = None

    @classmethod
    def start(cls) -> "CpuMeter":
        return cls(wall_start=time.perf_counter(), cpu_start=process_tree_cpu_seconds(), machine_start=machine_ticks())

    def read(self) -> dict:
        """{"cpu_seconds": this process tree's CPU seconds, "cpu_cores": those per wall second (2.0 = two cores
        busy throughout), "machine_busy" and "machine_steal": the whole machine's busy and stolen fractions, None
        where unknown}."""
        wall = max(time.perf_counter() - self.wall_start, 1e-9)
        cpu = process_tree_cpu_seconds() - self.cpu_start
        now = machine_ticks()
        shares = {f"machine_{field}": busy_share(self.machine_start, now, field=field) for field in ("busy", "steal")}
        return {"cpu_seconds": round(cpu, 2), "cpu_cores": round(cpu / wall, 3),
                **{key: None if share is None else round(share, 4) for key, share in shares.items()}}
