"""Backbones: CSPDarknet53 (YOLOv4) and CSPDarknet53-tiny (YOLOv4-tiny).

Module names follow the published PyTorch YOLOv4 checkpoints where that costs nothing
(``backbone.stages.N...``), so the weight loader's key table stays short.
"""
import torch
from torch import Tensor, nn


class ConvBNAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> activation, 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, act: str = "leaky"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.Mish() if act == "mish" else nn.LeakyReLU(0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    """x + conv3x3(conv1x1(x)), Mish."""

    def __init__(self, channels: int, hidden_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            ConvBNAct(channels, hidden_channels, 1, act="mish"),
            ConvBNAct(hidden_channels, channels, 3, act="mish"),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class CSPStage(nn.Module):
    """Stride-2 downsample, then a cross-stage-partial split: one branch runs the residual blocks,
    the other is a shortcut; both are concatenated (blocks first) and fused by a 1x1 conv.

    The first stage of CSPDarknet53 keeps full width in both branches (as in darknet's cfg).
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, first: bool):
        super().__init__()
        branch = out_channels if first else out_channels // 2
        hidden = out_channels // 2 if first else branch
        self.downsample_conv = ConvBNAct(in_channels, out_channels, 3, stride=2, act="mish")
        self.split_conv0 = ConvBNAct(out_channels, branch, 1, act="mish")
        self.split_conv1 = ConvBNAct(out_channels, branch, 1, act="mish")
        self.blocks_conv = nn.Sequential(
            *[Residual(branch, hidden) for _ in range(num_blocks)],
            ConvBNAct(branch, branch, 1, act="mish"),
        )
        self.concat_conv = ConvBNAct(2 * branch, out_channels, 1, act="mish")

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample_conv(x)
        shortcut = self.split_conv0(x)
        main = self.blocks_conv(self.split_conv1(x))
        return self.concat_conv(torch.cat([main, shortcut], dim=1))


class CSPDarknet53(nn.Module):
    """Returns the stride 8, 16 and 32 feature maps (256, 512, 1024 channels)."""

    def __init__(self, blocks_per_stage: tuple[int, ...] = (1, 2, 8, 8, 4)):
        super().__init__()
        widths = (64, 128, 256, 512, 1024)
        self.conv1 = ConvBNAct(3, 32, 3, act="mish")
        self.stages = nn.ModuleList(
            CSPStage(in_c, out_c, n, first=(i == 0))
            for i, (in_c, out_c, n) in enumerate(zip((32,) + widths[:-1], widths, blocks_per_stage))
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.conv1(x)
        x = self.stages[1](self.stages[0](x))
        feat_s8 = self.stages[2](x)
        feat_s16 = self.stages[3](feat_s8)
        feat_s32 = self.stages[4](feat_s16)
        return feat_s8, feat_s16, feat_s32


class TinyCSPBlock(nn.Module):
    """YOLOv4-tiny's CSP block: conv, keep the second channel half (darknet 'groups=2 group_id=1'),
    two convs whose outputs are concatenated, a 1x1 fuse, concat with the block input, 2x2 max-pool.

    Returns (pooled output, pre-pool feature); the feature of the last block feeds the stride-16 head.
    """

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = ConvBNAct(channels, channels, 3)
        self.conv2 = ConvBNAct(half, half, 3)
        self.conv3 = ConvBNAct(half, half, 3)
        self.conv4 = ConvBNAct(channels, channels, 1)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        route = self.conv1(x)
        x = route.chunk(2, dim=1)[1]
        route1 = self.conv2(x)
        x = self.conv3(route1)
        feat = self.conv4(torch.cat([x, route1], dim=1))
        return self.pool(torch.cat([route, feat], dim=1)), feat


class CSPDarknet53Tiny(nn.Module):
    """Returns the stride 16 (256 channels) and stride 32 (512 channels) feature maps."""

    def __init__(self):
        super().__init__()
        self.conv1 = ConvBNAct(3, 32, 3, stride=2)
        self.conv2 = ConvBNAct(32, 64, 3, stride=2)
        self.resblock_body1 = TinyCSPBlock(64)
        self.resblock_body2 = TinyCSPBlock(128)
        self.resblock_body3 = TinyCSPBlock(256)
        self.conv3 = ConvBNAct(512, 512, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.conv2(self.conv1(x))
        x, _ = self.resblock_body1(x)
        x, _ = self.resblock_body2(x)
        x, feat_s16 = self.resblock_body3(x)
        feat_s32 = self.conv3(x)
        return feat_s16, feat_s32
