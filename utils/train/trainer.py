"""The training run behind train.py: its set-up (Run) and the epoch loop (fit): each epoch train_epoch, then
measure_epoch (val loss, mAP), then save_epoch (history, the checkpoints of utils/train/checkpoints.py, the line)."""
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from nets.yolo import build_model, init_weights
from nets.yolo_training import build_loss
from utils.core.config import ConfigError, print_config
from utils.core.cpu_usage import CpuMeter, usable_cores
from utils.core.device import cpu_has_native_bf16, resolve_device
from utils.core.distributed import DistInfo, barrier, cleanup_distributed, init_distributed, sync_buffers
from utils.core.model_files import (DEFAULT_ANCHORS_MASK, ModelSpec, anchor_settings, auto_anchor_count,
                                    check_anchors_mask, get_anchors)
from utils.data.datacheck import check_annotation_files
from utils.data.dataloader import YoloDataset
from utils.data.dataset import Dataset
from utils.data.voc import line_image_path, shared_images
from utils.eval.evaluation import evaluate_voc_images, unreadable_note
from utils.infer.checkpoint import load_weights, read_checkpoint
from utils.train.checkpoints import due, restore, save_checkpoints, save_interrupted
from utils.train.conf_at_init import calibrate_conf_term
from utils.train.data_source import class_names_of, classes_source, read_dataset, train_annotation, training_files
from utils.train.ema import ModelEMA
from utils.train.engine import (AmpSettings, LoopTimes, NonFiniteLossError, RunningMeans, train_one_epoch,
                                validation_loss)
from utils.train.history import LossHistory, epoch_line
from utils.train.loaders import PhaseLoaders
from utils.train.optim import build_optimizer, lr_at, scaled_lr, set_lr
from utils.train.run_lock import claim_run_folder
from utils.train.settings import resolve_training_config  # noqa: F401  (train.py's and compare's entry point)


def model_spec(config, *, dataset: Dataset | None = None) -> ModelSpec:
    """Classes, anchors and masks resolved from the config's paths (and its dataset, read here unless given);
    stored in every checkpoint."""
    if config.dataset and dataset is None:
        dataset = read_dataset(config)
    anchors_path, anchors_mask = anchor_settings(model=config.model, anchors_path=config.anchors_path,
                                                 anchors_mask=config.anchors_mask)
    if anchors_path == "auto":  # k-means on the training boxes (kmeans_for_anchors.py), one anchor per mask index
        from utils.data.anchors import auto_anchors

        anchors = auto_anchors(annotation_path=train_annotation(config, dataset=dataset),
                               input_shape=tuple(config.input_shape), k=auto_anchor_count(anchors_mask))
    else:
        anchors = get_anchors(anchors_path)
    check_anchors_mask(anchors_mask, num_anchors=len(anchors), num_levels=len(DEFAULT_ANCHORS_MASK[config.model]),
                       source=anchors_path)
    return ModelSpec(class_names=class_names_of(config, dataset=dataset), anchors=anchors, anchors_mask=anchors_mask,
                     anchors_path=anchors_path)


def settings_from_saved(saved: dict, config_class: type):
    """(config, spec) back from the flat config dict stored in a checkpoint."""
    names = {f.name for f in dataclasses.fields(config_class)}
    spec_names = {f.name for f in dataclasses.fields(ModelSpec)}
    return (config_class(**{k: v for k, v in saved.items() if k in names}),
            ModelSpec(**{k: saved[k] for k in spec_names}))


def hardware_line(device: torch.device, amp: AmpSettings) -> str:
    """Where and how a run trains, for result tables: results differ with the device, the CPU thread count and the
    autocast precision."""
    how = (f"{'bf16' if amp.dtype == torch.bfloat16 else 'fp16'} autocast" if amp.enabled else "fp32") + (
        " + channels_last" if amp.channels_last else "")
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, {how}"
    threads = torch.get_num_threads()
    return f"CPU ({os.cpu_count()} cores), {threads} thread{'s' * (threads > 1)}, torch {torch.__version__}, {how}"


