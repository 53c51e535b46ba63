"""Does a focal confidence loss help this detector on this data? Trains the same model with plain BCE and
with focal loss, or with any of the named arms (bce, focal, focal_cls, qfl, vfl, iou_obj: ARM_PRESETS in
utils/compare/experiment.py), with identical seed, data order, augmentation stream and schedule, evaluates every
run on the test images with get_map.py's code, and writes a side-by-side table, the paired differences with their
95 % intervals (Holm-corrected over the arms when several are compared with the first), a one-line verdict per arm
and plots to ``results_dir``.

    python compare_focal.py                                   # BCCD recipe (configs/bccd_tiny.toml), BCE vs focal
    python compare_focal.py --arms='["bce","qfl","vfl"]'      # named arms; the first is the reference
    python compare_focal.py --seeds=3                         # paired over seeds: mean difference, t interval
    python compare_focal.py --family=True --seeds=3           # every named arm against bce, Holm over the arms
    python compare_focal.py --select_on=val --sweep="init_lr=0.05,0.2"  # choose on val; the test images unread
    python compare_focal.py --config=configs/voc_yolov4.toml --classes_path=model_data/my_classes.txt \
        --VOCdevkit_path=path/to/VOCdevkit --anchors_path=auto   # your data: your classes, k-means anchors
    python compare_focal.py --dataset=datasets/my_yolo --classes_path=None --anchors_path=auto  # YOLO txt / COCO json
    python compare_focal.py --grid=True                       # gamma x alpha ablation (Focal Loss paper, Table 1)
    python compare_focal.py --sweep="init_lr=0.05,0.2"        # every arm at each value of any train.py setting
    python compare_focal.py --devices=0,1                     # one run per GPU at once
    python compare_focal.py --print_commands=True             # one train.py command per pending run, then exit

Settings: this script's below; every train.py setting too (for all arms), with precedence
train.py defaults < the recipe file ``--config`` < the command line. Re-running reuses a finished run and
resumes an interrupted one only when its stored config (``run_config.json``) is the one now asked for.
"""
import dataclasses
import json
from pathlib import Path
from typing import Literal

from utils.core.config import ConfigError, resolve_config, resolve_settings, run_cli, settings_of

config: str = "configs/bccd_tiny.toml"  # the recipe: a TOML/JSON file of train.py settings ("" = train.py defaults)
results_dir: str = "runs/compare"  # everything goes here: runs/<run>/ (ordinary train.py runs), tables, plots
# The arms, the first the reference: names of presets (bce, focal, focal_cls, qfl, vfl, iou_obj; focal is
# alpha 0.25, gamma 2 at the reference recipe's weight) or dicts of a "name" and train.py settings
arms: list[str | dict] = ["bce", "focal"]
grid: bool = False  # replace the arms by plain BCE + focal over gamma {0,0.5,1,2,5} x alpha {0.25,0.5,0.75}
family: bool = False  # replace the arms by every named arm against bce; several arms: Holm-corrected verdicts
seeds: int = 1  # runs per arm, seeds seed, seed+1, ...
seed: int = 11  # first seed
sweep: str = ""  # "key=v1,v2;key2=v3,v4": every arm at every combination of these train.py settings
test_annotation_path: str = "2007_test.txt"  # images the runs are scored on (XMLs beside them); unused with --dataset
# "val": score on the recipe's val_annotation_path instead, never reading the test images, to choose a recipe or
# sweep values; the runs then train on <year>_train.txt where the recipe trains on <year>_trainval.txt
select_on: Literal["test", "val"] = "test"
VOCdevkit_path: str = "VOCdevkit"  # where missing annotation files are made from, with the recipe's classes_path
eval_device: str = "auto"  # device of the evaluation passes
eval_backend: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"  # engine of the scoring, as get_map.py's
parallel: int = 2  # runs trained at once as separate train.py processes sharing the CPU threads; 1 = in this process
devices: str = ""  # "0,1,...": one run per listed GPU at once (overrides parallel)
on_changed: Literal["refuse", "new"] = "refuse"  # a run folder made with other settings: refuse (list the keys) or new
print_commands: bool = False  # write one train.py command per pending run to results_dir/commands.txt and exit
bootstrap: int = 1000  # paired bootstrap resamples of the test images per seed
bootstrap_seed: int = 0  # seeds the bootstrap (plus the run's seed)
calibration_min_score: float = 0.1  # D-ECE and reliability diagrams over the test detections scored at least this


