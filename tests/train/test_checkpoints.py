"""The checkpoint policy (utils/train/checkpoints.py) on a stand-in run: which files each epoch leaves, which epoch
the best checkpoint holds, and a resumable checkpoint put back by restore."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from utils.train.checkpoints import due, restore, resumable_checkpoint, save_checkpoints


def stand_in_run(save_dir: Path, **settings) -> SimpleNamespace:
    """What the policy reads of a utils.train.trainer.Run: settings, a tiny network, its optimizer, the history."""
    config = SimpleNamespace(**{"unfreeze_epoch": 4, "save_period": 2, "eval_flag": False, "save_darknet": False,
                                **settings})
    net = nn.Linear(2, 1)
    return SimpleNamespace(config=config, save_dir=save_dir, net=net, ema=None, inference_net=net,
                           run_config={"seed": 1}, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                           scaler=torch.amp.GradScaler("cpu", enabled=False), best=None,
                           history=SimpleNamespace(rows=[]), dist=SimpleNamespace(is_main=True))


def run_epochs(run: SimpleNamespace, rows: list[dict]) -> list[tuple[set[str], int | None]]:
    """Each epoch's row recorded, then the policy; after each, the files in save_dir and the best checkpoint's epoch."""
    seen = []
    for epoch, row in enumerate(rows):
        run.history.rows.append(row)
        save_checkpoints(run, epoch=epoch, row=row)
        best = run.save_dir / "best_epoch_weights.pth"
        seen.append(({p.name for p in run.save_dir.iterdir()},
                     torch.load(best, weights_only=True)["epoch"] if best.exists() else None))
    return seen


def row(epoch: int, *, train_loss: float, val_loss: float | None, map_value: float | None = None) -> dict:
    return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "map": map_value}


@pytest.mark.parametrize("epoch, period, total, expected", [
    (0, 2, 4, False), (1, 2, 4, True), (2, 2, 4, False), (3, 2, 4, True),  # every 2nd epoch
    (1, 3, 4, False), (2, 3, 4, True), (3, 3, 4, True),  # the last epoch always
    (0, 1, 4, True),
])
def test_due_every_period_and_after_the_last_epoch(epoch, period, total, expected):
    assert due(epoch, period=period, total=total) is expected


def test_best_by_val_loss_last_always_periodic_every_save_period(tmp_path):
    run = stand_in_run(tmp_path)
    rows = [row(1, train_loss=1.0, val_loss=None), row(2, train_loss=0.9, val_loss=0.5),
            row(3, train_loss=0.8, val_loss=0.6), row(4, train_loss=0.7, val_loss=0.4)]
    last, best = "last_epoch_weights.pth", "best_epoch_weights.pth"
    ep2, ep4 = "ep002-loss0.900-val_loss0.500.pth", "ep004-loss0.700-val_loss0.400.pth"
    assert run_epochs(run, rows) == [({last}, None),  # not validated: cannot be best
                                     ({last, best, ep2}, 2),
                                     ({last, best, ep2}, 2),  # a higher val loss is no improvement
                                     ({last, best, ep2, ep4}, 4)]
    assert run.best == -0.4
    saved = torch.load(tmp_path / last, weights_only=True)
    assert (saved["epoch"], saved["iteration"], saved["best"]) == (4, 0, -0.4)
    assert saved["history"] == rows
    assert torch.load(tmp_path / best, weights_only=True)["metrics"] == rows[3]


@pytest.mark.parametrize("links", [True, False], ids=["hard_link", "no_hard_links"])
def test_periodic_checkpoint_keeps_its_epoch_after_last_moves_on(tmp_path, monkeypatch, links):
    if not links:
        def refuse(*args, **kwargs):
            raise OSError(1, "Operation not permitted")
        monkeypatch.setattr("os.link", refuse)
    run = stand_in_run(tmp_path)
    run_epochs(run, [row(e, train_loss=1.0 - e / 10, val_loss=0.5) for e in (1, 2, 3, 4)])
    ep2, ep4, last = (tmp_path / name for name in ("ep002-loss0.800-val_loss0.500.pth",
                                                    "ep004-loss0.600-val_loss0.500.pth", "last_epoch_weights.pth"))
    assert torch.load(ep2, weights_only=True)["epoch"] == 2  # written at epoch 2, untouched by epochs 3 and 4
    assert ep4.read_bytes() == last.read_bytes()
    assert ep4.samefile(last) is links  # one file on disk, not two
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_best_by_map_when_evaluated(tmp_path):
    run = stand_in_run(tmp_path, eval_flag=True, save_period=3)
    rows = [row(1, train_loss=1.0, val_loss=0.2, map_value=None), row(2, train_loss=0.9, val_loss=0.9, map_value=0.3),
            row(3, train_loss=0.8, val_loss=0.1, map_value=0.2), row(4, train_loss=0.7, val_loss=None)]
    last, best = "last_epoch_weights.pth", "best_epoch_weights.pth"
    ep3, ep4 = "ep003-loss0.800-val_loss0.100.pth", "ep004-loss0.700-val_loss-.pth"
    assert run_epochs(run, rows) == [({last}, None),  # a val loss alone does not make it best with eval_flag
                                     ({last, best}, 2),
                                     ({last, best, ep3}, 2),  # lower mAP, however low its val loss
                                     ({last, best, ep3, ep4}, 2)]
    assert run.best == 0.3


def test_restore_puts_a_resumable_checkpoint_back(tmp_path):
    run = stand_in_run(tmp_path)
    run.best, run.history.rows = 0.25, [row(1, train_loss=1.0, val_loss=0.5)]
    run.optimizer.zero_grad()
    run.net(torch.ones(1, 2)).sum().backward()
    run.optimizer.step()
    checkpoint = resumable_checkpoint(run, epoch=1, iteration=3)
    rng = torch.get_rng_state()
    torch.rand(5)  # move the generator on: restore must bring it back
    other = stand_in_run(tmp_path)
    rows = restore(other, checkpoint)
    assert rows == [row(1, train_loss=1.0, val_loss=0.5)]
    assert (other.start_epoch, other.start_iteration, other.best) == (1, 3, 0.25)
    assert all(torch.equal(a, b) for a, b in zip(other.net.state_dict().values(), run.net.state_dict().values()))
    assert other.optimizer.state_dict()["param_groups"] == run.optimizer.state_dict()["param_groups"]
    assert torch.equal(torch.get_rng_state(), rng)
