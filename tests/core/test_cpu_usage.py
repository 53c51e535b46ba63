"""CPU figures of utils/core/cpu_usage.py: /proc files written by hand, and a live child process whose CPU time the
child measures itself."""
import multiprocessing
import os
import sys
import time

import pytest

from utils.core import cpu_usage
from utils.core.cpu_usage import busy_share, live_children_cpu_seconds, machine_ticks, process_tree_cpu_seconds


def stat_line(*, pid: int, name: str, ppid: int, utime: int, stime: int, cutime: int, cstime: int) -> str:
    """A /proc/<pid>/stat line as the kernel writes it (fields 1-17, then a few more)."""
    return (f"{pid} ({name}) S {ppid} {pid} {pid} 0 -1 4194304 100 0 0 0 {utime} {stime} {cutime} {cstime} "
            "20 0 1 0 12345 1000000 200 18446744073709551615\n")


def test_machine_ticks_and_busy_share_by_hand(tmp_path):
    (tmp_path / "stat").write_text("cpu  100 5 50 800 45 0 0 0 0 0\ncpu0 50 2 25 400 20 0 0 0 0 0\nintr 1\n")
    assert machine_ticks(proc=tmp_path) == (155, 1000)  # idle 800 + iowait 45 are not busy
    (tmp_path / "stat").write_text("cpu  160 5 80 830 45 3 2 0 0 0\n")
    later = machine_ticks(proc=tmp_path)
    assert later == (250, 1125)
    assert busy_share((155, 1000), later) == pytest.approx(95 / 125)
    assert busy_share((155, 1000), (155, 1000)) is None  # no time passed
    assert busy_share(None, later) is None
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