def split_argv(argv: list[str], own: dict, train_settings: dict) -> tuple[list[str], list[str]]:
    """This script's own --key=value arguments and the train.py ones (for every arm). Settings this script
    sets per run are refused."""
    def key_of(arg: str) -> str:
        return arg[2:].split("=", 1)[0].replace("-", "_") if arg.startswith("--") else ""

    from utils.compare.run_folders import SET_PER_RUN

    for arg in argv:
        if key_of(arg) in SET_PER_RUN:
            raise ConfigError(f"--{key_of(arg)}: compare_focal.py sets it for every run (each run is trained in "
                              f"<results_dir>/runs/<run>); choose the folder with --results_dir")
    mine = [arg for arg in argv if key_of(arg) not in train_settings or key_of(arg) in own]
    return mine, [arg for arg in argv if arg not in mine]


def main(argv: list[str] | None = None) -> list[dict]:
    """Plans the runs, trains those not finished, scores them on the test images (with ``select_on="val"`` the
    validation images) and writes the comparison; returns the table's rows ([] with ``print_commands``)."""
    import sys

    import train
    import voc_annotation
    from utils.compare import experiment, family, run_folders, selection
    from utils.core.device import resolve_device
    from utils.data.voc import read_annotation_lines
    from utils.infer.backends import scoring_label
    from utils.train.data_source import read_dataset

    cfg, base, train_settings = parse_settings(sys.argv[1:] if argv is None else list(argv))
    arm_list = family.planned_arms(cfg=cfg, default_arms=experiment.resolve_arms(arms))
    dataset = read_dataset(base) if base.dataset else None  # every file checked before any run
    base, scoring = selection.scoring_split(base=base, select_on=cfg["select_on"],
                                            test_annotation_path=cfg["test_annotation_path"], dataset=dataset)
    if dataset is None:
        run_folders.prepare_annotations(config=base, test_annotation_path=scoring.annotation_path,
                                        voc_path=cfg["VOCdevkit_path"], make_annotations=voc_annotation.main)
    selection.check_held_out(base=base, scoring=scoring, dataset=dataset)
    runs = experiment.plan_runs(arms=arm_list, sweep=experiment.parse_sweep(cfg["sweep"], train_settings),
                                seeds=[cfg["seed"] + i for i in range(cfg["seeds"])])
    out_dir = Path(cfg["results_dir"])
    configs = run_configs(runs=runs, base=base, out_dir=out_dir, on_changed=cfg["on_changed"],
                          config_class=train.TrainConfig)
    progress = experiment.Progress(runs, {name: config.unfreeze_epoch for name, config in configs.items()})
    # read now: a bad file stops before training
    scored_lines = (dataset.annotation_file(scoring.split).lines if dataset is not None
                    else read_annotation_lines(scoring.annotation_path))
    scored_in = scoring_label(resolve_device(cfg["eval_device"]), backend=cfg["eval_backend"])
    evaluations, to_evaluate, to_train = pending_runs(runs=runs, configs=configs, progress=progress,
                                                      test_annotation_path=scoring.source, scored_in=scored_in)
    if cfg["print_commands"]:
        return write_commands(jobs=to_train, out_dir=out_dir)
    devices = [d.strip() for d in cfg["devices"].split(",") if d.strip()]
    if devices or (cfg["parallel"] > 1 and len(to_train) > 1):
        experiment.train_in_subprocesses(jobs=to_train, parallel=cfg["parallel"], progress=progress, devices=devices)
    else:
        for run, run_dir in to_train:
            experiment.train_in_process(run=run, run_dir=run_dir, progress=progress, config_class=train.TrainConfig)
    for run, run_dir in to_evaluate:
        evaluations[run.name] = experiment.evaluate_run(
            run_dir=run_dir, test_lines=scored_lines, device=cfg["eval_device"], backend=cfg["eval_backend"],
            config_class=train.TrainConfig,
            test_annotation_path=scoring.source, records=dataset.records(scoring.split) if dataset else None)
        print(f"[compare] {run.name}: {scoring.split} mAP@0.5 {evaluations[run.name]['map']:.4f}")
    return write_report(cfg=cfg, runs=runs, run_dirs={name: Path(c.save_dir) for name, c in configs.items()},
                        evaluations=evaluations, out_dir=out_dir, scoring=scoring)


def parse_settings(argv: list[str]) -> tuple[dict, object, dict]:
    """(this script's settings, the train.py settings every run starts from, train.py's setting types)."""
    import train
    from utils.compare.experiment import resolve_arms
    from utils.core.config import settings_of_class
    from utils.train.settings import with_default_classes

    own_settings, train_settings = settings_of(globals()), settings_of_class(train.TrainConfig)
    mine, for_train = split_argv(argv, own_settings, train_settings)
    recipe = [a.split("=", 1)[1] for a in mine if a.startswith("--config=")]
    cfg = resolve_config(own_settings, [a for a in mine if not a.startswith("--config=")])
    cfg["config"] = recipe[-1] if recipe else cfg["config"]
    cfg["arms"] = resolve_arms(cfg["arms"])  # names -> their presets' settings
    if cfg["seeds"] < 1 or cfg["parallel"] < 1 or cfg["bootstrap"] < 1:
        raise ConfigError("--seeds, --parallel and --bootstrap need at least 1")
    for arm in cfg["arms"]:
        unknown = [k for k in arm if k != "name" and k not in train_settings]
        if "name" not in arm or unknown:
            raise ConfigError(f"arm {arm}: needs a 'name'; unknown train.py settings {unknown}")
    recipe_argv = [f"--config={cfg['config']}"] if cfg["config"] else []
    base = with_default_classes(resolve_settings(train.TrainConfig, recipe_argv + for_train))
    check_models(cfg=cfg, base=base, train_settings=train_settings)
    return cfg, base, train_settings


