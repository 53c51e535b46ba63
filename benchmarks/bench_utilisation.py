"""How busy the main job keeps the CPU: runs ``compare_focal.py`` with its default recipe (both arms trained side by
side, ``parallel=2``) for ``epochs`` epochs into a temporary folder and prints
- the wall time and the machine's busy and stolen shares (/proc/stat, sampled every ``interval`` seconds);
- the job's own CPU share: the CPU seconds of compare_focal.py, its train.py processes and their loader workers
  over wall time x usable cores;
- the job's demand: at every sample, the threads of the job that run or wait for a core (state R), capped at the
  cores: the share of the cores the job would keep busy on a machine of its own. Unlike the two shares above it
  hardly depends on what else runs, so it can be read on a shared machine;
- per run, the seconds its training loops waited for batches (data) and spent in steps, and the cores it used.

With ``--ref=<git revision>`` the same job first runs on that revision, checked out in a temporary git worktree,
so one call gives the figures before and after a change on the same machine. Revisions older than the per-epoch
timing show "-" there.

    python benchmarks/bench_utilisation.py                       # one epoch of the main job on this checkout
    python benchmarks/bench_utilisation.py --ref=HEAD~3 --epochs=2
    python benchmarks/bench_utilisation.py --epochs=26           # the whole main job
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.core.config import ConfigError, resolve_config, run_cli, settings_of  # noqa: E402
from utils.core.cpu_usage import busy_share, descendants, machine_ticks, runnable_threads, usable_cores  # noqa: E402
from utils.train.history import shown  # noqa: E402

epochs: int = 1  # epochs per run (compare_focal.py --unfreeze_epoch); the recipe trains 26
ref: str = ""  # a git revision to run first, in a temporary worktree, for before/after figures; "" = this checkout only
compare_args: list[str] = []  # further compare_focal.py arguments for both checkouts, e.g. ["--parallel=1"]
interval: float = 1.0  # seconds between samples of /proc/stat
out: str = ""  # also write the figures and the busy samples to this JSON file
keep: bool = False  # keep the temporary folders (run folders, logs, worktree) and print where they are


class JobSampler:
    """Samples, every ``interval`` seconds in a thread while the job ``pid`` runs, the machine's CPU ticks and the
    job's threads that run or wait for a core."""

    def __init__(self, *, pid: int, interval: float):
        self.pid, self.interval, self.stop = pid, interval, threading.Event()
        self.ticks, self.runnable = [], []
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.ticks.append(machine_ticks())
            self.runnable.append(runnable_threads([self.pid, *descendants(self.pid)]))
            if self.stop.wait(self.interval):
                self.ticks.append(machine_ticks())
                return

    def __enter__(self) -> "JobSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def busy_shares(self) -> list[float]:
        """The machine's busy fraction in every interval between two samples (where /proc/stat was read)."""
        shares = [busy_share(a, b) for a, b in zip(self.ticks, self.ticks[1:])]
        return [share for share in shares if share is not None]

    def demand(self, cores: int) -> float | None:
        """The mean share of ``cores`` the job's runnable threads would fill; None without samples."""
        return sum(min(n, cores) for n in self.runnable) / (cores * len(self.runnable)) if self.runnable else None


def run_job(*, checkout: Path, work: Path, epochs: int, compare_args: list[str], interval: float) -> dict:
    """Runs the main job in ``checkout`` (its working directory) into ``work``, ``epochs`` epochs per run, sampling
    the machine every ``interval`` seconds; returns its figures."""
    results = work / "compare"
    command = [sys.executable, str(checkout / "compare_focal.py"), f"--results_dir={results}",
               f"--unfreeze_epoch={epochs}", *compare_args]
    log_path = work / "compare.log"
    print(f"[bench] {checkout}: {' '.join(command[1:])} (log {log_path})", flush=True)
    before, cores = os.times(), usable_cores()
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=checkout, stdout=log, stderr=subprocess.STDOUT)
        with JobSampler(pid=process.pid, interval=interval) as sampler:
            code = process.wait()
    wall = time.perf_counter() - started
    after = os.times()
    if code != 0:
        raise RuntimeError(f"compare_focal.py in {checkout} failed (exit code {code}); see {log_path}")
    # Children's times reach os.times once they have been waited for: compare_focal.py waits for its train.py
    # processes, and they for their loader workers, so this is the whole job's CPU.
    job_cpu = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    first, last = sampler.ticks[0], sampler.ticks[-1]
    return {"checkout": str(checkout), "wall_seconds": round(wall, 1), "job_cpu_seconds": round(job_cpu, 1),
            "job_cpu_share": round(job_cpu / (wall * cores), 4), "machine_busy": busy_share(first, last),
            "machine_steal": busy_share(first, last, field="steal"), "job_demand": sampler.demand(cores),
            "busy_samples": sampler.busy_shares(), "runnable_samples": sampler.runnable,
            "runs": run_figures(results / "runs")}


