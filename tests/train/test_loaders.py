"""The run's DataLoaders keep their workers across epochs (utils/train/loaders.py) and still deliver each epoch's
own order and augmentation: checked against the dataset read directly in this process. The training loop's data and
step seconds (engine.LoopTimes) follow where the time went, and training with loader workers ends in the weights of
training without them."""
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_run, timeless
from PIL import Image
from torch import nn

import train
from utils.core.distributed import DistInfo, EpochSampler
from utils.data.dataloader import YoloDataset, yolo_collate
from utils.train.engine import AmpSettings, LoopTimes, train_one_epoch
from utils.train.loaders import PhaseLoaders

SEED = 7


def distinct_lines(tmp_path: Path, count: int) -> list[str]:
    """Annotation lines of ``count`` different noise images (64 x 48), two boxes each."""
    lines = []
    for i in range(count):
        path = tmp_path / f"noise_{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
        lines.append(f"{path} 5,5,40,30,0 {10 + i},10,60,45,1")
    return lines


def expected_batches(dataset: YoloDataset, *, epoch: int, batch_size: int, skip_batches: int = 0) -> list:
    """The oracle: the epoch's shuffled order, each sample read by __getitem__ here, in this process, from a copy
    of the dataset set to ``epoch``; complete batches only, as the training loader drops the last one."""
    direct = copy.deepcopy(dataset)
    direct.set_epoch(epoch)
    sampler = EpochSampler(len(dataset), shuffle=True, seed=SEED)
    sampler.set_epoch(epoch)
    order = list(sampler)
    batches = [order[start:start + batch_size] for start in range(0, len(order) - batch_size + 1, batch_size)]
    return [yolo_collate([direct[i] for i in batch]) for batch in batches[skip_batches:]]


def same_batches(got: list, expected: list) -> bool:
    return len(got) == len(expected) and all(torch.equal(g[0], e[0]) and torch.equal(g[1], e[1])
                                              for g, e in zip(got, expected))


def child_pids() -> set[int]:
    """The live child processes of this one (Linux /proc)."""
    children = set()
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            children.add(int(name))
    return children


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="worker processes are counted through /proc")
def test_persistent_workers_deliver_each_epochs_order_and_augmentation(tmp_path):
    # Mosaic in epochs 0 and 1 (special_aug_ratio 0.5 of 4 epochs), plain placement after: both branches follow
    # the epoch the workers read from the shared value.
    train_set = YoloDataset(annotation_lines=distinct_lines(tmp_path, 9), input_shape=(64, 64), train=True,
                            mosaic=True, mosaic_prob=0.5, mixup=True, mixup_prob=0.5, special_aug_ratio=0.5,
                            total_epochs=4, seed=SEED)
    val_set = YoloDataset(annotation_lines=distinct_lines(tmp_path, 3), input_shape=(64, 64), train=False)
    loaders = PhaseLoaders(train_set=train_set, val_set=val_set, num_workers=2, seed=SEED, dist_info=DistInfo(),
                           pin_memory=False)
    before = child_pids()
    try:
        got, workers, loader_ids = {}, {}, {}
        for epoch, batch_size in ((0, 2), (1, 2), (2, 2), (3, 4)):  # the batch size changes at epoch 3
            loader = loaders.train(epoch=epoch, batch_size=batch_size)
            got[epoch] = list(loader)
            workers[epoch], loader_ids[epoch] = child_pids() - before, id(loader)
            assert same_batches(got[epoch], expected_batches(train_set, epoch=epoch, batch_size=batch_size)), epoch
        assert len(got[0]) == 4 and len(got[3]) == 2  # 9 images: the incomplete last batch is dropped
        assert all(not torch.equal(a[0], b[0]) for a, b in zip(got[0], got[1]))  # the oracle can tell epochs apart
        assert loader_ids[0] == loader_ids[1] == loader_ids[2] != loader_ids[3]
        assert len(workers[0]) == 2 and workers[0] == workers[1] == workers[2]  # the same two workers all phase
        assert len(workers[3]) == 2 and not workers[3] & workers[0]  # the first phase's workers have ended

        resumed = list(loaders.train(epoch=1, batch_size=4, skip_batches=1))  # a resumed epoch skips its start
        assert same_batches(resumed, expected_batches(train_set, epoch=1, batch_size=4, skip_batches=1))
        assert same_batches(list(loaders.train(epoch=3, batch_size=4)), got[3])  # the next epoch starts at 0 again

        val = list(loaders.val(batch_size=2))
        assert len(val) == 2 and torch.equal(val[1][0][0], torch.from_numpy(val_set[2][0]))  # in order, tail kept
    finally:
        loaders.close()
    assert not child_pids() - before  # close() ends every worker


