"""Loading the published YOLOv4 / YOLOv4-tiny state_dicts (key names and shapes in tests/data/compat/).

The placement checks do not trust the key table in nets/compat.py: a published state_dict with random
weights is run through a small functional re-implementation of the published architecture, written
here from the published key names, and must give the same outputs as our model after loading.
"""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES
from torch import nn

from nets.compat import CheckpointMismatchError, load_published_state_dict
from nets.yolo import build_model
from utils.infer.checkpoint import load_weights

COMPAT = FIXTURES / "compat"
LISTS = {"yolov4": COMPAT / "yolov4_voc20_state_dict.txt", "yolov4-tiny": COMPAT / "yolov4_tiny_voc20_state_dict.txt"}
HEAD_PRED_KEYS = {"yolov4": ["yolo_head1.1.", "yolo_head2.1.", "yolo_head3.1."],
                  "yolov4-tiny": ["yolo_headP5.1.", "yolo_headP4.1."]}


def read_listing(model: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in LISTS[model].read_text(encoding="utf-8").splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(int(n) for n in shape.split(",")) if shape else ()))
    return rows


def indexed_state_dict(model: str, *, num_classes: int = 20) -> dict[str, torch.Tensor]:
    """Every tensor filled with its (1-based) line number; num_batches_tracked as a scalar long.
    A fresh dict on each call; the tensors are shared and never written to (loading copies them)."""
    return dict(_indexed_state_dict(model, num_classes))


@functools.cache
def _indexed_state_dict(model: str, num_classes: int) -> dict[str, torch.Tensor]:
    state = {}
    for index, (key, shape) in enumerate(read_listing(model), start=1):
        if any(key.startswith(p) for p in HEAD_PRED_KEYS[model]) and num_classes != 20:
            shape = (3 * (5 + num_classes),) + shape[1:]
        if key.endswith("num_batches_tracked"):
            assert shape == ()
            state[key] = torch.tensor(index, dtype=torch.long)
        else:
            state[key] = torch.full(shape, float(index))
    return state


@functools.cache
def random_state_dict(model: str) -> dict[str, torch.Tensor]:
    """Plausible random weights in float64: He-scaled convs, BN with non-trivial running statistics.
    Cached; callers only read it."""
    seed = 0
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in read_listing(model):
        name = key.rsplit(".", 1)[-1]
        if name == "num_batches_tracked":
            state[key] = torch.tensor(0, dtype=torch.long)
        elif len(shape) == 4:
            std = math.sqrt(2.0 / math.prod(shape[1:])) * (0.5 if any(key.startswith(p) for p in HEAD_PRED_KEYS[model]) else 1.0)
            state[key] = (torch.randn(shape, generator=gen) * std).double()
        elif name in ("running_var", "weight"):
            state[key] = torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5
        else:  # bn.bias, bn.running_mean, head bias
            state[key] = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.1
    return state


def our_module_for(net: nn.Module, model: str) -> dict[str, nn.Module]:
    """Published module prefix -> our module object, spelled out by what each block does."""
    if model == "yolov4":
        neck = net.neck
        return {"backbone": net.backbone, "conv1": neck.p5_pre_spp, "conv2": neck.p5_post_spp,
                "upsample1.upsample.0": neck.up_p5.conv, "conv_for_P4": neck.p4_lateral,
                "make_five_conv1": neck.p4_top_down, "upsample2.upsample.0": neck.up_p4.conv,
                "conv_for_P3": neck.p3_lateral, "make_five_conv2": neck.p3_out, "down_sample1": neck.down_p3,
                "make_five_conv3": neck.p4_out, "down_sample2": neck.down_p4, "make_five_conv4": neck.p5_out,
                "yolo_head1.0": net.heads[0].conv, "yolo_head1.1": net.heads[0].pred,
                "yolo_head2.0": net.heads[1].conv, "yolo_head2.1": net.heads[1].pred,
                "yolo_head3.0": net.heads[2].conv, "yolo_head3.1": net.heads[2].pred}
    return {"backbone": net.backbone, "conv_for_P5": net.p5_lateral, "upsample.upsample.0": net.up_p5.conv,
            "yolo_headP5.0": net.heads[0].conv, "yolo_headP5.1": net.heads[0].pred,
            "yolo_headP4.0": net.heads[1].conv, "yolo_headP4.1": net.heads[1].pred}


