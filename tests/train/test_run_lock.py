"""One training process per run folder (utils/train/run_lock.py): a second run is refused at once naming the owner,
a lock left by a dead process on this host is taken over, one from another host is not, the lock goes on every
exit path, and a save_dir that cannot be written is a one-line error before training starts."""
import errno
import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import REPO, free_port, small_run

import train
from utils.core.config import UserError
from utils.train import run_lock
from utils.train.run_lock import LOCK_NAME, RunFolderBusy, RunFolderLock


def dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder, **owner) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(owner), encoding="utf-8")


def test_lock_names_its_owner_and_goes_on_release(tmp_path):
    lock = RunFolderLock(tmp_path / "run")
    lock.acquire()
    owner = json.loads((tmp_path / "run" / LOCK_NAME).read_text(encoding="utf-8"))
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname() and owner["started"]
    lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    lock.release()  # twice is harmless
    with RunFolderLock(tmp_path / "run"):  # free again
        pass


def test_a_second_run_into_a_locked_folder_stops_at_once(tmp_path):
    args = small_run(tmp_path, "--unfreeze_epoch=1")
    with RunFolderLock(tmp_path / "logs"):
        with pytest.raises(RunFolderBusy) as refused:
            train.main(args)
        assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in str(refused.value)
        assert "pass another --save_dir, or wait for that run to end" in str(refused.value)
        assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [LOCK_NAME]  # nothing of its own written
        assert json.loads((tmp_path / "logs" / LOCK_NAME).read_text())["pid"] == os.getpid()  # the owner's lock kept


def test_train_py_in_a_locked_folder_prints_one_line_and_exits_2(tmp_path):
    with RunFolderLock(tmp_path / "logs"):
        result = subprocess.run([sys.executable, "train.py", *small_run(tmp_path, "--unfreeze_epoch=1")], cwd=REPO,
                                capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: save_dir={tmp_path / 'logs'} is in use by pid "
                                                   f"{os.getpid()} on host {socket.gethostname()} (since ")


def test_a_stale_lock_of_this_host_is_taken_over(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, pid=pid, host=socket.gethostname(), started="2024-01-02 03:04:05 +0000")
    notes = []
    with RunFolderLock(tmp_path, log=notes.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert notes == [f"note: {tmp_path / LOCK_NAME}: taking over the lock of pid {pid} "
                     "(started 2024-01-02 03:04:05 +0000), which is no longer running"]


def test_without_flock_the_pid_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "_try_flock", lambda fd: None)  # a file system without flock
    write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), started="s")
    with pytest.raises(RunFolderBusy, match=f"in use by pid {os.getpid()} on host"):
        RunFolderLock(tmp_path).acquire()
    write_lock(tmp_path, pid=dead_pid(), host=socket.gethostname(), started="s")
    notes = []
    with RunFolderLock(tmp_path, log=notes.append):
        pass
    assert len(notes) == 1 and "no longer running" in notes[0]


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    write_lock(tmp_path, pid=12345, host="elsewhere-node", started="2024-01-02 03:04:05 +0000")
    with pytest.raises(RunFolderBusy) as refused:
        RunFolderLock(tmp_path).acquire()
    assert str(refused.value) == (f"{tmp_path / LOCK_NAME}: locked by pid 12345 on host elsewhere-node since "
                                  "2024-01-02 03:04:05 +0000; whether that run still goes cannot be checked from "
                                  "here: pass another --save_dir, or delete the lock file once that run has ended")
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "elsewhere-node"


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(FileNotFoundError):
        train.main(small_run(tmp_path, "--unfreeze_epoch=1", f"--classes_path={tmp_path / 'missing.txt'}"))
    assert (tmp_path / "logs").is_dir() and not (tmp_path / "logs" / LOCK_NAME).exists()


def test_a_read_only_save_dir_is_refused_before_training(tmp_path, monkeypatch):
    """Simulated (tests run as root, whom chmod does not stop): the lock file cannot be created."""
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).startswith(str(tmp_path / "logs")) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(UserError) as refused:
        train.main(small_run(tmp_path, "--unfreeze_epoch=1"))
    assert str(refused.value) == (f"save_dir={tmp_path / 'logs'}: cannot write there (read-only file system); "
                                  "pass another --save_dir or make the folder writable")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a folder of mode 0o500")
def test_an_unwritable_save_dir_is_refused_before_training(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs").chmod(0o500)
    try:
        with pytest.raises(UserError, match=r"cannot write there \(permission denied\)"):
            train.main(small_run(tmp_path, "--unfreeze_epoch=1"))
    finally:
        (tmp_path / "logs").chmod(0o700)


def test_a_save_dir_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"save_dir=.*file.*logs: cannot write there \(not a directory\)"):
        RunFolderLock(tmp_path / "file" / "logs").acquire()


@pytest.mark.slow
def test_under_ddp_every_rank_stops_when_the_folder_is_locked(tmp_path):
    args = small_run(tmp_path, "--unfreeze_epoch=1", "--unfreeze_batch_size=4")
    script = tmp_path / "ddp_run.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\nimport train\n"
                      "from utils.core.config import run_cli\n"
                      f"run_cli(lambda: train.main({args!r} + ['--distributed=True']))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with RunFolderLock(tmp_path / "logs"):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                 f"--master_port={free_port()}", str(script)], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    # Counted in the whole stream: the launcher relays both ranks' stderr, and under load one rank's line can land
    # in the middle of the other's.
    assert result.stderr.count("error: save_dir=") == 2, result.stderr[-3000:]
    assert result.stderr.count(f"is in use by pid {os.getpid()}") == 2, result.stderr[-3000:]
