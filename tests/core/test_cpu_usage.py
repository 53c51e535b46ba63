"""CPU figures of utils/core/cpu_usage.py: /proc files written by hand, and a live child process whose CPU time the
child measures itself."""
import multiprocessing
import os
import sys
import time

import pytest

from utils.core import cpu_usage
from utils.core.cpu_usage import (MachineTicks, busy_share, descendants, live_children_cpu_seconds, machine_ticks,
                                  process_tree_cpu_seconds, runnable_threads)


def stat_line(*, pid: int, name: str, ppid: int, utime: int = 0, stime: int = 0, cutime: int = 0, cstime: int = 0,
              state: str = "S") -> str:
    """A /proc/<pid>/stat line as the kernel writes it (fields 1-17, then a few more)."""
    return (f"{pid} ({name}) {state} {ppid} {pid} {pid} 0 -1 4194304 100 0 0 0 {utime} {stime} {cutime} {cstime} "
            "20 0 1 0 12345 1000000 200 18446744073709551615\n")


def test_machine_ticks_and_busy_share_by_hand(tmp_path):
    (tmp_path / "stat").write_text("cpu  100 5 50 800 45 0 0 10 0 0\ncpu0 50 2 25 400 20 0 0 5 0 0\nintr 1\n")
    start = machine_ticks(proc=tmp_path)  # idle 800 + iowait 45 are not busy, steal 10 is counted apart
    assert start == MachineTicks(busy=155, steal=10, total=1010)
    (tmp_path / "stat").write_text("cpu  160 5 80 830 45 3 2 30 0 0\n")
    later = machine_ticks(proc=tmp_path)
    assert later == MachineTicks(busy=250, steal=30, total=1155)
    assert busy_share(start, later) == pytest.approx(95 / 145)
    assert busy_share(start, later, field="steal") == pytest.approx(20 / 145)
    assert busy_share(start, start) is None  # no time passed
    assert busy_share(None, later) is None
    (tmp_path / "stat").write_text("cpu  1 2 3 4\n")  # an old kernel: no iowait and later fields
    assert machine_ticks(proc=tmp_path) == MachineTicks(busy=6, steal=0, total=10)
    (tmp_path / "stat").write_text("intr 1\n")
    assert machine_ticks(proc=tmp_path) is None
    assert machine_ticks(proc=tmp_path / "absent") is None


def test_live_children_are_summed_from_their_stat_files(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_usage, "_clock_ticks", lambda: 100)
    for pid, name, ppid, ticks in ((10, "pt_data_worker", 7, (30, 10, 5, 5)), (11, "odd) (name", 7, (1, 2, 3, 4)),
                                   (12, "other", 8, (500, 500, 0, 0)), (7, "main", 1, (900, 900, 0, 0))):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(stat_line(pid=pid, name=name, ppid=ppid, utime=ticks[0],
                                                            stime=ticks[1], cutime=ticks[2], cstime=ticks[3]))
    (tmp_path / "13").mkdir()  # a process that ended between listing and reading: no stat file
    (tmp_path / "self").mkdir()
    assert live_children_cpu_seconds(pid=7, proc=tmp_path) == pytest.approx((30 + 10 + 5 + 5 + 1 + 2 + 3 + 4) / 100)
    assert live_children_cpu_seconds(pid=99, proc=tmp_path) == 0.0
    assert live_children_cpu_seconds(pid=7, proc=tmp_path / "absent") is None


def test_descendants_and_their_runnable_threads(tmp_path):
    # 1 -> 7 -> (10, 11 -> 20); 12 belongs to 8. Threads: 7 has two (one running), 10 one waiting for a core,
    # 11 one sleeping, 20 two running; 12 running but outside the tree.
    tree = {7: (1, "RS"), 10: (7, "R"), 11: (7, "S"), 20: (11, "RR"), 12: (8, "R"), 8: (1, "S")}
    for pid, (ppid, states) in tree.items():
        (tmp_path / str(pid) / "task").mkdir(parents=True)
        (tmp_path / str(pid) / "stat").write_text(stat_line(pid=pid, name="python3", ppid=ppid, state=states[0]))
        for offset, state in enumerate(states):
            tid = pid * 100 + offset
            (tmp_path / str(pid) / "task" / str(tid)).mkdir()
            (tmp_path / str(pid) / "task" / str(tid) / "stat").write_text(
                stat_line(pid=tid, name="python3", ppid=ppid, state=state))
    assert sorted(descendants(7, proc=tmp_path)) == [10, 11, 20]
    assert descendants(20, proc=tmp_path) == []
    assert runnable_threads([7, *descendants(7, proc=tmp_path)], proc=tmp_path) == 1 + 1 + 0 + 2
    assert runnable_threads([99], proc=tmp_path) == 0  # ended


def _burn(seconds: float, report, release) -> None:
    """Child: uses ``seconds`` of CPU, sends its own CPU time, then stays alive until released."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    report.send(time.process_time())
    release.wait(30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="live children are read from /proc")
def test_a_live_child_is_counted_before_it_ends():
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    release = context.Event()
    own = os.times()
    before = process_tree_cpu_seconds()
    child = context.Process(target=_burn, args=(0.4, send, release))
    child.start()
    try:
        child_cpu = receive.recv()
        time.sleep(0.05)  # the child is now idle, waiting
        counted = process_tree_cpu_seconds() - before
        ended_children = os.times().children_user + os.times().children_system
        assert ended_children == own.children_user + own.children_system  # os.times alone does not see it yet
        assert counted >= child_cpu - 0.03  # clock-tick resolution
        assert live_children_cpu_seconds() >= child_cpu - 0.03
    finally:
        release.set()
        child.join()
    after_end = process_tree_cpu_seconds() - before  # now through os.times' children, counted once
    assert child_cpu - 0.03 <= after_end <= counted + 0.5