def run_figures(runs_dir: Path) -> dict[str, dict]:
    """Per run folder: epochs, training seconds, data and step seconds and their data share, and the mean CPU cores
    the run used (None where the revision does not record them)."""
    figures = {}
    for history_path in sorted(runs_dir.glob("*/history.json")):
        rows = json.loads(history_path.read_text(encoding="utf-8"))

        def total(key: str, rows=rows) -> float | None:
            values = [row.get(key) for row in rows]
            return None if any(value is None for value in values) else round(sum(values), 2)

        data, step, seconds, cpu = total("data_seconds"), total("step_seconds"), total("seconds"), total("cpu_seconds")
        figures[history_path.parent.name] = {
            "epochs": len(rows), "seconds": seconds, "data_seconds": data, "step_seconds": step,
            "data_share": None if data is None or step is None else round(data / max(data + step, 1e-9), 4),
            "cpu_cores": None if cpu is None or not seconds else round(cpu / seconds, 3)}
    return figures


def report(job: dict, *, label: str, interval: float) -> str:
    """The job's lines: wall time and busy shares (``interval``: the seconds between samples), then one line per
    run."""
    busy, cores = job["busy_samples"], usable_cores()
    low = sum(share < 0.9 for share in busy) / len(busy) if busy else None
    runnable = job["runnable_samples"]
    short = sum(n < cores for n in runnable) / len(runnable) if runnable else None
    lines = [f"{label}: wall {job['wall_seconds'] / 60:.1f} min, machine busy {shown(job['machine_busy'], '.1%')} "
             f"(under 90 % in {shown(low, '.0%')} of the {interval:g} s intervals) + stolen "
             f"{shown(job['machine_steal'], '.1%')}; job CPU {job['job_cpu_seconds'] / 60:.1f} min = "
             f"{job['job_cpu_share']:.1%} of {cores} cores; job demand {shown(job['job_demand'], '.1%')} of the cores "
             f"(fewer runnable threads than cores in {shown(short, '.0%')} of the samples)"]
    for name, run in job["runs"].items():
        lines.append(f"  {name}: {run['epochs']} epochs, {shown(run['seconds'], '.1f')} s; training loop: data "
                     f"{shown(run['data_seconds'], '.1f')} s, step {shown(run['step_seconds'], '.1f')} s (data "
                     f"{shown(run['data_share'], '.1%')}); CPU {shown(run['cpu_cores'], '.2f')} cores")
    return "\n".join(lines)


def ref_worktree(*, revision: str, folder: Path) -> Path:
    """A detached git worktree of ``revision`` in ``folder``."""
    done = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), revision],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(f"--ref={revision}: git worktree add failed: {done.stderr.strip()}")
    return folder


def main(argv: list[str] | None = None) -> list[dict]:
    """Runs the job (on ``ref`` first when given) and prints the figures; returns them."""
    config = resolve_config(settings_of(globals()), argv)
    if config["epochs"] < 1 or config["interval"] <= 0:
        raise ConfigError("--epochs needs at least 1 and --interval a positive number of seconds")
    job_settings = {key: config[key] for key in ("epochs", "compare_args", "interval")}
    if machine_ticks() is None:
        print("[bench] /proc/stat cannot be read here: the machine's busy share is not measured", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_utilisation_"))
    jobs = []
    try:
        if config["ref"]:
            checkout = ref_worktree(revision=config["ref"], folder=work / "ref")
            (work / "ref_job").mkdir()
            jobs.append((f"ref {config['ref']}", run_job(checkout=checkout, work=work / "ref_job", **job_settings)))
        (work / "job").mkdir()
        jobs.append(("this checkout", run_job(checkout=REPO, work=work / "job", **job_settings)))
    finally:
        if config["keep"]:
            print(f"[bench] kept {work}")
        else:
            if (work / "ref").exists():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "ref")],
                               capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
    print(f"[bench] main job, {config['epochs']} epoch(s) per run, {usable_cores()} usable cores")
    for label, job in jobs:
        print(report(job, label=label, interval=config["interval"]))
    if config["out"]:
        Path(config["out"]).write_text(json.dumps([{"label": label, **job} for label, job in jobs], indent=1),
                                       encoding="utf-8")
    return [job for _, job in jobs]


if __name__ == "__main__":
    run_cli(main)
