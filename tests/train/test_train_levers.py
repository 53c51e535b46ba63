"""Training speed levers: channels_last changes the layout, not the numbers."""
from types import SimpleNamespace

import pytest
import torch

from nets.yolo import build_model, init_weights
from nets.yolo_training import YOLOLoss
from utils.core.distributed import DistInfo
from utils.train.engine import AmpSettings, train_one_epoch

ANCHORS = [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]]
MASK = [[3, 4, 5], [1, 2, 3]]


def tiny_setup():
    torch.manual_seed(0)
    net = build_model(model="yolov4-tiny", num_classes=3)
    init_weights(net, obj_prior=0.01)
    criterion = YOLOLoss(anchors_px=torch.tensor(ANCHORS, dtype=torch.float32), anchors_mask=MASK, num_classes=3,
                         input_shape=(96, 96))
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 96, 96, generator=gen)
    targets = torch.tensor([[0, 1, 10.0, 12.0, 40.0, 50.0], [1, 0, 30.0, 20.0, 90.0, 70.0]])
    return net, criterion, images, targets


def run_epoch(channels_last: bool):
    net, criterion, images, targets = tiny_setup()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    amp = AmpSettings(enabled=False, dtype=torch.float32, device_type="cpu", channels_last=channels_last)
    means = train_one_epoch(model=net, criterion=criterion, loader=[(images, targets)] * 2, optimizer=optimizer,
                            scaler=torch.amp.GradScaler("cpu", enabled=False), amp=amp, device=torch.device("cpu"),
                            epoch=0, total_epochs=1, start_iteration=0, lr_for_iteration=lambda i: 0.01,
                            on_iteration_end=lambda i: None, dist_info=DistInfo())
    return net, means


def test_channels_last_training_matches_contiguous():
    net_plain, means_plain = run_epoch(channels_last=False)
    net_cl, means_cl = run_epoch(channels_last=True)
    assert net_cl.backbone.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    for name in ("loss", "loss_loc", "loss_conf", "loss_cls"):
        assert abs(means_cl[name] - means_plain[name]) <= 1e-4 * max(1.0, abs(means_plain[name]))
    for (name, p_plain), p_cl in zip(net_plain.named_parameters(), net_cl.parameters()):
        scale = p_plain.abs().max().item() + 1e-6
        assert (p_cl - p_plain).abs().max().item() <= 1e-3 * scale + 1e-6, name  # summation-order noise


@pytest.mark.parametrize("native_bf16", [True, False])
def test_training_precision_defaults(native_bf16, monkeypatch):
    """The defaults (fp16=True, amp_dtype='auto', channels_last=None): float16 + GradScaler territory on CUDA, bf16
    autocast on CPUs with native bf16, plain fp32 on other CPUs; channels_last with either autocast; explicit
    settings win."""
    import utils.train.trainer

    monkeypatch.setattr(utils.train.trainer, "cpu_has_native_bf16", lambda: native_bf16)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")

    def amp(**settings):
        config = SimpleNamespace(**{"fp16": True, "amp_dtype": "auto", "channels_last": None, **settings})
        return utils.train.trainer.training_amp(config, cpu)

    on_cpu = amp()
    assert (on_cpu.enabled, on_cpu.channels_last) == (native_bf16, native_bf16)
    assert not native_bf16 or on_cpu.dtype == torch.bfloat16
    on_cuda = utils.train.trainer.training_amp(SimpleNamespace(fp16=True, amp_dtype="auto", channels_last=None), cuda)
    assert (on_cuda.enabled, on_cuda.dtype, on_cuda.channels_last) == (True, torch.float16, True)
    assert not amp(fp16=False).enabled and not amp(fp16=False).channels_last  # fp32 asked for: no bf16 layout either
    forced = amp(amp_dtype="bfloat16", channels_last=False)
    assert (forced.enabled, forced.dtype, forced.channels_last) == (True, torch.bfloat16, False)
    assert not amp(amp_dtype="float16").enabled  # float16 autocast is CUDA-only, as before