def check_models(*, cfg: dict, base, train_settings: dict) -> None:
    """Every planned run's model, anchors and anchors_mask fit together, checked as train.py checks them before any
    run starts: a misfit found inside a run stops the comparison after the runs before it have been trained."""
    from nets.yolo_training import check_loss_settings
    from utils.compare import experiment, family
    from utils.core.config import UserError
    from utils.core.model_files import (DEFAULT_ANCHORS_MASK, anchor_settings, auto_anchor_count, check_anchors_mask,
                                        get_anchors)

    runs = experiment.plan_runs(arms=family.planned_arms(cfg=cfg, default_arms=experiment.resolve_arms(arms)),
                                sweep=experiment.parse_sweep(cfg["sweep"], train_settings), seeds=[cfg["seed"]])
    problems: dict[tuple[str, str], list[str]] = {}
    for run in runs:
        config = dataclasses.replace(base, **run.overrides)
        try:  # contradictory loss choices of an arm stop before any run, as in train.py
            check_loss_settings(config)
        except ConfigError as err:
            raise ConfigError(f"arm {run.arm}: {err}") from None
        if config.model not in DEFAULT_ANCHORS_MASK:
            raise ConfigError(f"arm {run.arm}: model {config.model!r}: choose one of {', '.join(DEFAULT_ANCHORS_MASK)}")
        anchors_path, anchors_mask = anchor_settings(model=config.model, anchors_path=config.anchors_path,
                                                     anchors_mask=config.anchors_mask)
        # "auto" makes one k-means anchor per index of the mask, so only the mask's levels can misfit.
        num_anchors = auto_anchor_count(anchors_mask) if anchors_path == "auto" else len(get_anchors(anchors_path))
        try:
            check_anchors_mask(anchors_mask, num_anchors=num_anchors,
                               num_levels=len(DEFAULT_ANCHORS_MASK[config.model]),
                               source=f"model {config.model} with anchors_path {anchors_path}")
        except UserError as err:
            problems.setdefault((str(err), config.model), []).append(run.arm)
    if problems:
        raise ConfigError("; ".join(f"{problem} (arms {', '.join(arms)})" for (problem, _), arms in problems.items())
                          + "; nothing was trained: "
                          + _model_fix(sorted({model for _, model in problems}), classes_path=base.classes_path,
                                       recipe=cfg["config"]))


def _model_fix(models: list[str], *, classes_path: str, recipe: str) -> str:
    """The settings that make a model fit: k-means anchors for its default mask, or another recipe made for it
    (with the run's classes, since a recipe names the classes of its own dataset)."""
    from utils.core.config import read_config_file

    here = Path(__file__).parent
    in_use = Path(recipe).resolve() if recipe else None
    recipes = [f"configs/{path.name}" for path in sorted((here / "configs").glob("*.toml"))
               if len(models) == 1 and path.resolve() != in_use
               and read_config_file(str(path)).get("model") == models[0]]
    mask = "the default mask of " + " / ".join(models)
    return (f"set --anchors_path=auto --anchors_mask=None (k-means anchors on the training boxes, {mask})"
            + (f", or use a recipe made for {models[0]}: --config={recipes[0]} --classes_path={classes_path}"
               if recipes else ""))


def run_configs(*, runs: list, base, out_dir: Path, on_changed: str, config_class: type) -> dict:
    """{run name: its train.py config, save_dir = its folder}; refuses (listing every one) folders that hold a run
    made with other settings, unless ``on_changed`` is "new"."""
    from utils.compare import run_folders

    configs, conflicts = {}, {}
    for run in runs:
        requested = dataclasses.replace(base, **run.overrides, save_dir=str(out_dir / "runs" / run.name), resume="")
        run_dir, keys = run_folders.choose_run_dir(run_dir=out_dir / "runs" / run.name, config=requested,
                                                   config_class=config_class, on_changed=on_changed)
        if keys:
            conflicts[run_dir] = (run_folders.stored_config(run_dir, config_class), run_folders.as_plain(requested),
                                  keys)
        configs[run.name] = dataclasses.replace(requested, save_dir=str(run_dir))
    if conflicts:
        raise run_folders.refusal(conflicts)
    return configs


