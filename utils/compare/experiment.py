"""Runs behind compare_focal.py: plan (arms x sweep values x seeds), train (skip / resume), evaluate, summarise.

Each run is an ordinary train.py run in ``<results_dir>/runs/<name>`` with its own checkpoints and logs,
started as ``train.py --config=<run folder>/run_config.json`` (utils/compare/run_folders.py). A run is finished
once its ``eval.json`` exists; a run with a checkpoint but no ``eval.json`` is resumed (or only evaluated
when its training already reached the last epoch).
"""
import dataclasses
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nets.yolo_training import focal_conf_factor
from utils.compare.easy_negatives import confidence_samples_over, easy_negative_share
from utils.compare.paired import image_records, mean_or_none
from utils.compare.run_folders import train_argv
from utils.core.config import ConfigError, parse_value
from utils.infer.checkpoint import read_checkpoint
from utils.train.conf_at_init import MATCH_BCE

GRID_GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)  # the Focal Loss paper's Table 1 ablation
GRID_ALPHAS = (0.25, 0.5, 0.75)
CDF_GAMMAS = (0.0, 0.5, 1.0, 2.0)  # the Focal Loss paper's Figure 4
REPO = Path(__file__).resolve().parents[2]
# The named arms of compare_focal.py's --arms: each sets every setting that chooses the confidence loss, so a
# train.py setting given to all arms cannot turn one arm into another. Formulas: nets/conf_losses.py.
_PLAIN = {"focal_loss": False, "focal_cls": False, "quality_loss": "none", "conf_target": "one"}
_FOCAL = {"focal_alpha": 0.25, "focal_gamma": 2.0}
ARM_PRESETS = {
    "bce": _PLAIN,
    # the modulated arms keep the reference recipe's weight: focal_loss_ratio 10 on the mean-normalised term
    "focal": {**_PLAIN, "focal_loss": True, **_FOCAL, "focal_conf_scale": 1.0},
    "focal_cls": {**_PLAIN, "focal_loss": True, "focal_cls": True, **_FOCAL, "focal_conf_scale": 1.0},
    "qfl": {**_PLAIN, "quality_loss": "qfl", "qfl_beta": 2.0, "focal_conf_scale": 1.0},  # Li et al. 2020
    "vfl": {**_PLAIN, "quality_loss": "vfl", "vfl_alpha": 0.75, "vfl_gamma": 2.0, "focal_conf_scale": 1.0},
    "iou_obj": {**_PLAIN, "conf_target": "iou", "iou_target_ratio": 1.0},  # YOLOv5's objectness target
}


@dataclass
class RunSpec:
    name: str
    arm: str
    seed: int
    overrides: dict = field(default_factory=dict)  # train.py settings of this run (arm, sweep values, seed)
    base_arm: str = ""  # the arm's name without the sweep values
    tag: str = ""  # the sweep values, shared by the runs that are compared with each other


def grid_arms() -> list[dict]:
    arms = [{"name": "bce", "focal_loss": False}]
    arms += [{"name": f"focal_a{a:g}_g{g:g}", "focal_loss": True, "focal_alpha": a, "focal_gamma": g,
              "focal_conf_scale": MATCH_BCE}
             for g in GRID_GAMMAS for a in GRID_ALPHAS]
    return arms


def parse_sweep(text: str, train_settings: dict) -> list[dict]:
    """``"init_lr=1e-3,1e-2;input_shape=[320,320]"`` -> the cartesian product as dicts of train.py settings."""
    combos: list[dict] = [{}]
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, values = part.partition("=")
        if key not in train_settings:
            raise ConfigError(f"--sweep: {key!r} is not a train.py setting")
        items = _split_top_level(values)
        parsed = [parse_value(v, train_settings[key][0], key=key) for v in items]
        combos = [{**c, key: v} for c in combos for v in parsed]
    return combos


def _split_top_level(text: str) -> list[str]:
    """Splits on commas outside brackets, so list values such as [320,320] stay whole."""
    items, depth, current = [], 0, ""
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [i.strip() for i in items + [current] if i.strip()]


