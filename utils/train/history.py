"""Per-epoch training history: CSV and JSON, PNG curves, TensorBoard events when installed, and the line printed
after each epoch; whether the validation images are held out from training."""
import csv
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from nets.yolo_training import LOSS_TERMS  # noqa: E402
from utils.core.config import UserError  # noqa: E402
from utils.infer.checkpoint import write_cause  # noqa: E402

NOT_HELD_OUT = "not held out: in the training set"  # how curves label a val loss measured on training images


class LossHistory:
    """Keeps one row per epoch (``epoch``, ``lr``, ``train_*``, ``val_*``, ``map``...) and writes it out.

    Rows can be restored from a checkpoint, so a resumed run keeps its full history.
    """

    def __init__(self, log_dir: str | os.PathLike, rows: list[dict] | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = list(rows or [])
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.log_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional
            pass

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()
        self.write()

    def write(self) -> None:
        """history.csv, history.json and the curves; a failed write (disk full, ...) is a UserError naming it."""
        try:
            keys = list(dict.fromkeys(k for row in self.rows for k in row))
            with open(self.log_dir / "history.csv", "w", newline="", encoding="utf-8") as file:
                writer = csv.DictWriter(file, fieldnames=keys)
                writer.writeheader()
                writer.writerows(self.rows)
            (self.log_dir / "history.json").write_text(json.dumps(self.rows, indent=1), encoding="utf-8")
            self.plot()
        except OSError as err:
            raise UserError(f"cannot write the history in {self.log_dir}: {write_cause(err)}; free some space or "
                            "make the folder writable, then resume from its last checkpoint") from err

    def plot(self) -> None:
        held_out = not self.rows or self.rows[-1].get("val_held_out", True)  # rows of earlier versions: unknown
        for term in LOSS_TERMS:
            fig, ax = plt.subplots(figsize=(6, 4))
            for split in ("train", "val"):
                points = [(row["epoch"], row[f"{split}_{term}"]) for row in self.rows
                          if row.get(f"{split}_{term}") is not None]
                note = "" if split == "train" or held_out else f" ({NOT_HELD_OUT})"
                plot_points(ax, points, marker=".", label=f"{split} {term}{note}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(term)
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(self.log_dir / f"{term}.png", dpi=100)
            plt.close(fig)
        map_rows = [(row["epoch"], row["map"]) for row in self.rows if row.get("map") is not None]
        if map_rows:
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(*zip(*map_rows), marker="o", label="val mAP@0.5" + ("" if held_out else f" ({NOT_HELD_OUT})"))
            ax.set_xlabel("epoch")
            ax.set_ylabel("mAP")
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(self.log_dir / "map.png", dpi=100)
            plt.close(fig)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_points(ax, points: list[tuple[float, float]], **style) -> None:
    """(x, y) points as a line, or a lone point as a marker: a one-point line draws nothing. Nothing for no points."""
    if len(points) == 1:
        style = {**style, "marker": "o", "linestyle": "none"}
    if points:
        ax.plot(*zip(*points), **style)


def shown(value: float | None, spec: str = ".4f") -> str:
    """A measured figure formatted with ``spec``; "-" for one not measured that epoch."""
    return "-" if value is None else format(value, spec)


def epoch_line(row: dict, *, total: int, cores: int) -> str:
    """The line printed after each epoch: the training loss and its terms, val loss, mAP, lr and seconds; then the
    seconds the training loop waited for batches (data) and spent in steps, and the CPU the run used (its process
    and loader workers, in cores of the ``cores`` it may use) and the shares of the whole machine busy and stolen."""
    busy = "" if row.get("machine_busy") is None else f", machine {row['machine_busy']:.0%} busy"
    if (row.get("machine_steal") or 0) >= 0.005:  # cores the hypervisor lent to other guests
        busy += f" + {row['machine_steal']:.0%} stolen"
    return (f"epoch {row['epoch']}/{total}  train loss {row['train_loss']:.4f} (loc {row['train_loss_loc']:.4f} "
            f"conf {row['train_loss_conf']:.4f} cls {row['train_loss_cls']:.4f})  val loss {shown(row['val_loss'])}  "
            f"map {shown(row['map'])}  lr {row['lr']:.2e}  {row['seconds']:.1f}s  (data {row['data_seconds']:.1f}s "
            f"step {row['step_seconds']:.1f}s; CPU {row['cpu_cores']:.2f} of {cores} cores{busy})")