def training_amp(config, device: torch.device) -> AmpSettings:
    """Autocast and layout of training from fp16 / amp_dtype / channels_last.

    amp_dtype 'auto': float16 with a GradScaler on CUDA, bfloat16 on CPUs that compute it natively, none (fp32) on
    other CPUs, where emulated bf16 is slower than fp32. channels_last None: on whenever autocast is (oneDNN's bf16
    convolutions and the GPU's fp16 tensor cores both want NHWC: YOLOv4's train step at 416 on an H200 took
    1.29x / 1.47x the images/s of fp16 alone at batch 16 / 32), off in fp32.
    """
    dtype = config.amp_dtype
    if dtype == "auto":
        dtype = "float16" if device.type == "cuda" else "bfloat16" if cpu_has_native_bf16() else "float32"
    use_fp16 = config.fp16 and dtype == "float16" and device.type == "cuda"
    use_bf16 = config.fp16 and dtype == "bfloat16"
    channels_last = config.channels_last if config.channels_last is not None else use_fp16 or use_bf16
    return AmpSettings(enabled=use_fp16 or use_bf16, device_type=device.type,
                       dtype=torch.float16 if use_fp16 else torch.bfloat16, channels_last=channels_last)


def initial_network(config, spec: ModelSpec, *, log=print) -> nn.Module:
    """The network a run starts from: seeded initialisation (then ``model_path``'s weights, unless resuming).
    Equal settings give bit-identical networks, so the state at initialisation can be rebuilt after training."""
    torch.manual_seed(config.seed)
    net = build_model(model=config.model, num_classes=len(spec.class_names),
                      anchors_per_level=len(spec.anchors_mask[0]))
    init_weights(net, obj_prior=config.obj_prior)
    if config.model_path and not config.resume:
        report = load_weights(net, config.model_path, model=config.model, strict=False, cfg_path=config.cfg_path)
        log(f"start weights {config.model_path}: {report}")
    return net


