"""YOLOv4 and YOLOv4-tiny detectors: backbone -> neck -> one head per level.

Every model returns a list of raw head outputs ordered from the coarsest level (stride 32) to the
finest, each of shape (B, A * (5 + C), H, W): anchor-major, and per anchor the channels
``x, y, w, h, obj, class_0 .. class_{C-1}`` as logits (the published checkpoints' layout).
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nets.darknet import ConvBNAct, CSPDarknet53, CSPDarknet53Tiny


def conv_stack(in_channels: int, mid_channels: int, num_convs: int) -> nn.Sequential:
    """Alternating 1x1 (to mid_channels) and 3x3 (to 2 * mid_channels) convs, LeakyReLU; 3 or 5 long."""
    layers, channels = [], in_channels
    for i in range(num_convs):
        out = mid_channels if i % 2 == 0 else 2 * mid_channels
        layers.append(ConvBNAct(channels, out, 1 if i % 2 == 0 else 3))
        channels = out
    return nn.Sequential(*layers)


class SPP(nn.Module):
    """Spatial pyramid pooling: stride-1 max-pools of 13, 9, 5 concatenated with the input (darknet order)."""

    def __init__(self, pool_sizes: tuple[int, ...] = (13, 9, 5)):
        super().__init__()
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in pool_sizes)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([pool(x) for pool in self.pools] + [x], dim=1)


class Upsample(nn.Module):
    """1x1 conv then 2x nearest upsampling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNAct(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.conv(x), scale_factor=2, mode="nearest")


class YoloHead(nn.Module):
    """3x3 conv (LeakyReLU) then a 1x1 conv with bias predicting A * (5 + C) logits per cell."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNAct(in_channels, mid_channels, 3)
        self.pred = nn.Conv2d(mid_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pred(self.conv(x))


class PANet(nn.Module):
    """YOLOv4 neck: SPP on the stride-32 map, a top-down path, then a bottom-up path.

    Takes the backbone's (s8, s16, s32) maps and returns the fused (s32, s16, s8) maps
    with 512, 256 and 128 channels.
    """

    def __init__(self):
        super().__init__()
        self.p5_pre_spp = conv_stack(1024, 512, 3)
        self.spp = SPP()
        self.p5_post_spp = conv_stack(2048, 512, 3)
        self.up_p5 = Upsample(512, 256)
        self.p4_lateral = ConvBNAct(512, 256, 1)
        self.p4_top_down = conv_stack(512, 256, 5)
        self.up_p4 = Upsample(256, 128)
        self.p3_lateral = ConvBNAct(256, 128, 1)
        self.p3_out = conv_stack(256, 128, 5)
        self.down_p3 = ConvBNAct(128, 256, 3, stride=2)
        self.p4_out = conv_stack(512, 256, 5)
        self.down_p4 = ConvBNAct(256, 512, 3, stride=2)
        self.p5_out = conv_stack(1024, 512, 5)

    def forward(self, feat_s8: Tensor, feat_s16: Tensor, feat_s32: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p5 = self.p5_post_spp(self.spp(self.p5_pre_spp(feat_s32)))
        p4 = self.p4_top_down(torch.cat([self.p4_lateral(feat_s16), self.up_p5(p5)], dim=1))
        p3 = self.p3_out(torch.cat([self.p3_lateral(feat_s8), self.up_p4(p4)], dim=1))
        p4 = self.p4_out(torch.cat([self.down_p3(p3), p4], dim=1))
        p5 = self.p5_out(torch.cat([self.down_p4(p4), p5], dim=1))
        return p5, p4, p3


class YoloV4(nn.Module):
    """CSPDarknet53 + SPP + PANet, three heads at strides 32, 16, 8."""

    strides = (32, 16, 8)

    def __init__(self, num_classes: int, anchors_per_level: int = 3):
        super().__init__()
        self.num_classes, self.anchors_per_level = num_classes, anchors_per_level
        out_channels = anchors_per_level * (5 + num_classes)
        self.backbone = CSPDarknet53()
        self.neck = PANet()
        self.heads = nn.ModuleList(
            [YoloHead(512, 1024, out_channels), YoloHead(256, 512, out_channels), YoloHead(128, 256, out_channels)]
        )

    def forward(self, images: Tensor) -> list[Tensor]:
        features = self.neck(*self.backbone(images))
        return [head(feat) for head, feat in zip(self.heads, features)]


class YoloV4Tiny(nn.Module):
    """CSPDarknet53-tiny, a 1x1 lateral conv and two heads at strides 32 and 16."""

    strides = (32, 16)

    def __init__(self, num_classes: int, anchors_per_level: int = 3):
        super().__init__()
        self.num_classes, self.anchors_per_level = num_classes, anchors_per_level
        out_channels = anchors_per_level * (5 + num_classes)
        self.backbone = CSPDarknet53Tiny()
        self.p5_lateral = ConvBNAct(512, 256, 1)
        self.up_p5 = Upsample(256, 128)
        self.heads = nn.ModuleList([YoloHead(256, 512, out_channels), YoloHead(384, 256, out_channels)])

    def forward(self, images: Tensor) -> list[Tensor]:
        feat_s16, feat_s32 = self.backbone(images)
        p5 = self.p5_lateral(feat_s32)
        p4 = torch.cat([self.up_p5(p5), feat_s16], dim=1)
        return [self.heads[0](p5), self.heads[1](p4)]


MODELS = {"yolov4": YoloV4, "yolov4-tiny": YoloV4Tiny}


def init_weights(model: nn.Module, *, conv_std: float = 0.02, obj_prior: float | None = None) -> None:
    """The reference recipe's init: conv weights ~ N(0, conv_std), BN weight ~ N(1, 0.02), BN bias 0.

    With ``obj_prior`` = pi, every head's objectness bias is set to -log((1 - pi) / pi), the Focal Loss
    paper's prior, so that at the start every cell predicts an object with probability pi instead of 0.5.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, conv_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)
    if obj_prior is not None:
        for head in model.heads:
            bias = head.pred.bias.detach().view(model.anchors_per_level, -1)  # (A, 5 + C), a view
            bias[:, 4] = -math.log((1 - obj_prior) / obj_prior)


def build_model(*, model: str, num_classes: int, anchors_per_level: int = 3) -> nn.Module:
    """Builds 'yolov4' or 'yolov4-tiny' with fresh (untrained) weights."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODELS)}")
    return MODELS[model](num_classes=num_classes, anchors_per_level=anchors_per_level)