def pending_runs(*, runs: list, configs: dict, progress, test_annotation_path: str,
                 scored_in: str) -> tuple[dict, list, list]:
    """(evaluations reused from runs finished earlier, runs to evaluate, runs to train), each run folder's
    run_config.json written. An evaluation is reused when it scored the same test images in the same engine and
    precision (``scored_in``, backends.scoring_label)."""
    from utils.compare import experiment, run_folders

    evaluations, to_evaluate, to_train = {}, [], []
    for run in runs:
        run_dir = Path(configs[run.name].save_dir)
        run_folders.write_run_config(run_dir, configs[run.name])
        evaluation = experiment.reusable_evaluation(run_dir, test_annotation_path, scored_in=scored_in)
        if evaluation is not None:
            print(f"[compare] {run.name}: finished earlier with the same settings, reused")
            evaluations[run.name] = evaluation
            progress.set_done(run.name, configs[run.name].unfreeze_epoch, timed=False)
            continue
        done = experiment.epochs_done(run_dir)
        progress.set_done(run.name, done, timed=False)
        to_evaluate.append((run, run_dir))
        if done < configs[run.name].unfreeze_epoch:
            to_train.append((run, run_dir))
    return evaluations, to_evaluate, to_train


def write_report(*, cfg: dict, runs: list, run_dirs: dict[str, Path], evaluations: dict, out_dir: Path,
                 scoring=None) -> list[dict]:
    """The table, the paired differences and the plots, from the runs' evaluations and saved records of the images
    they were scored on (``scoring``: utils.compare.selection.Scoring; None: the test images)."""
    from utils.compare import experiment, plots
    from utils.compare.paired import ImageRecords
    from utils.compare.report import paired_comparisons, write_tables
    from utils.compare.selection import Scoring
    from utils.eval.reliability import plot_reliability_diagrams, reliability_bins

    scoring = scoring or Scoring(split="test", annotation_path=cfg["test_annotation_path"])
    records = {r.name: ImageRecords.from_npz(run_dirs[r.name] / "eval_images.npz") for r in runs}
    calibrations = {name: reliability_bins(scores=rec.det_score, matched=rec.det_tp,
                                           min_score=cfg["calibration_min_score"]) for name, rec in records.items()}
    rows = experiment.summarise(evaluations, runs, calibrations)
    comparisons = paired_comparisons(evaluations=evaluations, runs=runs, records=records,
                                     resamples=cfg["bootstrap"], seed=cfg["bootstrap_seed"])
    class_names = list(next(iter(evaluations.values()))["per_class_ap"])
    histories = {r.name: json.loads((run_dirs[r.name] / "history.json").read_text(encoding="utf-8")) for r in runs}
    first_seed = [r for r in runs if r.seed == cfg["seed"]]
    plots.plot_loss_curves(histories=histories, out_path=out_dir / "loss_curves.png")
    plots.plot_per_class_ap(rows=rows, class_names=class_names, split=scoring.split,
                            out_path=out_dir / "per_class_ap.png")
    plots.plot_cdfs(cdfs={r.name: evaluations[r.name]["cdf"] for r in first_seed}, out_path=out_dir / "loss_cdf.png")
    detections = scoring.images.replace("images", "detections")
    plot_reliability_diagrams(arms={r.name: calibrations[r.name] for r in first_seed},
                              out_path=out_dir / "reliability.png",
                              title=f"{detections} scored >= {cfg['calibration_min_score']:g}, matched at IoU 0.5")
    if comparisons:
        plots.plot_forest(comparisons=comparisons, out_path=out_dir / "forest.png", images=scoring.images)
    if cfg["grid"]:
        plots.plot_grid_heatmap(rows=rows, out_path=out_dir / "grid_map.png")
    print(write_tables(rows=rows, comparisons=comparisons, class_names=class_names, out_dir=out_dir,
                       machine=experiment.hardware_summary(evaluations),
                       calibration_min_score=cfg["calibration_min_score"], scoring=scoring))
    print(f"[compare] results in {out_dir}: summary.md, summary.csv, summary.json and plots")
    return rows


def write_commands(*, jobs: list, out_dir: Path) -> list[dict]:
    """One ``python train.py`` command per run still to train (a cluster job array runs line i as task i);
    run this script again once they are done to evaluate and summarise."""
    from utils.compare.run_folders import train_argv

    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [" ".join(["python", "train.py", *train_argv(run_dir)]) for _, run_dir in jobs]
    (out_dir / "commands.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"[compare] {len(lines)} commands written to {out_dir / 'commands.txt'}; run them from this folder "
          f"(e.g. one per task of a job array), then run the same compare_focal.py command again to summarise")
    return []


if __name__ == "__main__":
    run_cli(main)