def resolve_arms(arms: list[str | dict]) -> list[dict]:
    """compare_focal.py's ``arms``: a name stands for its ARM_PRESETS entry; a dict (a "name" and train.py
    settings) is kept as it is. Unknown names and two arms of one name are refused."""
    resolved = []
    for arm in arms:
        if isinstance(arm, str):
            if arm not in ARM_PRESETS:
                raise ConfigError(f"--arms: no arm named {arm!r}; the named arms are {', '.join(ARM_PRESETS)}, or "
                                  f"give a dict of a 'name' and train.py settings")
            arm = {"name": arm, **ARM_PRESETS[arm]}
        resolved.append(dict(arm))
    names = [arm["name"] for arm in resolved if "name" in arm]  # an arm without one is refused by its caller
    if len(set(names)) < len(names):
        raise ConfigError(f"--arms: two arms share a name ({names}); each arm's runs are kept under its name")
    return resolved


def plan_runs(*, arms: list[str | dict], sweep: list[dict], seeds: list[int]) -> list[RunSpec]:
    """Every arm (names resolved as resolve_arms does) at every sweep combination and seed."""
    runs = []
    for arm in resolve_arms(arms):
        settings = {k: v for k, v in arm.items() if k != "name"}
        for combo in sweep:
            for seed in seeds:
                tag = "".join(f"__{k}={_slug(v)}" for k, v in combo.items())
                runs.append(RunSpec(name=f"{arm['name']}{tag}__seed{seed}", arm=arm["name"] + tag.replace("__", " "),
                                    seed=seed, overrides={**settings, **combo, "seed": seed}, base_arm=arm["name"],
                                    tag=tag))
    return runs


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", json.dumps(value)).strip("-")


class Progress:
    """One overall line (run, seed, epoch, ETA) printed whenever a run finishes an epoch; ``epochs`` maps each run's
    name to its number of epochs (arms and sweeps may change it)."""

    def __init__(self, runs: list[RunSpec], epochs: dict[str, int]):
        self.runs, self.epochs = {r.name: r for r in runs}, epochs
        self.done = {r.name: 0 for r in runs}
        self.started, self.counted = time.time(), 0

    def set_done(self, name: str, epochs: int, *, timed: bool = True) -> None:
        """Records that run ``name`` has finished ``epochs`` epochs; ``timed`` epochs count towards the ETA."""
        new = epochs - self.done[name]
        if new <= 0:
            return
        self.done[name] = epochs
        if not timed:
            return
        self.counted += new
        total = sum(self.epochs[run] for run in self.runs)
        finished = sum(self.done.values())
        eta = (time.time() - self.started) / self.counted * (total - finished)
        run = self.runs[name]
        print(f"[compare] {run.arm} seed {run.seed}: epoch {epochs}/{self.epochs[name]} | "
              f"all runs {finished}/{total} epochs | ETA {eta / 60:.1f} min", flush=True)


def train_in_process(*, run: RunSpec, run_dir: Path, progress: Progress, config_class: type) -> None:
    """Trains one run in this process, with train.py's own progress bars; ``config_class`` is train.TrainConfig."""
    from utils.train.trainer import fit, resolve_training_config

    config = resolve_training_config(config_class, train_argv(run_dir))
    fit(config, on_epoch_end=lambda row: progress.set_done(run.name, row["epoch"]))


def train_in_subprocesses(*, jobs: list[tuple[RunSpec, Path]], parallel: int, progress: Progress,
                          devices: list[str] | None = None, poll_seconds: float = 2.0) -> None:
    """Trains runs as ``python train.py`` processes, ``parallel`` at a time, each with an equal share of the
    CPU threads (on a CPU, two single-threaded runs beat one run after the other with two threads).
    With ``devices`` (GPU indices) one run per GPU at once, each seeing only its GPU (CUDA_VISIBLE_DEVICES).
    Each run's output goes to ``<run_dir>/train.log``."""
    free = list(devices or [])
    parallel = len(free) or parallel
    threads = max(1, (os.cpu_count() or 1) // parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, active = list(jobs), []
    try:
        while pending or active:
            while pending and len(active) < parallel:
                run, run_dir = pending.pop(0)
                gpu = free.pop(0) if devices else None
                log = open(run_dir / "train.log", "a", encoding="utf-8")
                command = [sys.executable, str(REPO / "train.py"), *train_argv(run_dir)]
                run_env = env if gpu is None else {**env, "CUDA_VISIBLE_DEVICES": gpu}
                active.append((run, run_dir, log, gpu, subprocess.Popen(command, cwd=os.getcwd(), env=run_env,
                                                                        stdout=log, stderr=subprocess.STDOUT)))
            time.sleep(poll_seconds)
            for job in list(active):
                run, run_dir, log, gpu, process = job
                progress.set_done(run.name, _history_epochs(run_dir))
                if process.poll() is not None:
                    log.close()
                    active.remove(job)
                    if gpu is not None:
                        free.append(gpu)
                    if process.returncode != 0:
                        raise RuntimeError(f"run {run.name} failed (exit code {process.returncode}); "
                                           f"see {run_dir / 'train.log'}")
    finally:
        for _, _, log, _, process in active:  # interrupted or failed: stop the others the way Ctrl-C would,
            process.send_signal(signal.SIGINT)  # so each writes a resumable checkpoint
            process.wait()
            log.close()


def _history_epochs(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "history.json").read_text(encoding="utf-8")))
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or caught mid-write
        return 0