class SleepyCriterion(nn.Module):
    """A loss that takes ``seconds`` per call, so the step's share of the time is known."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, outputs, targets):
        time.sleep(self.seconds)
        loss = outputs.float().mean()
        return {"loss": loss, "loss_loc": loss.detach(), "loss_conf": loss.detach(), "loss_cls": loss.detach()}


class SlowLoader:
    """Yields ``batches`` copies of one batch, each after ``seconds``."""

    def __init__(self, *, batches: int, seconds: float):
        self.batches, self.seconds = batches, seconds

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        for _ in range(self.batches):
            time.sleep(self.seconds)
            yield torch.zeros(1, 3, 8, 8), torch.zeros(0, 6)


def test_loop_times_split_waiting_for_batches_from_the_steps():
    net = nn.Conv2d(3, 2, 1)
    times, batches = LoopTimes(), 4
    started = time.perf_counter()
    train_one_epoch(model=net, criterion=SleepyCriterion(0.05), loader=SlowLoader(batches=batches, seconds=0.15),
                    optimizer=torch.optim.SGD(net.parameters(), lr=0.1), scaler=torch.amp.GradScaler("cpu",
                                                                                                     enabled=False),
                    amp=AmpSettings(enabled=False, dtype=torch.bfloat16, device_type="cpu"),
                    device=torch.device("cpu"), epoch=0, total_epochs=1, start_iteration=0,
                    lr_for_iteration=lambda i: 0.1, on_iteration_end=lambda i: None, dist_info=DistInfo(), times=times)
    wall = time.perf_counter() - started
    assert times.data_seconds >= batches * 0.15  # sleeps are lower bounds, whatever else runs on the machine
    assert times.step_seconds >= batches * 0.05
    assert times.data_seconds + times.step_seconds <= wall
    assert times.row() == {"data_seconds": round(times.data_seconds, 2), "step_seconds": round(times.step_seconds, 2)}


def test_training_with_persistent_workers_equals_training_in_process(tmp_path):
    """Two loader workers, Mosaic, and a frozen phase at batch 4 before an unfrozen one at batch 2: the weights and
    history equal those of loading every batch in the training process."""
    argv = ("--unfreeze_epoch=3", "--freeze_train=True", "--freeze_epoch=1", "--freeze_batch_size=4",
            "--mosaic=True", "--mosaic_prob=0.5", "--special_aug_ratio=0.7", "--val_period=3")
    runs = {workers: train.main(small_run(tmp_path / str(workers), *argv, f"--num_workers={workers}"))
            for workers in (0, 2)}
    assert [row["frozen"] for row in runs[2].history.rows] == [True, False, False]
    assert timeless(runs[2].history.rows) == timeless(runs[0].history.rows)
    saved = {workers: torch.load(tmp_path / str(workers) / "logs" / "last_epoch_weights.pth", weights_only=True)
             for workers in runs}
    for weights in ("model", "train_model"):
        assert saved[2][weights].keys() == saved[0][weights].keys()
        assert all(torch.equal(saved[2][weights][k], saved[0][weights][k]) for k in saved[0][weights]), weights
    rows = runs[2].history.rows
    assert all(row["data_seconds"] >= 0 and row["step_seconds"] > 0 and row["cpu_seconds"] > 0 for row in rows)