class Run:
    """Holds what one training run needs between epochs."""

    def __init__(self, config, *, placement: tuple[DistInfo, torch.device] | None = None):
        """``placement``: distributed_device's (process group, device) when the caller has set them up already."""
        self.config = config
        self.dist, self.device = placement or distributed_device(config)
        # Every batch has the input shape, so cuDNN's autotuned convolution algorithms are chosen once and reused.
        torch.backends.cudnn.benchmark = self.device.type == "cuda"
        self.dataset = read_dataset(config, log=self.log) if config.dataset else None
        self.spec = model_spec(config, dataset=self.dataset)
        self.amp = training_amp(config, self.device)
        self.run_config = {**dataclasses.asdict(config), **dataclasses.asdict(self.spec),  # what checkpoints store
                           "trained_on": hardware_line(self.device, self.amp)}
        if self.dataset is not None:  # the format read, also when dataset_format is "auto"
            self.run_config["dataset_read_as"] = self.dataset.format
        self.save_dir = Path(config.save_dir)
        self.net = self.training_network()
        self.optimizer = build_optimizer(self.net, optimizer_type=config.optimizer_type, lr=config.init_lr,
                                         momentum=config.momentum, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp.enabled and self.amp.dtype == torch.float16)
        train_lines, self.val_lines = self.annotation_lines()
        self.train_set, self.val_set = self.datasets(train_lines=train_lines, val_lines=self.val_lines)
        self.loaders = PhaseLoaders(train_set=self.train_set, val_set=self.val_set, num_workers=config.num_workers,
                                    seed=config.seed, dist_info=self.dist, pin_memory=self.device.type == "cuda")
        checkpoint = read_checkpoint(config.resume) if config.resume else None  # read once: it can be large
        self.run_config.update(calibrate_conf_term(  # the focal scale asked for and the weighted conf term at init
            net=self.net, config=config, spec=self.spec, dataset=self.train_set,
            batch_size=self.phase(config.init_epoch)[1], device=self.device,
            saved=checkpoint["config"] if checkpoint is not None else None))
        self.criterion = build_loss(config=config, spec=self.spec,
                                    focal_conf_scale=self.run_config["focal_conf_scale_value"]).to(self.device)
        self.ema = ModelEMA(self.net, decay=config.ema_decay, tau=config.ema_tau) if config.ema else None
        self.start_epoch, self.start_iteration, self.start_means, self.best = config.init_epoch, 0, None, None
        history_rows = self.resume(checkpoint) if checkpoint is not None else []
        self.history = LossHistory(self.save_dir, rows=history_rows) if self.dist.is_main else None

    def training_network(self) -> nn.Module:
        """initial_network on the run's device, with SyncBatchNorm when asked for under DDP."""
        net = initial_network(self.config, self.spec, log=self.log)
        if self.config.sync_bn and self.dist.enabled:
            if self.device.type != "cuda":
                raise ConfigError("sync_bn=True needs CUDA; SyncBatchNorm does not run on the CPU")
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        return net.to(self.device)

    def resume(self, checkpoint: dict) -> list[dict]:
        """Continues from ``checkpoint`` (utils/train/checkpoints.py restore); returns its history rows."""
        rows = restore(self, checkpoint)
        self.log(f"resumed {self.config.resume} at epoch {self.start_epoch + 1}, iteration {self.start_iteration}; "
                 f"writing to {self.save_dir}")
        return rows

    def annotation_lines(self) -> tuple[list[str], list[str]]:
        """The training and validation annotation lines (of the files, or of the dataset's train and val splits),
        checked against the classes. Whether the validation images are held out (none is a training image) is
        recorded in the run's config and history rows."""
        config = self.config
        train_file, val_file = check_annotation_files(
            list(training_files(config, dataset=self.dataset)), class_names=self.spec.class_names,
            classes_path=classes_source(config, dataset=self.dataset), on_corrupt=config.on_corrupt, log=self.log)
        shared = len(shared_images(lines=val_file.lines, others=train_file.lines))
        self.run_config["val_held_out"] = shared == 0
        if shared:
            self.log(f"note: {shared} of {len(val_file.lines)} validation images ({val_file.path}) are "
                     f"training images too ({train_file.path}): the val loss is not held out")
        return train_file.lines, val_file.lines

    def datasets(self, *, train_lines: list[str], val_lines: list[str]) -> tuple[YoloDataset, YoloDataset]:
        """The training set (augmented as configured) and the validation set."""
        config = self.config
        common = dict(input_shape=tuple(config.input_shape), seed=config.seed, on_corrupt=config.on_corrupt)
        train_set = YoloDataset(annotation_lines=train_lines, train=True, mosaic=config.mosaic,
                                mosaic_prob=config.mosaic_prob, mixup=config.mixup, mixup_prob=config.mixup_prob,
                                special_aug_ratio=config.special_aug_ratio, total_epochs=config.unfreeze_epoch,
                                **common)
        return train_set, YoloDataset(annotation_lines=val_lines, train=False, **common)

    @property
    def inference_net(self) -> nn.Module:
        """The weights that are validated, evaluated and saved as a checkpoint's ``model``: the EMA when on."""
        return self.ema.module if self.ema is not None else self.net

    def log(self, message: str) -> None:
        if self.dist.is_main:
            print(message, flush=True)

    def phase(self, epoch: int) -> tuple[bool, int]:
        """(backbone frozen, batch size) of an epoch."""
        frozen = self.config.freeze_train and epoch < self.config.freeze_epoch
        return frozen, self.config.freeze_batch_size if frozen else self.config.unfreeze_batch_size

    def evaluate_map(self) -> dict:
        from utils.infer.backends import on_backend
        from utils.infer.detector import YOLO
        from utils.infer.postprocess import PostprocessSettings

        detector = on_backend(YOLO.from_model(self.inference_net, config=self.run_config,
                                              postprocess_settings=PostprocessSettings(confidence=0.001, nms_iou=0.5),
                                              device=str(self.device)), backend=self.config.eval_backend)
        if self.dataset is not None:  # ground truth from the val records, not from files beside the images
            source = {"records": self.dataset.records("val")}
        else:
            source = {"image_paths": sorted(line_image_path(line) for line in self.val_lines)}
        results = evaluate_voc_images(detector=detector, **source, class_names=self.spec.class_names,
                                      iou_threshold=0.5, dist_info=self.dist)  # every rank predicts a share
        if results["unreadable"]:
            self.log(unreadable_note(results["unreadable"]))
        return results


def distributed_device(config) -> tuple[DistInfo, torch.device]:
    """The process group (when distributed) and this rank's device: under DDP on CUDA, the GPU of its local rank."""
    device = resolve_device(config.device)
    dist_info = init_distributed(requested=config.distributed, device_type=device.type)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    return dist_info, device


