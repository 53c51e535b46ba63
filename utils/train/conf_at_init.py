"""The confidence term at initialisation, and the focal scale that makes it equal plain BCE's.

Focal loss shrinks the confidence term by about an order of magnitude at initialisation, and with
``mean`` normalisation the reference recipe multiplies it by ``focal_loss_ratio`` = 10, which
overshoots (README, "The loss"). A "focal vs BCE" comparison then also compares two loss weights.
``focal_conf_scale = "match_bce_at_init"`` removes that: on the run's first training batch, with the
network as it starts, the focal arm's weighted confidence term is scaled to equal what plain BCE with
the same settings gives on that batch. Every run records the scale it trains with, the factor that puts on
its confidence weight and its weighted term at initialisation (``conf_term_at_init``), so the comparison
table reads them instead of working them out again.
"""
import dataclasses

import torch

from nets.yolo_training import PLAIN_BCE, build_loss, modulated_conf, settings_focal_factor
from utils.core.config import ConfigError
from utils.core.distributed import EpochSampler
from utils.data.dataloader import yolo_collate

MATCH_BCE = "match_bce_at_init"


def weighted_conf_term(criterion, outputs: list[torch.Tensor], targets: torch.Tensor) -> float:
    """Sum over levels, coarsest first, of the confidence term times its entry of the loss's weights dict."""
    terms = criterion(outputs, targets)
    return float(sum(weight * terms[name] for name, weight in criterion.weights.items()
                     if name.startswith("loss_conf_")))


def first_batch(*, dataset, batch_size: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training batch of ``epoch`` in the order the training loader draws it (same sampler, same
    per-sample augmentation stream), without a DataLoader, which would draw from the global torch RNG."""
    sampler = EpochSampler(len(dataset), shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    indices = sampler._indices()[:batch_size]
    return yolo_collate([dataset[i] for i in indices])


@torch.no_grad()
def calibrate_conf_term(*, net, config, spec, dataset, batch_size: int, device: torch.device,
                        saved: dict | None) -> dict:
    """What the run stores beside its config: the focal scale it trains with (``focal_conf_scale_value``, for
    build_loss), its weighted confidence term at initialisation (``conf_term_at_init``) and the factor on its
    confidence weight (``focal_conf_factor``). Builds its own losses and leaves the network as it found it.
    A resumed run (``saved``: its checkpoint's config) takes them from the checkpoint, as its network is no
    longer at initialisation; a checkpoint of an earlier version, which lacks the factor, has it derived."""
    scale = config.focal_conf_scale
    if isinstance(scale, str) and scale != MATCH_BCE:
        raise ConfigError(f"focal_conf_scale={scale!r}: give a number or {MATCH_BCE!r}")
    if saved is not None and "focal_conf_scale_value" in saved:
        stored = {k: saved[k] for k in ("focal_conf_scale_value", "conf_term_at_init")}
        factor = saved.get("focal_conf_factor")
        if factor is None:
            factor = settings_focal_factor(config, focal_conf_scale=stored["focal_conf_scale_value"])
        return {**stored, "focal_conf_factor": factor}
    images, targets = first_batch(dataset=dataset, batch_size=batch_size, seed=config.seed, epoch=config.init_epoch)
    was_training = net.training
    net.eval()  # running statistics untouched, as in benchmarks/conf_at_init.py
    outputs = net(images.to(device))
    net.train(was_training)
    targets = targets.to(device)
    if scale == MATCH_BCE:
        scale = 1.0
        if modulated_conf(config):  # focal, QFL or VFL, matched to plain BCE with 0/1 targets
            plain = build_loss(config=dataclasses.replace(config, **PLAIN_BCE), spec=spec)
            unmatched = build_loss(config=config, spec=spec, focal_conf_scale=1.0)
            scale = (weighted_conf_term(plain.to(device), outputs, targets)
                     / weighted_conf_term(unmatched.to(device), outputs, targets))
    scale = float(scale)
    matched = build_loss(config=config, spec=spec, focal_conf_scale=scale).to(device)
    return {"focal_conf_scale_value": scale, "conf_term_at_init": weighted_conf_term(matched, outputs, targets),
            "focal_conf_factor": settings_focal_factor(config, focal_conf_scale=scale)}