def our_tensor_for(net: nn.Module, model: str, published_key: str) -> torch.Tensor:
    modules = our_module_for(net, model)
    prefix = max((p for p in modules if published_key.startswith(p + ".")), key=len)
    target = modules[prefix]
    *path, leaf = published_key[len(prefix) + 1:].split(".")
    for name in path:
        target = getattr(target, name)
    return getattr(target, leaf)


@pytest.mark.parametrize("model", ["yolov4", "yolov4-tiny"])
@pytest.mark.parametrize("via_file", [False, True])
def test_every_tensor_lands_in_place(model, via_file, tmp_path):
    state = indexed_state_dict(model)
    net = build_model(model=model, num_classes=20)
    if via_file:
        torch.save(state, tmp_path / "published.pth")
        report = load_weights(net, tmp_path / "published.pth", model=model)
    else:
        report = load_published_state_dict(net, state, model=model)
    listing = read_listing(model)
    assert len(report.loaded) == len(listing) == len(net.state_dict())
    assert report.skipped == []
    # each of our tensors holds one constant, and together they hold every line number once: a bijection
    seen = []
    for key, tensor in net.state_dict().items():
        assert tensor.numel() >= 1 and torch.all(tensor == tensor.flatten()[0]), key
        seen.append(int(tensor.flatten()[0]))
    assert sorted(seen) == list(range(1, len(listing) + 1))
    for index, (key, shape) in enumerate(listing, start=1):
        ours = our_tensor_for(net, model, key)
        assert tuple(ours.shape) == shape, key
        assert torch.all(ours == index), key
        if key.endswith("num_batches_tracked"):
            assert ours.dtype == torch.long and ours.dim() == 0


def test_stride8_head_and_csp_branches_by_behaviour():
    """yolo_head3.1 must be the layer producing the stride-8 output; split_conv1 of every stage must be the
    branch that feeds the residual blocks, split_conv0 the shortcut."""
    state = random_state_dict("yolov4")
    net = build_model(model="yolov4", num_classes=20).double().eval()
    load_published_state_dict(net, state, model="yolov4")

    def holder_of(weight: torch.Tensor) -> nn.Module:
        found = [m for m in net.modules() if isinstance(m, nn.Conv2d) and torch.equal(m.weight, weight)]
        assert len(found) == 1
        return found[0]

    produced, fed_to_blocks = {}, {}
    hooks = [holder_of(state["yolo_head3.1.weight"]).register_forward_hook(
        lambda m, i, o: produced.__setitem__("head3", o))]
    for s in range(5):
        split1 = holder_of(state[f"backbone.stages.{s}.split_conv1.conv.weight"])
        split0 = holder_of(state[f"backbone.stages.{s}.split_conv0.conv.weight"])
        stage = net.backbone.stages[s]
        hooks.append(stage.blocks_conv.register_forward_pre_hook(
            lambda m, i, s=s: fed_to_blocks.__setitem__(s, i[0])))
        for tag, conv in (("split1", split1), ("split0", split0)):
            # the conv output goes through BN and Mish; hook the ConvBNAct around it
            wrapper = next(m for m in net.modules() if getattr(m, "conv", None) is conv)
            hooks.append(wrapper.register_forward_hook(
                lambda m, i, o, s=s, tag=tag: produced.__setitem__((s, tag), o)))
    with torch.no_grad():
        outputs = net(torch.randn(1, 3, 64, 96, dtype=torch.float64))
    for hook in hooks:
        hook.remove()
    assert produced["head3"] is outputs[2]
    assert outputs[2].shape[-2:] == (64 // 8, 96 // 8)
    for s in range(5):
        assert torch.equal(fed_to_blocks[s], produced[(s, "split1")])
        assert not torch.equal(fed_to_blocks[s], produced[(s, "split0")])


def conv_bn_act(sd, prefix, x, *, act, stride=1):
    weight = sd[prefix + "conv.weight"]
    x = F.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2)
    x = F.batch_norm(x, sd[prefix + "bn.running_mean"], sd[prefix + "bn.running_var"], sd[prefix + "bn.weight"],
                     sd[prefix + "bn.bias"], training=False, eps=1e-5)
    return x * torch.tanh(F.softplus(x)) if act == "mish" else F.leaky_relu(x, 0.1)


