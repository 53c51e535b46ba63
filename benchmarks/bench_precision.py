"""What a reduced inference precision does to accuracy at full size: each checkpoint scored on its test set by
get_map.py (mode 0: confidence 0.001, NMS 0.5, letterboxed, batched) once per precision, with the mAP@0.5 change
against fp32 per class. This is the check behind `precision=auto` picking bf16 on CPUs with native bf16
(utils/core/device.py): a default that changes numerics must move the main job's test mAP@0.5 by less than
``max_map_change``.

    python benchmarks/bench_precision.py --model_paths="['runs/compare/runs/bce__seed11/last_epoch_weights.pth']"

Each row also gives the wall time of the whole evaluation (prediction of every test image plus scoring) and its
ratio to fp32; the thread count is torch's default unless ``threads`` is set.
"""
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import get_map  # noqa: E402
from utils.core.config import ConfigError, resolve_config, run_cli, settings_of  # noqa: E402
from utils.core.device import cpu_has_native_bf16  # noqa: E402

model_paths: list[str] = ["runs/compare/runs/bce__seed11/last_epoch_weights.pth"]  # project checkpoints to score
precisions: list[str] = ["fp32", "bf16"]  # the first is the reference the changes are against
max_map_change: float = 0.002  # |mAP@0.5 change| a default precision may cause on the main job's checkpoints
threads: int = 0  # torch CPU threads; 0 = torch's default
device: str = "cpu"  # "cpu" or a CUDA device (fp16 is CUDA-only)


def score(*, model_path: str, precision: str, device_name: str) -> tuple[dict, float]:
    """get_map.py mode 0 on the checkpoint's test set; returns its results dict and the wall seconds."""
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        results = get_map.main([f"--model_path={model_path}", f"--precision={precision}", f"--device={device_name}",
                                f"--map_out_path={out_dir}", "--map_mode=0"])
        return results, time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = resolve_config(settings_of(globals()), argv)
    missing = [p for p in cfg["model_paths"] if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"model_paths: no checkpoint at {', '.join(missing)} (train one: python compare_focal.py)")
    if len(cfg["precisions"]) < 2:
        raise ConfigError("precisions: give the reference first and at least one precision to compare with it")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])

    rows = []
    for model_path in cfg["model_paths"]:
        reference, reference_s = score(model_path=model_path, precision=cfg["precisions"][0],
                                       device_name=cfg["device"])
        rows.append({"model_path": model_path, "precision": cfg["precisions"][0], "results": reference,
                     "seconds": reference_s, "change": 0.0})
        for precision in cfg["precisions"][1:]:
            results, seconds = score(model_path=model_path, precision=precision, device_name=cfg["device"])
            rows.append({"model_path": model_path, "precision": precision, "results": results, "seconds": seconds,
                         "change": results["map"] - reference["map"], "speedup": reference_s / seconds})

    print(f"\nnative bf16 on this CPU: {cpu_has_native_bf16()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    class_names = list(rows[0]["results"]["per_class"])
    print(f"| checkpoint | precision | mAP@0.5 | change | {' | '.join(f'AP {c}' for c in class_names)} "
          f"| evaluation | speed-up |")
    print("|---" * (6 + len(class_names)) + "|")
    for row in rows:
        per_class = row["results"]["per_class"]
        print(f"| {row['model_path']} | {row['precision']} | {row['results']['map']:.4f} | {row['change']:+.4f} | "
              + " | ".join(f"{per_class[c]['ap']:.4f}" for c in class_names)
              + f" | {row['seconds']:.1f} s | {row.get('speedup', 1.0):.2f}x |")
    worst = max(abs(row["change"]) for row in rows)
    print(f"largest |mAP@0.5 change|: {worst:.4f} (limit for a default: {cfg['max_map_change']})"
          f" -> {'within' if worst < cfg['max_map_change'] else 'OUTSIDE'} the limit")
    return rows


if __name__ == "__main__":
    run_cli(main, user_errors=(ValueError,))
