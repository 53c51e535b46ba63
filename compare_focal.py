"""Does a focal confidence loss help this detector on this data? Trains the same model with plain BCE and
with focal loss (identical seed, data order, augmentation stream and schedule), evaluates every run on the
test images with get_map.py's code, and writes a side-by-side table and plots to ``results_dir``.

    python compare_focal.py                                   # BCCD, YOLOv4-tiny, BCE vs focal (a=0.25, g=2)
    python compare_focal.py --seeds=3                         # mean +- std over seeds
    python compare_focal.py --grid=True                       # gamma x alpha ablation (Focal Loss paper, Table 1)
    python compare_focal.py --sweep="init_lr=0.05,0.2"        # every arm at each value of any train.py setting
    python compare_focal.py --unfreeze_epoch=60 --model=yolov4   # any train.py setting, for all arms

Re-running skips finished runs and resumes interrupted ones.
"""
import csv
import json
from pathlib import Path

from utils.config import ConfigError, resolve_config, run_cli, settings_of

results_dir: str = "runs/compare"  # everything goes here: runs/<run>/ (ordinary train.py runs), tables, plots
arms: list[dict] = [  # loss settings per arm; each needs a "name", the rest are train.py settings
    {"name": "bce", "focal_loss": False},
    {"name": "focal", "focal_loss": True, "focal_alpha": 0.25, "focal_gamma": 2.0},
]
grid: bool = False  # replace the arms by plain BCE + focal over gamma {0,0.5,1,2,5} x alpha {0.25,0.5,0.75}
seeds: int = 1  # runs per arm, seeds seed, seed+1, ...
seed: int = 11  # first seed
sweep: str = ""  # "key=v1,v2;key2=v3,v4": every arm at every combination of these train.py settings
test_annotation_path: str = "2007_test.txt"  # images the runs are scored on (VOC layout: XMLs beside them)
eval_device: str = "auto"  # device of the evaluation passes
parallel: int = 2  # runs trained at once as separate train.py processes sharing the CPU threads; 1 = in this process
recipe: dict = {  # train.py settings of the bundled BCCD job (2-core CPU, about 20 minutes for both arms)
    "model": "yolov4-tiny", "input_shape": [352, 480], "anchors_path": "model_data/bccd_tiny_anchors.txt",
    "anchors_mask": [[3, 4, 5], [0, 1, 2]], "classes_path": "model_data/bccd_classes.txt",
    "freeze_train": False, "unfreeze_epoch": 45, "unfreeze_batch_size": 8, "init_lr": 0.1, "min_lr": 0.001,
    "optimizer_type": "sgd", "warmup_epochs": 2.0, "mosaic": False, "mixup": False, "cls_ratio": 0.5,
    "obj_prior": 0.01, "multi_anchor_threshold": 0.213, "fp16": True, "amp_dtype": "bfloat16",
    "eval_flag": False, "save_period": 1000, "num_workers": 1,
}


def split_argv(argv: list[str], own: dict, train_settings: dict) -> tuple[list[str], dict]:
    """This script's own --key=value arguments, and train.py overrides (type-checked) for every arm."""
    def key_of(arg: str) -> str:
        return arg[2:].split("=", 1)[0].replace("-", "_") if arg.startswith("--") else ""

    mine = [arg for arg in argv if key_of(arg) not in train_settings or key_of(arg) in own]
    for_train = [arg for arg in argv if arg not in mine]
    overrides = resolve_config(train_settings, for_train)
    return mine, {k: overrides[k] for k in map(key_of, for_train)}


def ensure_annotations(paths: list[str]) -> None:
    """A fresh clone has no annotation files yet: make the bundled dataset's with voc_annotation.py."""
    if all(Path(p).is_file() for p in paths):
        return
    import voc_annotation

    print("annotation files missing: running voc_annotation.py for the bundled dataset")
    voc_annotation.main(["--annotation_mode=2"])