def fit(config, *, on_epoch_end=None) -> Run:
    """Runs train.py's schedule; returns the run (``run.net``, ``run.last_row``). The run folder is locked for the
    run (utils/train/run_lock.py). Ctrl-C writes a resumable checkpoint. ``on_epoch_end(row)`` is called after every
    epoch (progress reporting)."""
    placement = distributed_device(config)
    try:
        with claim_run_folder(config.save_dir, dist_info=placement[0]):
            run = Run(config, placement=placement)
            train_epochs(run, on_epoch_end=on_epoch_end)
    finally:
        cleanup_distributed()
    return run


def train_epochs(run: Run, *, on_epoch_end=None) -> None:
    """The epoch loop of ``fit``: each epoch trained, measured and saved; on Ctrl-C the resumable checkpoint."""
    config = run.config
    announce(run)
    state = {"epoch": run.start_epoch, "iteration": run.start_iteration,  # how far training got, for Ctrl-C
             "means": run.start_means}
    run.last_row = {}
    try:
        for epoch in range(run.start_epoch, config.unfreeze_epoch):
            started, cpu, times = time.time(), CpuMeter.start(), LoopTimes()
            train_terms = train_epoch(run, epoch=epoch, state=state, times=times)
            row = {**measure_epoch(run, epoch=epoch, train_terms=train_terms, started=started), **times.row(),
                   **cpu.read()}
            save_epoch(run, epoch=epoch, row=row)
            run.last_row = row
            if on_epoch_end is not None:
                on_epoch_end(row)
    except KeyboardInterrupt:
        save_interrupted(run, state)
        raise
    except NonFiniteLossError as err:  # raised on every rank together (check_finite_all_ranks)
        print(f"stopped: {err}", file=sys.stderr, flush=True)
        barrier(run.dist)  # each rank has printed before any exits, so no rank is killed mid-message
        raise
    finally:
        run.loaders.close()
        if run.history:
            run.history.close()


def announce(run: Run) -> None:
    """Prints the resolved config and writes it to config.json (rank 0), with a note on a pointless freeze."""
    config = run.config
    run.log("resolved config:")
    if run.dist.is_main:
        print_config(run.run_config)
        run.save_dir.mkdir(parents=True, exist_ok=True)
        (run.save_dir / "config.json").write_text(json.dumps(run.run_config, indent=1), encoding="utf-8")
    if config.freeze_train and not config.model_path and config.freeze_epoch > config.init_epoch:
        run.log("note: freeze_train with no start weights freezes a random backbone; consider --freeze_train=False")


def train_epoch(run: Run, *, epoch: int, state: dict, times: LoopTimes | None = None) -> dict[str, float]:
    """Trains one epoch (a resumed run's first from where it stopped, its loss sums restored); returns the mean
    loss terms. ``state`` follows every iteration, so Ctrl-C can write where training stopped and the epoch's loss
    sums so far (under DDP rank 0's: no collective is safe on an interrupt). ``times`` gathers the seconds spent
    waiting for batches and in the steps."""
    frozen, batch_size = run.phase(epoch)
    model = training_model(run, frozen=frozen)
    loader, start_iteration = epoch_loader(run, epoch=epoch, batch_size=batch_size)
    means = RunningMeans(run.start_means if start_iteration else None)
    lr_for_iteration = epoch_lr(run, epoch=epoch, batch_size=batch_size,
                                iterations=full_batches(run, batch_size=batch_size, per_rank=loader.batch_size))

    def on_iteration_end(i: int) -> None:
        if run.ema is not None:
            run.ema.update(run.net)
        state.update(epoch=epoch, iteration=i + 1, means=means.state())

    terms = train_one_epoch(model=model, criterion=run.criterion, loader=loader, optimizer=run.optimizer,
                            scaler=run.scaler, amp=run.amp, device=run.device, epoch=epoch,
                            total_epochs=run.config.unfreeze_epoch, start_iteration=start_iteration,
                            lr_for_iteration=lr_for_iteration, on_iteration_end=on_iteration_end, dist_info=run.dist,
                            frozen_modules=(run.net.backbone,) if frozen else (), means=means, times=times)
    state.update(epoch=epoch + 1, iteration=0, means=None)
    sync_buffers(run.net, run.dist)
    if run.ema is not None:  # every rank averages its own BatchNorm statistics: rank 0's are kept, as for the net
        sync_buffers(run.ema.module, run.dist)
    return terms


