"""benchmarks/bench_reference.py against a stand-in for the reference implementation: a package named ``nets``
whose ``yolo.YoloBody`` is the published YOLOv4-tiny written from its state_dict keys (tests/nets/test_compat.py),
so the comparison's plumbing (importing a second ``nets``, loading its weights, the three timing designs) runs
without the reference's code."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
COMPAT_TESTS = REPO / "tests" / "nets" / "test_compat.py"

STAND_IN = '''import importlib.util

import torch

_SPEC = importlib.util.spec_from_file_location("published_architecture", {compat!r})


class YoloBody(torch.nn.Module):
    def __init__(self, anchors_mask, num_classes, phi=0, pretrained=False):
        super().__init__()
        assert (len(anchors_mask), num_classes, phi, pretrained) == (2, 20, 0, False)
        published = importlib.util.module_from_spec(_SPEC)
        _SPEC.loader.exec_module(published)
        self.published = {{key: value.float() for key, value in published.random_state_dict("yolov4-tiny").items()}}
        self.published_forward = published.published_tiny_forward

    def state_dict(self, *args, **kwargs):
        return dict(self.published)

    def forward(self, images):
        return self.published_forward(self.published, images)
'''


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_reference", REPO / "benchmarks" / "bench_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_reference"] = module  # the two-process design's child imports it by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_reference"]


def test_three_designs_against_a_stand_in(bench, tmp_path, capsys):
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "nets" / "yolo.py").write_text(STAND_IN.format(compat=str(COMPAT_TESTS)), encoding="utf-8")
    ours_before = sys.modules["nets.yolo"]
    threads = torch.get_num_threads()
    try:
        result = bench.main([f"--reference_dir={tmp_path}", "--model=yolov4-tiny", "--rounds=2", "--block=2",
                             "--block_warmup=1", f"--threads={threads}"])
    finally:
        torch.set_num_threads(threads)
    assert sys.modules["nets.yolo"] is ours_before  # the stand-in's nets package is gone again
    assert result["fp32_difference"] < 1e-5  # the published architecture's outputs, in fp32
    assert result["run_difference"] < 0.05  # bf16 where the default engine runs it
    assert [d["design"] for d in result["designs"]] == ["interleaved", "warm_blocks", "two_processes"]
    for design in result["designs"]:
        assert design["reference_ms"] > 0 and design["project_ms"] > 0
        low, high = design["ratio_range"]
        assert low <= design["ratio"] <= high
    out = capsys.readouterr().out
    assert "CPU: " in out and "two_processes" in out


def test_a_folder_without_the_reference_is_named(bench, tmp_path):
    with pytest.raises(SystemExit, match=f"reference_dir '{tmp_path}' holds no nets/yolo.py"):
        bench.main([f"--reference_dir={tmp_path}"])