def epochs_done(run_dir: Path) -> int:
    checkpoint = run_dir / "last_epoch_weights.pth"
    return read_checkpoint(checkpoint)["epoch"] if checkpoint.is_file() else 0


# eval.json of earlier versions are evaluated again: 4 and before lack the scoring precision (or more) or scored in
# OpenVINO's bf16 with bf16 prediction convolutions
EVAL_FORMAT = 5


def evaluate_run(*, run_dir: Path, test_lines: list[str], device: str, backend: str, config_class: type,
                 test_annotation_path: str, records: list | None = None) -> dict:
    """mAP (all-point and VOC07), COCO AP (and by object size) and per-class AP of the run's final weights on
    the test images (``test_lines``; ground truth from the XMLs beside them, or from a dataset split's ``records``;
    ``test_annotation_path`` names them, for reuse), with get_map.py's code and settings; the per-image records the
    paired bootstrap and the reliability diagrams need (``eval_images.npz``); the confidence term at init; the Focal
    Loss paper's Figure 4 CDFs and the easy negatives' share of the confidence loss, at initialisation and trained.
    ``backend`` is the engine that scores (get_map.py's setting); the confidence samples come from PyTorch."""
    from utils.data.voc import line_image_path
    from utils.eval.evaluation import predict_with_ground_truth, score_detections
    from utils.infer.backends import on_backend
    from utils.infer.detector import YOLO
    from utils.infer.postprocess import PostprocessSettings

    checkpoint = run_dir / "last_epoch_weights.pth"
    detector = YOLO(model_path=str(checkpoint), postprocess_settings=PostprocessSettings(confidence=0.001, nms_iou=0.5),
                    device=device)
    scorer = on_backend(detector, backend=backend)
    names = detector.class_names
    paths = None if records is not None else [line_image_path(line) for line in test_lines]
    gt, predictions = predict_with_ground_truth(detector=scorer, class_names=names, image_paths=paths,
                                                records=records)  # get_map.py's evaluator and rules
    dets = {image_id: predictions.dets.get(image_id, []) for image_id in gt}
    results = score_detections(gt=gt, dets=dets, class_names=names, coco=True)
    coco = results["coco"]
    image_records(gt=gt, dets=dets, class_names=names).to_npz(run_dir / "eval_images.npz")
    saved = read_checkpoint(checkpoint)
    history = saved["history"]
    last = history[-1] if history else {}
    samples = confidence_samples(detector=detector, config=saved["config"], test_lines=test_lines,
                                 config_class=config_class)
    evaluation = {
        "format": EVAL_FORMAT, "test_annotation_path": test_annotation_path,
        "map": results["map"], "map_voc07": results["map_voc07"], "coco_ap": coco["AP"], "coco_ap50": coco["AP50"],
        "coco": coco, "per_class_ap": {name: v["ap"] for name, v in results["per_class"].items()},
        "scored_in": f"{scorer.precision} on {scorer.engine}",
        "final_train": {k: last.get(f"train_{k}") for k in ("loss_loc", "loss_conf", "loss_cls")},
        "train_seconds": round(sum(row.get("seconds", 0.0) for row in history), 1),
        "config": {k: saved["config"].get(k) for k in ("focal_loss", "focal_alpha", "focal_gamma", "focal_cls",
                                                        "quality_loss", "qfl_beta", "vfl_alpha", "vfl_gamma",
                                                        "conf_target", "iou_target_ratio",
                                                        "focal_loss_ratio", "focal_conf_scale", "conf_normalization",
                                                        "seed", "init_lr", "unfreeze_epoch", "input_shape", "model",
                                                        "focal_conf_scale_value", "conf_term_at_init",
                                                        "focal_conf_factor", "trained_on")},
        "cdf": confidence_loss_cdf(*samples["trained"]),
        "easy_negatives": {stage: easy_negative_share(logits=logits, positive=positive,
                                                      alpha=saved["config"]["focal_alpha"],
                                                      gamma=saved["config"]["focal_gamma"])
                           for stage, (logits, positive) in samples.items()},
    }
    (run_dir / "eval.json").write_text(json.dumps(evaluation, indent=1), encoding="utf-8")
    return evaluation