def training_model(run: Run, *, frozen: bool) -> nn.Module:
    """The network with its backbone trainable or not; under DDP wrapped anew, so DDP sees the current set of
    trainable parameters."""
    for param in run.net.backbone.parameters():
        param.requires_grad_(not frozen)
    if not run.dist.enabled:
        return run.net
    return DistributedDataParallel(run.net, device_ids=[run.device.index] if run.device.type == "cuda" else None)


def epoch_loader(run: Run, *, epoch: int, batch_size: int) -> tuple[DataLoader, int]:
    """The training loader of ``epoch`` and the iteration it starts at: where a resumed run stopped in its first
    epoch, else 0. Sampler order and augmentation follow the epoch, so a resumed epoch sees the same batches."""
    start_iteration = run.start_iteration if epoch == run.start_epoch else 0
    return run.loaders.train(epoch=epoch, batch_size=batch_size, skip_batches=start_iteration), start_iteration


def full_batches(run: Run, *, batch_size: int, per_rank: int) -> int:
    """Iterations of a training epoch on each rank (``per_rank`` images each); at least one, or a ConfigError."""
    iterations = len(run.train_set) // run.dist.world_size // per_rank
    if iterations == 0:
        source = run.dataset.split_name("train") if run.dataset else run.config.train_annotation_path
        raise ConfigError(f"{source}: {len(run.train_set)} images make no full batch of {batch_size}; lower the "
                          f"batch size")
    return iterations


def epoch_lr(run: Run, *, epoch: int, batch_size: int, iterations: int) -> Callable[[int], float]:
    """``lr_for_iteration(i)``: sets the learning rate of iteration i of ``epoch`` (``iterations`` long) and returns
    it: the schedule at the fractional epoch, for rates scaled to ``batch_size``."""
    config = run.config
    lr = scaled_lr(config.init_lr, batch_size=batch_size)
    min_lr = scaled_lr(config.min_lr, batch_size=batch_size)

    def lr_for_iteration(i: int) -> float:
        value = lr_at(epoch + i / max(iterations, 1), total=config.unfreeze_epoch, lr=lr, min_lr=min_lr,
                      warmup=config.warmup_epochs, decay_type=config.lr_decay_type)
        set_lr(run.optimizer, value)
        return value

    return lr_for_iteration


def measure_epoch(run: Run, *, epoch: int, train_terms: dict[str, float], started: float) -> dict:
    """The epoch's history row: training means, val loss and mAP where due (None otherwise), and the seconds
    since ``started`` up to the end of validation."""
    config, total = run.config, run.config.unfreeze_epoch
    frozen, batch_size = run.phase(epoch)
    val_terms = dict.fromkeys(train_terms)  # None: no validation this epoch
    if due(epoch, period=config.val_period, total=total):
        val_terms = validation_loss(model=run.inference_net, criterion=run.criterion,
                                    loader=run.loaders.val(batch_size=batch_size), amp=run.amp,
                                    device=run.device, epoch=epoch, total_epochs=total, dist_info=run.dist)
    row = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"], "frozen": frozen,
           **{f"train_{k}": v for k, v in train_terms.items()}, **{f"val_{k}": v for k, v in val_terms.items()},
           "map": None, "seconds": round(time.time() - started, 2), "val_held_out": run.run_config["val_held_out"]}
    if config.eval_flag and due(epoch, period=config.eval_period, total=total):
        row["map"] = run.evaluate_map()["map"]
    return row


def save_epoch(run: Run, *, epoch: int, row: dict) -> None:
    """Rank 0 records the row, writes the checkpoints and prints the epoch's line; the other ranks wait for it
    (an explicit barrier with a timeout)."""
    if run.dist.is_main:
        run.history.append(row)
        save_checkpoints(run, epoch=epoch, row=row)
        print(epoch_line(row, total=run.config.unfreeze_epoch, cores=usable_cores()), flush=True)
    barrier(run.dist)
