"""What a training run writes to ``save_dir`` and reads back on ``--resume``.

After each epoch, rank 0 (save_checkpoints, the whole policy):
- ``best_epoch_weights.pth``: inference weights, config and the epoch's history row, whenever the score
  improves (val mAP with eval_flag, else minus the val loss; an epoch without that measurement is never best);
- ``last_epoch_weights.pth``: everything an exact resume needs (resumable_checkpoint);
- ``epNNN-lossX-val_lossY.pth``: a copy of it (a hard link where possible) every ``save_period`` epochs and after
  the last;
- with ``save_darknet``, a darknet ``.weights`` + ``.cfg`` beside the best and the periodic checkpoints.
Ctrl-C writes ``last_epoch_weights.pth`` where the epoch stopped (save_interrupted).
"""
import torch

from nets.darknet_weights import write_darknet_model
from utils.infer.checkpoint import CHECKPOINT_FORMAT, copy_atomic, save_atomic
from utils.train.history import shown

LAST = "last_epoch_weights.pth"
BEST = "best_epoch_weights.pth"


def due(epoch: int, *, period: int, total: int) -> bool:
    """Whether a periodic job runs after ``epoch`` (0-based): every ``period`` epochs and after the last."""
    return (epoch + 1) % period == 0 or epoch + 1 == total


def resumable_checkpoint(run, *, epoch: int, iteration: int, means: dict | None = None) -> dict:
    """``run`` (a utils.train.trainer.Run) at epoch ``epoch``, iteration ``iteration`` of it: weights (the EMA as
    ``model``, the raw weights as ``train_model``), optimizer, scaler, torch RNG, best score and history; mid-epoch
    also ``epoch_means``, the loss sums of the epoch's iterations so far (engine.RunningMeans.state)."""
    ema = {"train_model": run.net.state_dict(), "ema": run.ema.state_dict()} if run.ema is not None else {}
    return {"format": CHECKPOINT_FORMAT, "model": run.inference_net.state_dict(), **ema, "config": run.run_config,
            "epoch": epoch, "iteration": iteration, "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(), "torch_rng": torch.get_rng_state(), "best": run.best,
            "history": run.history.rows if run.history else [], "epoch_means": means if iteration else None}


def save_checkpoints(run, *, epoch: int, row: dict) -> None:
    """The checkpoint policy after ``epoch`` (0-based), whose history row ``row`` the history already holds."""
    config, total = run.config, run.config.unfreeze_epoch
    score = row["map"] if config.eval_flag else _negated(row["val_loss"])  # higher is better; None: not measured
    if score is not None and (run.best is None or score > run.best):
        run.best = score
        save_atomic({"format": CHECKPOINT_FORMAT, "model": run.inference_net.state_dict(), "config": run.run_config,
                     "epoch": epoch + 1, "metrics": row}, run.save_dir / BEST)
        if config.save_darknet:
            _write_darknet(run, BEST)
    save_atomic(resumable_checkpoint(run, epoch=epoch + 1, iteration=0), run.save_dir / LAST)
    if due(epoch, period=config.save_period, total=total):
        name = f"ep{epoch + 1:03d}-loss{row['train_loss']:.3f}-val_loss{shown(row['val_loss'], '.3f')}.pth"
        copy_atomic(run.save_dir / LAST, run.save_dir / name)
        if config.save_darknet:
            _write_darknet(run, name)


def save_interrupted(run, state: dict) -> None:
    """On rank 0, the checkpoint to resume from where training stopped (``state``: epoch and iteration reached, the
    epoch's loss sums so far)."""
    if run.dist.is_main:
        path = run.save_dir / LAST
        save_atomic(resumable_checkpoint(run, **state), path)
        print(f"\ninterrupted: resumable checkpoint written to {path}; continue with --resume={path}")


def restore(run, checkpoint: dict) -> list[dict]:
    """Puts ``checkpoint`` (resumable_checkpoint's dict) back into ``run``: weights, EMA, optimizer, scaler, torch
    RNG, where to start (and the loss sums of a part-trained epoch: a checkpoint of earlier versions has none, so
    that epoch's logged means cover the iterations after the resume only), best score; returns the history rows."""
    run.net.load_state_dict(checkpoint.get("train_model", checkpoint["model"]))  # "model" alone: no EMA
    if run.ema is not None:  # a checkpoint written without EMA restarts the average from its weights
        run.ema.load(weights=checkpoint["model"], state=checkpoint.get("ema", {"updates": 0}))
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scaler.load_state_dict(checkpoint["scaler"])
    torch.set_rng_state(checkpoint["torch_rng"])
    run.start_epoch, run.start_iteration = checkpoint["epoch"], checkpoint["iteration"]
    run.start_means = checkpoint.get("epoch_means")
    run.best = checkpoint["best"]
    return checkpoint["history"]


def _write_darknet(run, checkpoint_name: str) -> None:
    """The inference weights as darknet .weights + .cfg named after the checkpoint."""
    stem = checkpoint_name.removesuffix(".pth")
    write_darknet_model(run.inference_net, weights_path=run.save_dir / f"{stem}.weights", config=run.run_config)


def _negated(value: float | None) -> float | None:
    return None if value is None else -value
