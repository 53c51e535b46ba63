"""The training run behind train.py: set-up, the freeze/unfreeze epochs, evaluation, checkpoints, resume."""
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from nets.darknet_weights import write_darknet_model
from nets.yolo import build_model, init_weights
from nets.yolo_training import build_loss
from utils.core.config import ConfigError, print_config, resolve_settings
from utils.core.device import cpu_has_native_bf16, resolve_device
from utils.core.distributed import EpochSampler, barrier, cleanup_distributed, init_distributed, sync_buffers
from utils.core.model_files import (DEFAULT_ANCHORS_MASK, DEFAULT_ANCHORS_PATH, ModelSpec, check_anchors_mask,
                                    get_anchors, get_classes)
from utils.data.datacheck import check_annotation_files
from utils.data.dataloader import YoloDataset, yolo_collate
from utils.data.voc import read_annotation_file
from utils.eval.evaluation import evaluate_voc_images, unreadable_note
from utils.infer.checkpoint import CHECKPOINT_FORMAT, load_weights, read_checkpoint, save_atomic, saved_config
from utils.train.conf_at_init import calibrate_conf_term
from utils.train.ema import ModelEMA
from utils.train.engine import AmpSettings, NonFiniteLossError, train_one_epoch, validation_loss
from utils.train.history import LossHistory
from utils.train.optim import build_optimizer, lr_at, scaled_lr, set_lr


def resolve_training_config(config_class: type, argv: list[str] | None):
    """train.py's settings as a ``config_class`` (train.TrainConfig); with ``--resume`` the checkpoint's
    config is the base and argv overrides it."""
    config = resolve_settings(config_class, argv)
    if config.resume:
        saved = saved_config(config.resume)
        if saved is None:
            raise ConfigError(f"--resume={config.resume}: not a checkpoint written by train.py")
        config = resolve_settings(config_class, argv, base=saved)
    if len(config.input_shape) != 2 or config.input_shape[0] % 32 or config.input_shape[1] % 32:
        raise ConfigError(f"input_shape={config.input_shape}: needs [h, w], both multiples of 32")
    for key in ("val_period", "eval_period", "save_period"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key}={getattr(config, key)}: needs at least 1")
    return config


