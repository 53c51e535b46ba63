"""Per-epoch training history: CSV and JSON, PNG curves, TensorBoard events when installed, and the line printed
after each epoch."""
import csv
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from nets.yolo_training import LOSS_TERMS  # noqa: E402


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
        keys = list(dict.fromkeys(k for row in self.rows for k in row))
        with open(self.log_dir / "history.csv", "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        (self.log_dir / "history.json").write_text(json.dumps(self.rows, indent=1), encoding="utf-8")
        self.plot()

    def plot(self) -> None:
        epochs = [row["epoch"] for row in self.rows]
        for term in LOSS_TERMS:
            fig, ax = plt.subplots(figsize=(6, 4))
            for split in ("train", "val"):
                values = [row.get(f"{split}_{term}") for row in self.rows]
                if any(v is not None for v in values):
                    ax.plot(epochs, values, marker=".", label=f"{split} {term}")
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
            ax.plot(*zip(*map_rows), marker="o", label="val mAP@0.5")
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


def shown(value: float | None, spec: str = ".4f") -> str:
    """A measured figure formatted with ``spec``; "-" for one not measured that epoch."""
    return "-" if value is None else format(value, spec)


def epoch_line(row: dict, *, total: int) -> str:
    """The line printed after each epoch: the training loss and its terms, val loss, mAP, lr and seconds."""
    return (f"epoch {row['epoch']}/{total}  train loss {row['train_loss']:.4f} (loc {row['train_loss_loc']:.4f} "
            f"conf {row['train_loss_conf']:.4f} cls {row['train_loss_cls']:.4f})  val loss {shown(row['val_loss'])}  "
            f"map {shown(row['map'])}  lr {row['lr']:.2e}  {row['seconds']:.1f}s")