def write_tables(rows: list[dict], class_names: list[str], out_dir: Path) -> None:
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    with open(out_dir / "summary.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "map_runs": " ".join(f"{m:.4f}" for m in r["map_runs"])} for r in rows)
    header = ["arm", "mAP@0.5", "VOC07 mAP", "COCO AP", *[f"AP {c}" for c in class_names],
              "final loc", "final conf", "final cls", "train min", "conf term normalisation", "runs (mAP)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rows:
        cells = [r["arm"], f"{r['map']:.4f}" + (f" ± {r['map_std']:.4f}" if r["runs"] > 1 else ""),
                 fmt(r["map_voc07"]), fmt(r["coco_ap"]), *[fmt(r.get(f"ap_{c}")) for c in class_names],
                 fmt(r["final_loss_loc"]), fmt(r["final_loss_conf"]), fmt(r["final_loss_cls"]),
                 f"{r['train_minutes']:.1f}", r["conf_normalization"], " ".join(f"{m:.4f}" for m in r["map_runs"])]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out_dir / "summary.md").write_text(
        "# Focal vs plain BCE on the confidence term\n\nScored on the test images with get_map.py's code "
        "(confidence 0.001, NMS IoU 0.5, AP at IoU 0.5); losses are the last epoch's training means, "
        "unweighted.\n\n" + table + "\n", encoding="utf-8")
    print(table)


def main(argv: list[str] | None = None) -> list[dict]:
    import sys

    import train
    from utils import compare, compare_plots
    from utils.trainer import read_annotation_lines

    argv = sys.argv[1:] if argv is None else list(argv)
    own_settings, train_settings = settings_of(globals()), settings_of(vars(train))
    mine, train_overrides = split_argv(argv, own_settings, train_settings)
    config = resolve_config(own_settings, mine)
    if config["seeds"] < 1 or config["parallel"] < 1:
        raise ConfigError("--seeds and --parallel need at least 1")
    for arm in config["arms"]:
        unknown = [k for k in arm if k != "name" and k not in train_settings]
        if "name" not in arm or unknown:
            raise ConfigError(f"arm {arm}: needs a 'name'; unknown train.py settings {unknown}")
    base = {**config["recipe"], **train_overrides}
    ensure_annotations([base.get("train_annotation_path", "2007_train.txt"),
                        base.get("val_annotation_path", "2007_val.txt"), config["test_annotation_path"]])
    arm_list = compare.grid_arms() if config["grid"] else config["arms"]
    runs = compare.plan_runs(arms=arm_list, sweep=compare.parse_sweep(config["sweep"], train_settings),
                             seeds=[config["seed"] + i for i in range(config["seeds"])])
    out_dir = Path(config["results_dir"])
    epochs = int(base.get("unfreeze_epoch", train.unfreeze_epoch))
    progress = compare.Progress(runs, epochs)
    test_lines = read_annotation_lines(config["test_annotation_path"])
    evaluations, to_evaluate, to_train = {}, [], []
    for run in runs:
        run_dir = out_dir / "runs" / run.name
        if (run_dir / "eval.json").is_file():
            print(f"[compare] {run.name}: finished earlier, skipped")
            evaluations[run.name] = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
            progress.set_done(run.name, epochs, timed=False)
            continue
        done = compare.epochs_done(run_dir)
        progress.set_done(run.name, done, timed=False)
        to_evaluate.append((run, run_dir))
        if done < epochs:
            to_train.append((run, run_dir))
    if config["parallel"] > 1 and len(to_train) > 1:
        compare.train_in_subprocesses(jobs=to_train, base=base, parallel=config["parallel"], progress=progress)
    else:
        for run, run_dir in to_train:
            compare.train_in_process(run=run, run_dir=run_dir, base=base, progress=progress,
                                     config_class=train.TrainConfig)
    for run, run_dir in to_evaluate:
        evaluations[run.name] = compare.evaluate_run(run_dir=run_dir, test_lines=test_lines,
                                                     device=config["eval_device"], config_class=train.TrainConfig)
        print(f"[compare] {run.name}: test mAP@0.5 {evaluations[run.name]['map']:.4f}")
    rows = compare.summarise(evaluations, runs)
    class_names = list(next(iter(evaluations.values()))["per_class_ap"])
    histories = {r.name: json.loads((out_dir / "runs" / r.name / "history.json").read_text(encoding="utf-8"))
                 for r in runs}
    compare_plots.plot_loss_curves(histories=histories, out_path=out_dir / "loss_curves.png")
    compare_plots.plot_per_class_ap(rows=rows, class_names=class_names, out_path=out_dir / "per_class_ap.png")
    compare_plots.plot_cdfs(cdfs={r.name: evaluations[r.name]["cdf"] for r in runs if r.seed == config["seed"]},
                            out_path=out_dir / "loss_cdf.png")
    if config["grid"]:
        compare_plots.plot_grid_heatmap(rows=rows, out_path=out_dir / "grid_map.png")
    write_tables(rows, class_names, out_dir)
    print(f"[compare] results in {out_dir}: summary.md, summary.csv, summary.json and plots")
    return rows


if __name__ == "__main__":
    run_cli(main)
