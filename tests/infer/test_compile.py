"""torch_compile=True: the inference copy through torch.compile (Mish as ExpMish, inductor's freezing), the same
outputs as the eager copy; a clear error without a C++ compiler."""
import numpy as np
import pytest
import torch
from conftest import detector_config, trained_like_net
from torch import nn

import predict
from utils.core.config import UserError, resolve_config, settings_of
from utils.infer import folding
from utils.infer.folding import ExpMish
from yolo import YOLO


def mish_float64(x: torch.Tensor) -> torch.Tensor:
    """The definition, x * tanh(softplus(x)), in float64 (softplus as log1p(exp(x)), exact for these inputs)."""
    x64 = x.double()
    return x64 * torch.tanh(torch.log1p(torch.exp(x64)))


def test_exp_mish_is_mish():
    x = torch.cat([torch.linspace(-60, 60, 20001), torch.tensor([-1e4, -88.0, 0.0, 19.99, 20.0, 20.01, 88.0, 1e4])])
    got = ExpMish()(x)
    expected = torch.where(x > 700, x.double(), mish_float64(x.clamp(max=700)))  # exp overflows float64 past 709
    assert torch.isfinite(got).all()
    assert ((got.double() - expected).abs() <= 1e-6 * (1 + x.double().abs())).all()


def test_compiled_yolov4_gives_the_eager_outputs():
    net = trained_like_net("yolov4").eval()
    config = detector_config("yolov4", input_shape=[64, 96])
    eager = YOLO.from_model(net, config=config, device="cpu", precision="fp32")
    compiled = YOLO.from_model(net, config=config, device="cpu", precision="fp32", torch_compile=True)
    images = np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32)
    expected, got = eager.raw_outputs(images), compiled.raw_outputs(images)
    for out, ref in zip(got, expected):
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    copy = compiled._inference_net.get(net)
    assert not any(isinstance(m, nn.Mish) for m in copy.modules())  # swapped for ExpMish before compiling
    assert any(isinstance(m, ExpMish) for m in copy.modules())
    assert any(isinstance(m, nn.Mish) for m in net.modules())  # the training network is untouched


def test_no_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(folding.shutil, "which", lambda name: None)
    path = tmp_path / "tiny.pth"
    torch.save({"model": trained_like_net("yolov4-tiny").state_dict(),
                "config": detector_config("yolov4-tiny", input_shape=[64, 64])}, path)
    cfg = resolve_config(settings_of(vars(predict)), [f"--model_path={path}", "--device=cpu", "--backend=torch",
                                                      "--torch_compile=True"])
    with pytest.raises(UserError, match="torch_compile=True: torch.compile needs a C.. compiler"):
        predict.build_detector(cfg)
    assert type(predict.build_detector({**cfg, "torch_compile": False})) is YOLO


def test_compile_with_another_engine_is_said_not_ignored(monkeypatch, tmp_path, capsys):
    path = tmp_path / "tiny.pth"
    torch.save({"model": trained_like_net("yolov4-tiny").state_dict(),
                "config": detector_config("yolov4-tiny", input_shape=[64, 64])}, path)
    cfg = resolve_config(settings_of(vars(predict)), [f"--model_path={path}", "--device=cpu",
                                                      "--backend=onnxruntime", "--torch_compile=True"])
    predict.build_detector(cfg)
    assert "note: torch_compile applies to the PyTorch engine; this detection runs on onnxruntime" in (
        capsys.readouterr().out)
    predict.build_detector({**cfg, "backend": "torch"})
    assert "torch_compile applies" not in capsys.readouterr().out