def model_spec(config) -> ModelSpec:
    """Classes, anchors and masks resolved from the config's paths; stored in every checkpoint."""
    anchors_mask = config.anchors_mask or DEFAULT_ANCHORS_MASK[config.model]
    anchors_path = config.anchors_path or str(DEFAULT_ANCHORS_PATH[config.model])
    if anchors_path == "auto":  # k-means on the training boxes (kmeans_for_anchors.py), one anchor per mask index
        from utils.data.anchors import auto_anchors

        anchors = auto_anchors(annotation_path=config.train_annotation_path, input_shape=tuple(config.input_shape),
                               k=1 + max(max(m) for m in anchors_mask))
    else:
        anchors = get_anchors(anchors_path)
    check_anchors_mask(anchors_mask, num_anchors=len(anchors), num_levels=len(DEFAULT_ANCHORS_MASK[config.model]),
                       source=anchors_path)
    return ModelSpec(class_names=get_classes(config.classes_path), anchors=anchors, anchors_mask=anchors_mask,
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

    def __init__(self, config):
        self.config = config
        self.dist = init_distributed(requested=config.distributed, device_type=resolve_device(config.device).type)
        device = resolve_device(config.device)
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        # Every batch has the input shape, so cuDNN's autotuned convolution algorithms are chosen once and reused.
        torch.backends.cudnn.benchmark = device.type == "cuda"
        self.spec = model_spec(config)
        self.amp = training_amp(config, device)
        self.run_config = {**dataclasses.asdict(config), **dataclasses.asdict(self.spec),  # what checkpoints store
                           "trained_on": hardware_line(device, self.amp)}
        self.save_dir = Path(config.save_dir)
        self.net = initial_network(config, self.spec, log=self.log)
        if config.sync_bn and self.dist.enabled:
            if device.type != "cuda":
                raise ConfigError("sync_bn=True needs CUDA; SyncBatchNorm does not run on the CPU")
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        self.net.to(device)
        self.optimizer = build_optimizer(self.net, optimizer_type=config.optimizer_type, lr=config.init_lr,
                                         momentum=config.momentum, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp.enabled and self.amp.dtype == torch.float16)
        train_file, val_file = check_annotation_files(
            [read_annotation_file(config.train_annotation_path), read_annotation_file(config.val_annotation_path)],
            class_names=self.spec.class_names, classes_path=config.classes_path, on_corrupt=config.on_corrupt,
            log=self.log)
        self.train_lines, self.val_lines = train_file.lines, val_file.lines
        common = dict(input_shape=tuple(config.input_shape), seed=config.seed, on_corrupt=config.on_corrupt)
        self.train_set = YoloDataset(annotation_lines=self.train_lines, train=True, mosaic=config.mosaic,
                                     mosaic_prob=config.mosaic_prob, mixup=config.mixup,
                                     mixup_prob=config.mixup_prob, special_aug_ratio=config.special_aug_ratio,
                                     total_epochs=config.unfreeze_epoch, **common)
        self.val_set = YoloDataset(annotation_lines=self.val_lines, train=False, **common)
        checkpoint = read_checkpoint(config.resume) if config.resume else None  # read once: it can be large
        self.run_config.update(calibrate_conf_term(  # the focal scale asked for and the weighted conf term at init
            net=self.net, config=config, spec=self.spec, dataset=self.train_set,
            batch_size=self.phase(config.init_epoch)[1], device=device,
            saved=checkpoint["config"] if checkpoint is not None else None))
        self.criterion = build_loss(config=config, spec=self.spec,
                                    focal_conf_scale=self.run_config["focal_conf_scale_value"]).to(device)
        self.start_epoch, self.start_iteration, self.best = config.init_epoch, 0, None
        history_rows = []
        self.ema = ModelEMA(self.net, decay=config.ema_decay, tau=config.ema_tau) if config.ema else None
        if checkpoint is not None:
            self.net.load_state_dict(checkpoint.get("train_model", checkpoint["model"]))  # "model" alone: no EMA
            if self.ema is not None:  # a checkpoint written without EMA restarts the average from its weights
                self.ema.load(weights=checkpoint["model"], state=checkpoint.get("ema", {"updates": 0}))
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scaler.load_state_dict(checkpoint["scaler"])
            torch.set_rng_state(checkpoint["torch_rng"])
            self.start_epoch, self.start_iteration = checkpoint["epoch"], checkpoint["iteration"]
            self.best, history_rows = checkpoint["best"], checkpoint["history"]
            self.log(f"resumed {config.resume} at epoch {self.start_epoch + 1}, iteration {self.start_iteration}")
        self.history = LossHistory(self.save_dir, rows=history_rows) if self.dist.is_main else None

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

    def loader(self, dataset: YoloDataset, *, batch_size: int, shuffle: bool) -> DataLoader:
        per_rank = max(batch_size // self.dist.world_size, 1)
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=self.config.seed, rank=self.dist.rank,
                               world_size=self.dist.world_size)
        return DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=self.config.num_workers,
                          collate_fn=yolo_collate, drop_last=shuffle, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def checkpoint_state(self, *, epoch: int, iteration: int) -> dict:
        ema = {"train_model": self.net.state_dict(), "ema": self.ema.state_dict()} if self.ema is not None else {}
        return {"format": CHECKPOINT_FORMAT, "model": self.inference_net.state_dict(), **ema, "config": self.run_config,
                "epoch": epoch, "iteration": iteration, "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(), "best": self.best,
                "history": self.history.rows if self.history else []}

    def evaluate_map(self) -> dict:
        from utils.infer.detector import YOLO
        from utils.infer.postprocess import PostprocessSettings

        detector = YOLO.from_model(self.inference_net, config=self.run_config,
                                   postprocess_settings=PostprocessSettings(confidence=0.001, nms_iou=0.5),
                                   device=str(self.device))
        image_paths = sorted(line_image_path(line) for line in self.val_lines)
        results = evaluate_voc_images(detector=detector, image_paths=image_paths, class_names=self.spec.class_names,
                                      iou_threshold=0.5, dist_info=self.dist)  # every rank predicts a share
        if results["unreadable"]:
            self.log(unreadable_note(results["unreadable"]))
        return results


def line_image_path(line: str) -> str:
    from utils.data.voc import parse_annotation_line

    return parse_annotation_line(line)[0]


def fit(config, *, on_epoch_end=None) -> Run:
    """Runs train.py's schedule; returns the run (``run.net``, ``run.last_row``). Ctrl-C writes a
    resumable checkpoint. ``on_epoch_end(row)`` is called after every epoch (progress reporting)."""
    run = Run(config)
    run.log("resolved config:")
    if run.dist.is_main:
        print_config(run.run_config)
        run.save_dir.mkdir(parents=True, exist_ok=True)
        (run.save_dir / "config.json").write_text(json.dumps(run.run_config, indent=1), encoding="utf-8")
    if config.freeze_train and not config.model_path and config.freeze_epoch > config.init_epoch:
        run.log("note: freeze_train with no start weights freezes a random backbone; consider --freeze_train=False")
    total = config.unfreeze_epoch
    state = {"epoch": run.start_epoch, "iteration": run.start_iteration}
    run.last_row = {}
    try:
        for epoch in range(run.start_epoch, total):
            run.last_row = run_epoch(run, epoch, state)
            if on_epoch_end is not None:
                on_epoch_end(run.last_row)
    except KeyboardInterrupt:
        if run.dist.is_main:
            path = run.save_dir / "last_epoch_weights.pth"
            save_atomic(run.checkpoint_state(**state), path)
            print(f"\ninterrupted: resumable checkpoint written to {path}; continue with --resume={path}")
        raise
    except NonFiniteLossError as err:  # raised on every rank together (check_finite_all_ranks)
        print(f"stopped: {err}", file=sys.stderr, flush=True)
        barrier(run.dist)  # each rank has printed before any exits, so no rank is killed mid-message
        raise
    finally:
        if run.history:
            run.history.close()
        cleanup_distributed()
    return run


def run_epoch(run: Run, epoch: int, state: dict) -> dict:
    config, total = run.config, run.config.unfreeze_epoch
    frozen, batch_size = run.phase(epoch)
    for param in run.net.backbone.parameters():
        param.requires_grad_(not frozen)
    model = run.net
    if run.dist.enabled:  # re-wrapped each epoch so DDP sees the current set of trainable parameters
        model = DistributedDataParallel(run.net, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    train_loader = run.loader(run.train_set, batch_size=batch_size, shuffle=True)
    start_iteration = run.start_iteration if epoch == run.start_epoch else 0
    train_loader.sampler.set_epoch(epoch, skip=start_iteration * train_loader.batch_size)
    run.train_set.set_epoch(epoch)
    iterations = len(run.train_set) // run.dist.world_size // train_loader.batch_size
    if iterations == 0:
        raise ConfigError(f"{config.train_annotation_path}: {len(run.train_set)} images make no full batch of "
                          f"{batch_size}; lower the batch size")
    lr = scaled_lr(config.init_lr, batch_size=batch_size)
    min_lr = scaled_lr(config.min_lr, batch_size=batch_size)

    def lr_for_iteration(i: int) -> float:
        value = lr_at(epoch + i / max(iterations, 1), total=total, lr=lr, min_lr=min_lr,
                      warmup=config.warmup_epochs, decay_type=config.lr_decay_type)
        set_lr(run.optimizer, value)
        return value

    def on_iteration_end(i: int) -> None:
        if run.ema is not None:
            run.ema.update(run.net)
        state.update(epoch=epoch, iteration=i + 1)

    started = time.time()
    train_terms = train_one_epoch(model=model, criterion=run.criterion, loader=train_loader, optimizer=run.optimizer,
                                  scaler=run.scaler, amp=run.amp, device=run.device, epoch=epoch, total_epochs=total,
                                  start_iteration=start_iteration, lr_for_iteration=lr_for_iteration,
                                  on_iteration_end=on_iteration_end, dist_info=run.dist,
                                  frozen_modules=(run.net.backbone,) if frozen else ())
    state.update(epoch=epoch + 1, iteration=0)
    sync_buffers(run.net, run.dist)
    if run.ema is not None:  # every rank averages its own BatchNorm statistics: rank 0's are kept, as for the net
        sync_buffers(run.ema.module, run.dist)
    last = epoch + 1 == total
    val_terms = dict.fromkeys(train_terms)  # None: no validation this epoch
    if (epoch + 1) % config.val_period == 0 or last:
        val_terms = validation_loss(model=run.inference_net, criterion=run.criterion,
                                    loader=run.loader(run.val_set, batch_size=batch_size, shuffle=False), amp=run.amp,
                                    device=run.device, epoch=epoch, total_epochs=total, dist_info=run.dist)
    row = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"], "frozen": frozen,
           **{f"train_{k}": v for k, v in train_terms.items()}, **{f"val_{k}": v for k, v in val_terms.items()},
           "map": None, "seconds": round(time.time() - started, 2)}
    if config.eval_flag and ((epoch + 1) % config.eval_period == 0 or last):
        row["map"] = run.evaluate_map()["map"]
    if not run.dist.is_main:
        barrier(run.dist)  # wait while rank 0 writes checkpoints and history, with an explicit timeout
        return row
    score = row["map"] if config.eval_flag else _negated(row["val_loss"])  # higher is better; None: not measured
    if score is not None and (run.best is None or score > run.best):
        run.best = score
        save_atomic({"format": CHECKPOINT_FORMAT, "model": run.inference_net.state_dict(), "config": run.run_config,
                     "epoch": epoch + 1, "metrics": row}, run.save_dir / "best_epoch_weights.pth")
        if config.save_darknet:
            write_darknet_model(run.inference_net, weights_path=run.save_dir / "best_epoch_weights.weights",
                                config=run.run_config)
    run.history.append(row)
    checkpoint = run.checkpoint_state(epoch=epoch + 1, iteration=0)
    save_atomic(checkpoint, run.save_dir / "last_epoch_weights.pth")
    if (epoch + 1) % config.save_period == 0 or last:
        name = f"ep{epoch + 1:03d}-loss{row['train_loss']:.3f}-val_loss{_shown(row['val_loss'], '.3f')}.pth"
        save_atomic(checkpoint, run.save_dir / name)
        if config.save_darknet:
            write_darknet_model(run.inference_net, weights_path=run.save_dir / f"{name[:-4]}.weights",
                                config=run.run_config)
    print(f"epoch {epoch + 1}/{total}  train loss {row['train_loss']:.4f} (loc {row['train_loss_loc']:.4f} "
          f"conf {row['train_loss_conf']:.4f} cls {row['train_loss_cls']:.4f})  val loss {_shown(row['val_loss'])}  "
          f"map {_shown(row['map'])}  lr {row['lr']:.2e}  {row['seconds']:.1f}s", flush=True)
    barrier(run.dist)
    return row


def _negated(value: float | None) -> float | None:
    return None if value is None else -value


def _shown(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)