def reusable_evaluation(run_dir: Path, test_annotation_path: str, *, scored_in: str) -> dict | None:
    """The run's eval.json when it is of this version, scored on these test images (an annotation file or a
    dataset split, see selection.Scoring.source) and in ``scored_in`` (engine and precision, as
    backends.scoring_label names them): another engine or precision scores a few detections differently, so a
    changed --eval_backend, or 'auto' choosing another engine, scores again."""
    try:
        evaluation = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    ok = (evaluation.get("format") == EVAL_FORMAT and evaluation.get("test_annotation_path") == test_annotation_path
          and evaluation.get("scored_in") == scored_in and (run_dir / "eval_images.npz").is_file())
    return evaluation if ok else None


def confidence_samples(*, detector, config: dict, test_lines: list[str], config_class: type
                       ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"init": ..., "trained": ...}: (K,) objectness logits and (K,) positive flags of every kept cell over the
    test images, from the run's network as it started (rebuilt from its seed: bit-identical to the run's start)
    and from its final weights (``detector``). ``config`` is the checkpoint's stored config, ``config_class``
    train.TrainConfig."""
    from nets.yolo_training import build_loss
    from utils.data.dataloader import YoloDataset
    from utils.train.trainer import initial_network, settings_from_saved

    train_config, spec = settings_from_saved(config, config_class)
    train_config = dataclasses.replace(train_config, resume="")
    criterion = build_loss(config=train_config, spec=spec).to(detector.device)
    dataset = YoloDataset(annotation_lines=test_lines, input_shape=tuple(train_config.input_shape), train=False)
    start = initial_network(train_config, spec, log=lambda message: None).to(detector.device).eval()
    return {
        "init": confidence_samples_over(forward=lambda images: start(images.to(detector.device)),
                                        criterion=criterion, dataset=dataset),
        "trained": confidence_samples_over(forward=lambda images: detector.raw_outputs(images.numpy()),
                                           criterion=criterion, dataset=dataset),
    }


def confidence_loss_cdf(logits: torch.Tensor, positive: torch.Tensor, *, points: int = 200) -> dict:
    """Cumulative distribution of the normalised confidence loss over (K,) positive and negative cells.

    For gamma in CDF_GAMMAS, each kept cell's loss is FL_gamma = (1 - p_t)^gamma * CE (alpha only scales
    a whole group, which the normalisation cancels); cells are sorted by loss and the cumulative share of
    the group's total loss is sampled at ``points`` fractions.
    """
    ce = F.binary_cross_entropy_with_logits(logits, positive.float(), reduction="none")
    one_minus_pt = torch.sigmoid(torch.where(positive, -logits, logits))
    fractions = np.linspace(0, 1, points + 1)[1:]
    curves = {}
    for group, mask in (("positive", positive), ("negative", ~positive)):
        curves[group] = {}
        for gamma in CDF_GAMMAS:
            loss = (ce[mask] * one_minus_pt[mask] ** gamma).double().sort().values.numpy()
            if loss.size == 0 or loss.sum() <= 0:
                continue
            cumulative = np.cumsum(loss) / loss.sum()
            index = np.clip(np.ceil(fractions * loss.size).astype(int) - 1, 0, loss.size - 1)
            curves[group][f"{gamma:g}"] = cumulative[index].tolist()
    return {"fractions": fractions.tolist(), "curves": curves, "num_positive": int(positive.sum()),
            "num_negative": int((~positive).sum())}


def stored_focal_factor(config: dict) -> float:
    """The factor on the run's confidence weight, as the run stored it (``focal_conf_factor``); runs of earlier
    versions stored only what it is made of, which nets.yolo_training.focal_conf_factor combines."""
    if config.get("focal_conf_factor") is not None:
        return config["focal_conf_factor"]
    return focal_conf_factor(focal_loss=config["focal_loss"], quality_loss=config.get("quality_loss") or "none",
                             conf_normalization=config["conf_normalization"],
                             focal_loss_ratio=config["focal_loss_ratio"],
                             focal_conf_scale=config.get("focal_conf_scale_value") or 1.0)


def conf_normalization_note(config: dict) -> str:
    """How the run normalised its confidence term and, with a modulated loss (focal, QFL, VFL), the factor on its
    weight."""
    norm = "mean over kept cells" if config["conf_normalization"] == "mean" else "sum / number of positives"
    quality = config.get("quality_loss") or "none"  # runs of earlier versions have none
    if not (config["focal_loss"] or quality != "none"):
        return norm
    loss = "focal" if config["focal_loss"] else quality
    factor = stored_focal_factor(config)
    if config.get("focal_conf_scale") == MATCH_BCE:
        return f"{norm}, {loss} x{factor:.3g} (matched to BCE at init)"
    return f"{norm}, {loss} x{factor:g}" if factor != 1.0 else norm


def hardware_summary(evaluations: dict[str, dict]) -> str:
    """One line on where the runs trained (device, CPU threads per run, torch), counting runs per setting, and in
    which precision the test images were scored."""
    counts: dict[str, int] = {}
    for evaluation in evaluations.values():
        where = evaluation["config"].get("trained_on") or "not recorded (trained by an earlier version)"
        counts[where] = counts.get(where, 0) + 1
    scored = sorted({evaluation["scored_in"] for evaluation in evaluations.values()})
    return ("Trained on: " + "; ".join(f"{where} ({n} run{'s' * (n > 1)})" for where, n in counts.items())
            + f". Scored in {' and '.join(scored)} (get_map.py's default here).")


def own_loss_share(shares: dict, *, config: dict) -> float | None:
    """The easy negatives' share of the confidence loss the run trained with (focal or plain BCE, as the run's
    stored ``config`` says); None (not measured) for the losses with IoU targets (QFL, VFL, conf_target 'iou')."""
    if (config.get("quality_loss") or "none") != "none" or (config.get("conf_target") or "one") != "one":
        return None
    return shares["focal_share"] if config["focal_loss"] else shares["bce_share"]


def summarise(evaluations: dict[str, dict], runs: list[RunSpec], calibrations: dict) -> list[dict]:
    """One row per arm (seeds aggregated: mean and std of every figure, plus each run's mAP).
    ``calibrations``: run name -> utils.eval.reliability.ReliabilityBins of its test detections."""
    rows = []
    for arm in dict.fromkeys(r.arm for r in runs):
        names = [r.name for r in runs if r.arm == arm]
        evs = [evaluations[name] for name in names]
        maps = [e["map"] for e in evs]
        row = {"arm": arm, "runs": len(evs), "map": statistics.fmean(maps),
               "map_std": statistics.stdev(maps) if len(maps) > 1 else 0.0, "map_runs": maps,
               "map_voc07": statistics.fmean(e["map_voc07"] for e in evs),
               "coco_ap": statistics.fmean(e["coco_ap"] for e in evs),
               "conf_normalization": conf_normalization_note(evs[0]["config"]),
               "focal": evs[0]["config"]["focal_loss"], "alpha": evs[0]["config"]["focal_alpha"],
               "gamma": evs[0]["config"]["focal_gamma"],
               "train_minutes": statistics.fmean(e["train_seconds"] for e in evs) / 60,
               "conf_term_at_init": mean_or_none(e["config"].get("conf_term_at_init") for e in evs),
               "dece": mean_or_none(calibrations[name].dece for name in names),
               **{f"easy_negative_share_{stage}": mean_or_none(
                   own_loss_share(e["easy_negatives"][stage], config=e["config"]) for e in evs)
                  for stage in ("init", "trained")}}
        for name in evs[0]["per_class_ap"]:
            row[f"ap_{name}"] = mean_or_none(e["per_class_ap"][name] for e in evs)
        for term in ("loss_loc", "loss_conf", "loss_cls"):
            row[f"final_{term}"] = mean_or_none(e["final_train"][term] for e in evs)
        rows.append(row)
    return rows