def conv_chain(sd, prefix, x, count):
    for i in range(count):
        x = conv_bn_act(sd, f"{prefix}{i}.", x, act="leaky")
    return x


def head(sd, name, x):
    x = conv_bn_act(sd, f"{name}.0.", x, act="leaky")
    return F.conv2d(x, sd[f"{name}.1.weight"], sd[f"{name}.1.bias"])


def upsample(sd, prefix, x):
    return F.interpolate(conv_bn_act(sd, prefix, x, act="leaky"), scale_factor=2, mode="nearest")


def published_yolov4_forward(sd, x):
    """CSPDarknet53 + SPP + PANet as in the published code, read off its state_dict keys."""
    x = conv_bn_act(sd, "backbone.conv1.", x, act="mish")
    features = []
    for stage, blocks in enumerate((1, 2, 8, 8, 4)):
        p = f"backbone.stages.{stage}."
        x = conv_bn_act(sd, p + "downsample_conv.", x, act="mish", stride=2)
        shortcut = conv_bn_act(sd, p + "split_conv0.", x, act="mish")
        main = conv_bn_act(sd, p + "split_conv1.", x, act="mish")
        for j in range(blocks):
            q = f"{p}blocks_conv.{j}.block."
            main = main + conv_bn_act(sd, q + "1.", conv_bn_act(sd, q + "0.", main, act="mish"), act="mish")
        main = conv_bn_act(sd, f"{p}blocks_conv.{blocks}.", main, act="mish")
        x = conv_bn_act(sd, p + "concat_conv.", torch.cat([main, shortcut], 1), act="mish")
        features.append(x)
    c3, c4, c5 = features[2:]
    p5 = conv_chain(sd, "conv1.", c5, 3)
    p5 = torch.cat([F.max_pool2d(p5, k, 1, k // 2) for k in (13, 9, 5)] + [p5], 1)
    p5 = conv_chain(sd, "conv2.", p5, 3)
    p4 = conv_chain(sd, "make_five_conv1.",
                    torch.cat([conv_bn_act(sd, "conv_for_P4.", c4, act="leaky"), upsample(sd, "upsample1.upsample.0.", p5)], 1), 5)
    p3 = conv_chain(sd, "make_five_conv2.",
                    torch.cat([conv_bn_act(sd, "conv_for_P3.", c3, act="leaky"), upsample(sd, "upsample2.upsample.0.", p4)], 1), 5)
    p4 = conv_chain(sd, "make_five_conv3.", torch.cat([conv_bn_act(sd, "down_sample1.", p3, act="leaky", stride=2), p4], 1), 5)
    p5 = conv_chain(sd, "make_five_conv4.", torch.cat([conv_bn_act(sd, "down_sample2.", p4, act="leaky", stride=2), p5], 1), 5)
    return [head(sd, "yolo_head1", p5), head(sd, "yolo_head2", p4), head(sd, "yolo_head3", p3)]


def published_tiny_forward(sd, x):
    """CSPDarknet53-tiny and its two heads as in the published code."""
    x = conv_bn_act(sd, "backbone.conv1.", x, act="leaky", stride=2)
    x = conv_bn_act(sd, "backbone.conv2.", x, act="leaky", stride=2)
    for i in (1, 2, 3):
        p = f"backbone.resblock_body{i}."
        route = conv_bn_act(sd, p + "conv1.", x, act="leaky")
        route1 = conv_bn_act(sd, p + "conv2.", route[:, route.shape[1] // 2:], act="leaky")
        x = conv_bn_act(sd, p + "conv3.", route1, act="leaky")
        feat = conv_bn_act(sd, p + "conv4.", torch.cat([x, route1], 1), act="leaky")
        x = F.max_pool2d(torch.cat([route, feat], 1), 2, 2)
    p5 = conv_bn_act(sd, "conv_for_P5.", conv_bn_act(sd, "backbone.conv3.", x, act="leaky"), act="leaky")
    p4 = torch.cat([upsample(sd, "upsample.upsample.0.", p5), feat], 1)
    return [head(sd, "yolo_headP5", p5), head(sd, "yolo_headP4", p4)]


@pytest.mark.parametrize("model, forward", [("yolov4", published_yolov4_forward), ("yolov4-tiny", published_tiny_forward)])
def test_forward_equivalence_with_published_architecture(model, forward):
    state = random_state_dict(model)
    net = build_model(model=model, num_classes=20).double().eval()
    load_published_state_dict(net, state, model=model)
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        ours = net(images)
        theirs = forward(state, images)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert float(b.abs().max()) > 1e-3  # the random weights keep a signal through the network
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max()))


@pytest.mark.parametrize("model", ["yolov4", "yolov4-tiny"])
def test_80_class_checkpoint(model, tmp_path):
    state = indexed_state_dict(model, num_classes=80)
    net = build_model(model=model, num_classes=20)
    with pytest.raises(CheckpointMismatchError) as err:
        load_published_state_dict(net, state, model=model)
    message = str(err.value)
    assert HEAD_PRED_KEYS[model][0] + "weight" in message
    assert "80 classes" in message

    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = load_published_state_dict(net, state, model=model, strict=False)
    heads = [p + name for p in HEAD_PRED_KEYS[model] for name in ("weight", "bias")]
    assert len(report.skipped) == len(heads)
    for key in heads:
        assert sum(key in reason for reason in report.skipped) == 1, key
    assert all("80 classes" in reason for reason in report.skipped)
    ours_state = net.state_dict()
    for index, (key, _) in enumerate(read_listing(model), start=1):
        ours = our_tensor_for(net, model, key)
        if key in heads:
            our_key = next(k for k, v in ours_state.items() if v.data_ptr() == ours.data_ptr())
            assert torch.equal(ours, before[our_key]), key
        else:
            assert torch.all(ours == index), key
    assert len(report.loaded) == len(read_listing(model)) - len(heads)

    if model == "yolov4":
        return  # the file path is the same code; the small model covers it
    torch.save(state, tmp_path / "coco.pth")
    with pytest.raises(CheckpointMismatchError, match="80 classes"):
        load_weights(build_model(model=model, num_classes=20), tmp_path / "coco.pth", model=model)
    report = load_weights(build_model(model=model, num_classes=20), tmp_path / "coco.pth", model=model, strict=False)
    assert len(report.skipped) == len(heads)


@pytest.mark.parametrize("ckpt_model, net_model", [("yolov4-tiny", "yolov4"), ("yolov4", "yolov4-tiny")])
def test_other_variant_is_a_clear_error(ckpt_model, net_model):
    net = build_model(model=net_model, num_classes=20)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for strict in (True, False):
        with pytest.raises(CheckpointMismatchError, match="variant") as err:
            load_published_state_dict(net, indexed_state_dict(ckpt_model), model=net_model, strict=strict)
        assert "backbone." in str(err.value)
    # nothing was half-loaded
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_missing_and_extra_keys_are_named():
    state = indexed_state_dict("yolov4-tiny")
    del state["conv_for_P5.bn.running_var"]
    with pytest.raises(CheckpointMismatchError, match=r"p5_lateral\.bn\.running_var"):
        load_published_state_dict(build_model(model="yolov4-tiny", num_classes=20), state, model="yolov4-tiny")
    state = indexed_state_dict("yolov4-tiny")
    state["extra_layer.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError, match="extra_layer.weight"):
        load_published_state_dict(build_model(model="yolov4-tiny", num_classes=20), state, model="yolov4-tiny")


def test_data_parallel_prefix_accepted():
    state = {"module." + k: v for k, v in indexed_state_dict("yolov4-tiny").items()}
    net = build_model(model="yolov4-tiny", num_classes=20)
    report = load_published_state_dict(net, state, model="yolov4-tiny")
    assert len(report.loaded) == len(state)
    assert torch.all(net.heads[1].pred.bias == len(state))  # yolo_headP4.1.bias is the last line
