"""What another engine or a reduced inference precision does to accuracy at full size: each checkpoint scored on
its test set by get_map.py (mode 0: confidence 0.001, NMS 0.5, letterboxed, batched) once per variant
("engine:precision", get_map.py's --backend and --precision), with the mAP@0.5 change against the first variant
(PyTorch fp32) per class. This is the check behind `precision=auto` picking bf16 on CPUs with native bf16
(utils/core/device.py) and `backend=auto` picking OpenVINO (utils/infer/backends.py): a default that changes
numerics must move the main job's test mAP@0.5 by less than ``max_map_change``.

    python benchmarks/bench_precision.py --model_paths="['runs/compare/runs/bce__seed11/last_epoch_weights.pth']"
    python benchmarks/bench_precision.py --variants="['torch:fp32','openvino:auto']" --model_paths="[...]"

Each row also gives the wall time of the whole evaluation (prediction of every test image plus scoring) and its
ratio to fp32; the thread count is torch's default unless ``threads`` is set.
"""
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from cpu_peak import cpu_line  # noqa: E402

import get_map  # noqa: E402
from utils.core.config import ConfigError, resolve_config, run_cli, settings_of  # noqa: E402
from utils.core.device import PRECISIONS, cpu_has_native_bf16  # noqa: E402
from utils.infer.backends import BACKENDS  # noqa: E402

model_paths: list[str] = ["runs/compare/runs/bce__seed11/last_epoch_weights.pth"]  # project checkpoints to score
# engine:precision pairs; the first is the reference the changes are against
variants: list[str] = ["torch:fp32", "torch:bf16", "openvino:auto", "openvino:fp32", "openvino:bf16"]
max_map_change: float = 0.002  # |mAP@0.5 change| a default engine or precision may cause on the main job's checkpoints
threads: int = 0  # torch CPU threads; 0 = torch's default
device: str = "cpu"  # "cpu" or a CUDA device (fp16 is CUDA-only)


def score(*, model_path: str, variant: str, device_name: str) -> tuple[dict, float]:
    """get_map.py mode 0 on the checkpoint's test set with ``variant``'s engine and precision; returns its results
    dict and the wall seconds."""
    backend, precision = variant.split(":")
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        results = get_map.main([f"--model_path={model_path}", f"--backend={backend}", f"--precision={precision}",
                                f"--device={device_name}", f"--map_out_path={out_dir}", "--map_mode=0"])
        return results, time.perf_counter() - start


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = resolve_config(settings_of(globals()), argv)
    missing = [p for p in cfg["model_paths"] if not Path(p).is_file()]
    if missing:
        raise ConfigError(f"model_paths: no checkpoint at {', '.join(missing)} (train one: python compare_focal.py)")
    if len(cfg["variants"]) < 2:
        raise ConfigError("variants: give the reference first and at least one variant to compare with it")
    for variant in cfg["variants"]:
        backend, _, precision = variant.partition(":")
        if backend not in BACKENDS or precision not in PRECISIONS:
            raise ConfigError(f"variants: {variant!r} is not engine:precision with an engine of {BACKENDS} and a "
                              f"precision of {PRECISIONS}")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])

    rows = []
    for model_path in cfg["model_paths"]:
        reference, reference_s = score(model_path=model_path, variant=cfg["variants"][0], device_name=cfg["device"])
        rows.append({"model_path": model_path, "variant": cfg["variants"][0], "results": reference,
                     "seconds": reference_s, "change": 0.0})
        for variant in cfg["variants"][1:]:
            results, seconds = score(model_path=model_path, variant=variant, device_name=cfg["device"])
            rows.append({"model_path": model_path, "variant": variant, "results": results, "seconds": seconds,
                         "change": results["map"] - reference["map"], "speedup": reference_s / seconds})

    print(f"\n{cpu_line()}; native bf16: {cpu_has_native_bf16()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    class_names = list(rows[0]["results"]["per_class"])
    print(f"| checkpoint | engine:precision | mAP@0.5 | change | {' | '.join(f'AP {c}' for c in class_names)} "
          f"| evaluation | speed-up |")
    print("|---" * (6 + len(class_names)) + "|")
    for row in rows:
        per_class = row["results"]["per_class"]
        print(f"| {row['model_path']} | {row['variant']} | {row['results']['map']:.6f} | {row['change']:+.6f} | "
              + " | ".join(f"{per_class[c]['ap']:.4f}" for c in class_names)
              + f" | {row['seconds']:.1f} s | {row.get('speedup', 1.0):.2f}x |")
    worst = max(abs(row["change"]) for row in rows)
    print(f"largest |mAP@0.5 change|: {worst:.4f} (limit for a default: {cfg['max_map_change']})"
          f" -> {'within' if worst < cfg['max_map_change'] else 'OUTSIDE'} the limit")
    return rows


if __name__ == "__main__":
    run_cli(main, user_errors=(ValueError,))
