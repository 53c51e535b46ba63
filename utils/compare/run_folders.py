"""Run folders of compare_focal.py: each stores the resolved train.py config it was asked for
(``run_config.json``); a folder is reused only for the same config. Also the annotation files the runs
need, made from the user's VOCdevkit with the user's classes file and checked before any training."""
import dataclasses
import json
import re
from pathlib import Path

from utils.core.config import ConfigError
from utils.core.model_files import get_classes
from utils.data.datacheck import check_classes
from utils.data.voc import read_annotation_file

RUN_CONFIG = "run_config.json"
NOT_COMPARED = ("save_dir", "resume", "num_workers", "device")  # change where or how fast a run goes, not its result
SET_PER_RUN = ("save_dir", "resume")  # compare_focal.py sets these for every run


def as_plain(config) -> dict:
    """A TrainConfig as the JSON-safe dict a run folder stores."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def stored_config(run_dir: Path, config_class: type) -> dict | None:
    """The config a run folder was made for: its run_config.json, else (folders of earlier versions) the
    train.py settings in the config.json train.py writes; None for a fresh folder."""
    if (run_dir / RUN_CONFIG).is_file():
        return json.loads((run_dir / RUN_CONFIG).read_text(encoding="utf-8"))
    if (run_dir / "config.json").is_file():
        names = {f.name for f in dataclasses.fields(config_class)}
        saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        return {k: v for k, v in saved.items() if k in names}
    return None


def differing_keys(stored: dict, requested: dict, *, defaults: dict) -> list[str]:
    """The settings whose stored and requested values differ. A setting the folder does not store was added to
    train.py after the folder was made: it ran with that setting's default."""
    return [k for k in requested if k not in NOT_COMPARED and stored.get(k, defaults.get(k)) != requested[k]]


def choose_run_dir(*, run_dir: Path, config, config_class: type, on_changed: str) -> tuple[Path, list[str]]:
    """(folder to use, differing keys). The folder itself when it is fresh or was made for this config;
    with ``on_changed="new"`` the first ``<name>__v<k>`` that is fresh or made for this config; otherwise
    the folder and the keys that differ (the caller refuses)."""
    requested = as_plain(config)
    defaults = as_plain(config_class())
    stored = stored_config(run_dir, config_class)
    if stored is None or not differing_keys(stored, requested, defaults=defaults):
        return run_dir, []
    if on_changed != "new":
        return run_dir, differing_keys(stored, requested, defaults=defaults)
    for version in range(2, 1000):
        candidate = run_dir.with_name(f"{run_dir.name}__v{version}")
        other = stored_config(candidate, config_class)
        if other is None or not differing_keys(other, requested, defaults=defaults):
            return candidate, []
    raise ConfigError(f"{run_dir}: 998 versions exist; choose another --results_dir")


def refusal(conflicts: dict[Path, tuple[dict, dict, list[str]]]) -> ConfigError:
    lines = [f"{run_dir}: made with other settings: "
             + ", ".join(f"{k} {stored.get(k)!r} -> {requested[k]!r}" for k in keys)
             for run_dir, (stored, requested, keys) in conflicts.items()]
    return ConfigError("\n".join(lines) + "\nrerun with --on_changed=new to train these into new folders, "
                       "or give another --results_dir")


def write_run_config(run_dir: Path, config) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        path.write_text(json.dumps(as_plain(config), indent=1), encoding="utf-8")
    return path


def train_argv(run_dir: Path) -> list[str]:
    """train.py arguments of a run: its stored config, resuming from its last checkpoint when there is one."""
    argv = [f"--config={run_dir / RUN_CONFIG}"]
    if (run_dir / "last_epoch_weights.pth").is_file():
        argv.append(f"--resume={run_dir / 'last_epoch_weights.pth'}")
    return argv


def prepare_annotations(*, config, test_annotation_path: str, voc_path: str, make_annotations) -> None:
    """Makes missing annotation files from ``voc_path`` with the run's classes file (``make_annotations`` is
    voc_annotation.main: a seeded split when the VOCdevkit has none), then checks every class id of every file
    against it."""
    paths = [config.train_annotation_path, config.val_annotation_path, test_annotation_path]
    missing = [Path(p) for p in paths if not Path(p).is_file()]
    if missing:
        sets = [re.fullmatch(r"(\d{4})_(\w+)\.txt", p.name) for p in missing]
        if not all(sets) or len({p.parent for p in missing}) != 1:
            raise FileNotFoundError(f"annotation files {', '.join(map(str, missing))}: not found; make them with "
                                    f"python voc_annotation.py --classes_path={config.classes_path}")
        print(f"[compare] annotation files missing: making them from {voc_path} with {config.classes_path}")
        make_annotations([f"--classes_path={config.classes_path}", f"--VOCdevkit_path={voc_path}",
                             f"--out_dir={missing[0].parent}", "--annotation_mode=0",
                             f"--VOCdevkit_sets={json.dumps([[m.group(1), m.group(2)] for m in sets])}"])
    names = get_classes(config.classes_path)
    problems = [problem for path in dict.fromkeys(paths)
                for problem in check_classes(read_annotation_file(path), class_names=names,
                                             classes_path=config.classes_path)]
    if problems:
        raise ConfigError("; ".join(problems))
