"""The confidence term at initialisation, and the focal scale that makes it equal plain BCE's.

Focal loss shrinks the confidence term by about an order of magnitude at initialisation, and with
``mean`` normalisation the reference recipe multiplies it by ``focal_loss_ratio`` = 10, which
overshoots (README, "The loss"). A "focal vs BCE" comparison then also compares two loss weights.
``focal_conf_scale = "match_bce_at_init"`` removes that: on the run's first training batch, with the
network as it starts, the focal arm's weighted confidence term is scaled to equal what plain BCE with
the same settings gives on that batch. Every run records its weighted term at initialisation
(``conf_term_at_init``) so the comparison table can show it.
"""
import dataclasses

import torch

from utils.core.config import ConfigError
from utils.core.distributed import EpochSampler
from utils.data.dataloader import yolo_collate

MATCH_BCE = "match_bce_at_init"


def weighted_conf_term(criterion, outputs: list[torch.Tensor], targets: torch.Tensor) -> float:
    """Sum over levels of the confidence term times its weight in the total (as ``weighted_total`` applies it)."""
    terms = criterion(outputs, targets)
    strides = [criterion.input_shape[0] / out.shape[2] for out in outputs]
    return float(sum(criterion.conf_weight(s) * terms[f"loss_conf_s{round(s)}"] for s in strides))


def first_batch(*, dataset, batch_size: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training batch of ``epoch`` in the order the training loader draws it (same sampler, same
    per-sample augmentation stream), without a DataLoader, which would draw from the global torch RNG."""
    sampler = EpochSampler(len(dataset), shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    indices = sampler._indices()[:batch_size]
    return yolo_collate([dataset[i] for i in indices])


@torch.no_grad()
def calibrate_conf_term(*, net, criterion, config, spec, dataset, batch_size: int, device: torch.device,
                        saved: dict | None) -> dict:
    """Sets ``criterion.focal_conf_scale`` and returns what the run stores beside its config:
    ``focal_conf_scale_value`` and ``conf_term_at_init``. A resumed run (``saved``: its checkpoint's
    config) takes both from the checkpoint, as its network is no longer at initialisation."""
    from nets.yolo_training import build_loss

    scale = config.focal_conf_scale
    if isinstance(scale, str) and scale != MATCH_BCE:
        raise ConfigError(f"focal_conf_scale={scale!r}: give a number or {MATCH_BCE!r}")
    if saved is not None and "focal_conf_scale_value" in saved:
        criterion.focal_conf_scale = saved["focal_conf_scale_value"]
        return {k: saved[k] for k in ("focal_conf_scale_value", "conf_term_at_init")}
    images, targets = first_batch(dataset=dataset, batch_size=batch_size, seed=config.seed, epoch=config.init_epoch)
    was_training = net.training
    net.eval()  # running statistics untouched, as in benchmarks/conf_at_init.py
    outputs = net(images.to(device))
    net.train(was_training)
    targets = targets.to(device)
    if config.focal_loss and scale == MATCH_BCE:
        plain = build_loss(config=dataclasses.replace(config, focal_loss=False, focal_conf_scale=1.0), spec=spec)
        criterion.focal_conf_scale = 1.0
        target = weighted_conf_term(plain.to(device), outputs, targets)
        criterion.focal_conf_scale = target / weighted_conf_term(criterion, outputs, targets)
    else:
        criterion.focal_conf_scale = 1.0 if scale == MATCH_BCE else float(scale)
    return {"focal_conf_scale_value": float(criterion.focal_conf_scale),
            "conf_term_at_init": weighted_conf_term(criterion, outputs, targets)}
