"""Darknet ``.cfg`` files of YOLOv4 and YOLOv4-tiny (AlexeyAB/darknet): read one, check that it describes one of
this project's two architectures, and return what the project needs to build and run it.

The check compares the cfg, section by section, with the layer sequence this project's model computes (written
out below from nets/darknet.py and nets/yolo.py). That sequence also pairs every ``[convolutional]`` section with
the project module holding its weights, in cfg order, which is the order of the tensors in a ``.weights`` file
(the cfg's order differs from the project's module registration order in the neck, the heads and tiny's head).
Class count, anchors, masks, ``scale_x_y`` and the network size may differ from the published cfgs.
"""
from dataclasses import dataclass, field
from pathlib import Path

MISH, LEAKY, LINEAR = "mish", "leaky", "linear"


@dataclass(frozen=True)
class Layer:
    """One darknet section as this project's model computes it; routes and shortcuts name absolute layer indices."""
    kind: str  # convolutional | route | shortcut | maxpool | upsample | yolo
    params: tuple = ()  # the values compared with the cfg; a head's filters are None (they depend on classes)
    module: str | None = None  # convolutional: the project module (ConvBNAct, or the head's nn.Conv2d)
    level: int | None = None  # yolo: the project's level index (0 = coarsest, stride 32)


class _Sequence:
    """Builds a layer list while handing out each layer's index, so routes can refer to earlier layers."""

    def __init__(self):
        self.layers: list[Layer] = []

    def _add(self, layer: Layer) -> int:
        self.layers.append(layer)
        return len(self.layers) - 1

    def conv(self, module: str, filters: int | None, size: int, stride: int = 1, act: str = LEAKY) -> int:
        batch_normalize = filters is not None  # only the heads' output convs have no BN (and a bias)
        return self._add(Layer("convolutional", (filters, size, stride, int(batch_normalize), act), module))

    def conv_stack(self, prefix: str, mid: int, count: int) -> int:
        for i in range(count):  # nets.yolo.conv_stack: 1x1 to mid, 3x3 to 2 * mid, alternating
            last = self.conv(f"{prefix}.{i}", mid if i % 2 == 0 else 2 * mid, 1 if i % 2 == 0 else 3)
        return last

    def route(self, *layers: int, groups: int = 1, group_id: int = 0) -> int:
        return self._add(Layer("route", (tuple(layers), groups, group_id)))

    def shortcut(self, source: int) -> int:
        return self._add(Layer("shortcut", (source, LINEAR)))

    def maxpool(self, size: int, stride: int) -> int:
        return self._add(Layer("maxpool", (size, stride)))

    def upsample(self) -> int:
        return self._add(Layer("upsample", (2,)))

    def head(self, prefix: str, mid: int, level: int) -> int:
        self.conv(f"{prefix}.conv", mid, 3)
        self.conv(f"{prefix}.pred", None, 1, act=LINEAR)
        return self._add(Layer("yolo", (), level=level))

    @property
    def last(self) -> int:
        return len(self.layers) - 1


def yolov4_layers() -> list[Layer]:
    """YOLOv4 (CSPDarknet53, SPP, PANet) in darknet section order; the finest head (stride 8) comes first."""
    seq = _Sequence()
    seq.conv("backbone.conv1", 32, 3, act=MISH)
    stage_out = []
    for s, (width, blocks) in enumerate(zip((64, 128, 256, 512, 1024), (1, 2, 8, 8, 4))):
        prefix, first = f"backbone.stages.{s}", s == 0
        branch, hidden = (width, width // 2) if first else (width // 2, width // 2)
        down = seq.conv(f"{prefix}.downsample_conv", width, 3, 2, MISH)
        shortcut_branch = seq.conv(f"{prefix}.split_conv0", branch, 1, act=MISH)
        seq.route(down)
        seq.conv(f"{prefix}.split_conv1", branch, 1, act=MISH)
        for b in range(blocks):
            block_input = seq.last
            seq.conv(f"{prefix}.blocks_conv.{b}.block.0", hidden, 1, act=MISH)
            seq.conv(f"{prefix}.blocks_conv.{b}.block.1", branch, 3, act=MISH)
            seq.shortcut(block_input)
        seq.conv(f"{prefix}.blocks_conv.{blocks}", branch, 1, act=MISH)
        seq.route(seq.last, shortcut_branch)
        stage_out.append(seq.conv(f"{prefix}.concat_conv", width, 1, act=MISH))
    spp_input = seq.conv_stack("neck.p5_pre_spp", 512, 3)
    pool5 = seq.maxpool(5, 1)
    seq.route(spp_input)
    pool9 = seq.maxpool(9, 1)
    seq.route(spp_input)
    pool13 = seq.maxpool(13, 1)
    seq.route(pool13, pool9, pool5, spp_input)
    p5 = seq.conv_stack("neck.p5_post_spp", 512, 3)
    seq.conv("neck.up_p5.conv", 256, 1)
    upsampled = seq.upsample()
    seq.route(stage_out[3])
    seq.route(seq.conv("neck.p4_lateral", 256, 1), upsampled)
    p4 = seq.conv_stack("neck.p4_top_down", 256, 5)
    seq.conv("neck.up_p4.conv", 128, 1)
    upsampled = seq.upsample()
    seq.route(stage_out[2])
    seq.route(seq.conv("neck.p3_lateral", 128, 1), upsampled)
    p3 = seq.conv_stack("neck.p3_out", 128, 5)
    seq.head("heads.2", 256, level=2)
    seq.route(p3)
    seq.route(seq.conv("neck.down_p3", 256, 3, 2), p4)
    p4_out = seq.conv_stack("neck.p4_out", 256, 5)
    seq.head("heads.1", 512, level=1)
    seq.route(p4_out)
    seq.route(seq.conv("neck.down_p4", 512, 3, 2), p5)
    seq.conv_stack("neck.p5_out", 512, 5)
    seq.head("heads.0", 1024, level=0)
    return seq.layers


def yolov4_tiny_layers() -> list[Layer]:
    """YOLOv4-tiny in darknet section order; the coarse head (stride 32) comes first."""
    seq = _Sequence()
    seq.conv("backbone.conv1", 32, 3, 2)
    seq.conv("backbone.conv2", 64, 3, 2)
    for k, channels in enumerate((64, 128, 256), start=1):
        prefix = f"backbone.resblock_body{k}"
        block_conv1 = seq.conv(f"{prefix}.conv1", channels, 3)
        seq.route(block_conv1, groups=2, group_id=1)  # the second half of the channels
        block_conv2 = seq.conv(f"{prefix}.conv2", channels // 2, 3)
        seq.route(seq.conv(f"{prefix}.conv3", channels // 2, 3), block_conv2)
        feat = seq.conv(f"{prefix}.conv4", channels, 1)
        seq.route(block_conv1, feat)
        seq.maxpool(2, 2)
    seq.conv("backbone.conv3", 512, 3)
    p5 = seq.conv("p5_lateral", 256, 1)
    seq.head("heads.0", 512, level=0)
    seq.route(p5)
    seq.conv("up_p5.conv", 128, 1)
    seq.route(seq.upsample(), feat)
    seq.head("heads.1", 256, level=1)
    return seq.layers


ARCHITECTURES = {"yolov4": yolov4_layers, "yolov4-tiny": yolov4_tiny_layers}


@dataclass
class Section:
    kind: str
    options: dict[str, str]
    line: int  # 1-based line of the [header]


class CfgError(ValueError):
    """A cfg file that cannot be read or that describes another network; the message names the file and section
    (sections counted from 1 with [net] first, as an editor shows them; layers counted from 0 as darknet does)."""


def parse_sections(path: str | Path) -> list[Section]:
    """All sections of a cfg file, [net] included, with their key=value options (comments and blanks dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"darknet cfg {path}: no such file")
    sections: list[Section] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise CfgError(f"darknet cfg {path}, line {number}: unterminated section header {raw.strip()!r}")
            sections.append(Section(line[1:-1].strip().lower(), {}, number))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise CfgError(f"darknet cfg {path}, line {number}: expected [section] or key=value, got {raw.strip()!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise CfgError(f"darknet cfg {path}: must start with a [net] section")
    return sections


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _section_values(section: Section, index: int) -> tuple:
    """The section's values in the form Layer.params holds them (relative route/shortcut indices made absolute)."""
    opts = section.options
    if section.kind == "convolutional":
        size = int(opts.get("size", 1))
        padding = size // 2 if int(opts.get("pad", 0)) else int(opts.get("padding", 0))
        if padding != size // 2 or int(opts.get("groups", 1)) != 1 or int(opts.get("dilation", 1)) != 1:
            return ("padding/groups/dilation other than 'same', 1, 1",)
        return (int(opts.get("filters", 1)), size, int(opts.get("stride", 1)), int(opts.get("batch_normalize", 0)),
                opts.get("activation", "logistic"))
    if section.kind == "route":
        layers = tuple(v if v >= 0 else index + v for v in _ints(opts.get("layers", "")))
        return layers, int(opts.get("groups", 1)), int(opts.get("group_id", 0))
    if section.kind == "shortcut":
        source = int(opts.get("from", 0))
        return (source if source >= 0 else index + source, opts.get("activation", LINEAR))
    if section.kind == "maxpool":
        size = int(opts.get("size", 1))
        return size, int(opts.get("stride", size))
    if section.kind == "upsample":
        return (int(opts.get("stride", 2)),)
    return ()


def _first_difference(sections: list[Section], expected: list[Layer]) -> tuple[int, str] | None:
    """(layer index, what differs) of the first section that does not match, or None when all match."""
    for index, layer in enumerate(expected):
        if index >= len(sections):
            return index, f"the cfg ends after {len(sections)} layers, expected a [{layer.kind}] section next"
        section = sections[index]
        if section.kind != layer.kind:
            return index, f"expected a [{layer.kind}] section here"
        if layer.kind == "yolo":
            continue
        try:
            got, want = _section_values(section, index), layer.params
        except ValueError as err:  # int() of a malformed value
            return index, f"has a malformed value ({err})"
        if layer.kind == "convolutional" and want[0] is None:
            got = (None,) + got[1:]  # a head's filters depend on the classes: read_cfg checks them with its [yolo]
        if got != want:
            return index, f"has {_describe(layer.kind, got)}, expected {_describe(layer.kind, want)}"
    if len(sections) > len(expected):
        return len(expected), "is one section too many: the architecture ends before it"
    return None


def _describe(kind: str, values: tuple) -> str:
    names = {"convolutional": ("filters", "size", "stride", "batch_normalize", "activation"),
             "route": ("layers", "groups", "group_id"), "shortcut": ("from", "activation"),
             "maxpool": ("size", "stride"), "upsample": ("stride",)}.get(kind, ())
    if len(values) != len(names):
        return ", ".join(map(str, values))
    return " ".join(f"{name}={value}" for name, value in zip(names, values) if value is not None)


@dataclass
class DarknetCfg:
    """What a YOLOv4 / YOLOv4-tiny cfg says, in the project's terms (levels ordered coarsest first)."""
    path: str
    model: str  # yolov4 | yolov4-tiny
    num_classes: int
    anchors: list[list[float]]  # (w, h) in network-input pixels
    anchors_mask: list[list[int]]  # anchor ids per level, coarsest first
    input_shape: list[int]  # [h, w] from [net] height and width
    scale_x_y: list[float]  # per level, coarsest first
    conv_modules: list[str] = field(default_factory=list)  # project module of every [convolutional], in cfg order

    def config(self, *, class_names: list[str]) -> dict:
        """The resolved settings in the form this project's checkpoints store them."""
        return {"model": self.model, "class_names": list(class_names), "anchors": self.anchors,
                "anchors_mask": self.anchors_mask, "input_shape": self.input_shape, "scale_x_y": self.scale_x_y}


def _yolo_values(path: Path, section: Section, index: int) -> tuple[int, list[float], list[int], float]:
    opts = section.options
    where = f"darknet cfg {path}: section {index + 2} [yolo] (line {section.line})"
    if int(opts.get("new_coords", 0)):
        raise CfgError(f"{where}: new_coords=1 (the scaled-YOLOv4 box decoding) is not supported")
    try:
        anchors, mask = _floats(opts.get("anchors", "")), _ints(opts.get("mask", ""))
        num_classes, scale = int(opts.get("classes", 20)), float(opts.get("scale_x_y", 1.0))
    except ValueError as err:
        raise CfgError(f"{where}: a malformed value ({err})") from err
    if not anchors or len(anchors) % 2 or not mask or any(not 0 <= m < len(anchors) // 2 for m in mask):
        raise CfgError(f"{where}: needs anchors (w,h pairs) and a mask of anchor ids, got anchors={anchors} "
                       f"mask={mask}")
    return num_classes, anchors, mask, scale


def read_cfg(path: str | Path) -> DarknetCfg:
    """Reads and checks a cfg; raises CfgError naming the first section that differs from both architectures."""
    path = Path(path)
    sections = parse_sections(path)
    net, layers = sections[0], sections[1:]
    mismatches = {}
    for model, build in ARCHITECTURES.items():
        expected = build()
        difference = _first_difference(layers, expected)
        if difference is None:
            break
        mismatches[model] = difference
    else:
        model, (index, reason) = max(mismatches.items(), key=lambda item: item[1][0])
        where = (f"section {index + 2} [{layers[index].kind}] (line {layers[index].line})" if index < len(layers)
                 else "the end of the file")
        raise CfgError(f"darknet cfg {path}: not a YOLOv4 or YOLOv4-tiny network: {where} differs from {model} "
                       f"(layer {index}): {reason}")
    options = net.options
    try:
        channels, height, width = (int(options.get(key, default)) for key, default in
                                   (("channels", 3), ("height", 416), ("width", 416)))
    except ValueError as err:
        raise CfgError(f"darknet cfg {path}: [net] has a malformed value ({err})") from err
    if channels != 3:
        raise CfgError(f"darknet cfg {path}: [net] channels={channels}, the project takes RGB (3)")
    if height % 32 or width % 32:
        raise CfgError(f"darknet cfg {path}: [net] width={width} height={height} must be multiples of 32")
    num_levels = sum(layer.kind == "yolo" for layer in expected)
    masks, scales, classes, anchors = [None] * num_levels, [1.0] * num_levels, set(), set()
    for index, layer in enumerate(expected):
        if layer.kind != "yolo":
            continue
        num_classes, level_anchors, mask, scale = _yolo_values(path, layers[index], index)
        filters = int(layers[index - 1].options.get("filters", 1))
        if filters != len(mask) * (5 + num_classes):
            raise CfgError(f"darknet cfg {path}: section {index + 1} [convolutional] (line {layers[index - 1].line}) "
                           f"has filters={filters}, but its [yolo] section needs len(mask) * (5 + classes) = "
                           f"{len(mask)} * (5 + {num_classes}) = {len(mask) * (5 + num_classes)}")
        classes.add(num_classes)
        anchors.add(tuple(level_anchors))
        masks[layer.level], scales[layer.level] = mask, scale
    if len(classes) != 1 or len(anchors) != 1 or len({len(m) for m in masks}) != 1:
        raise CfgError(f"darknet cfg {path}: the [yolo] sections disagree on classes, anchors or the number of "
                       f"anchors per level (classes {sorted(classes)}, masks {masks})")
    values = anchors.pop()
    return DarknetCfg(path=str(path), model=model, num_classes=classes.pop(),
                      anchors=[list(values[i:i + 2]) for i in range(0, len(values), 2)], anchors_mask=masks,
                      input_shape=[height, width], scale_x_y=scales,
                      conv_modules=[layer.module for layer in expected if layer.kind == "convolutional"])


TEMPLATES = {"yolov4": "yolov4-custom.cfg", "yolov4-tiny": "yolov4-tiny-custom.cfg"}
TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "model_data" / "darknet"


def _number(value: float) -> str:
    """Shortest text that reads back as the same float (darknet parses with atof)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render_cfg(*, model: str, num_classes: int, anchors: list[list[float]], anchors_mask: list[list[int]],
               input_shape: list[int], scale_x_y: list[float] | None = None) -> str:
    """A cfg for a model of this project: darknet's -custom template of the variant with the network size, classes,
    anchors, masks, scale_x_y (levels coarsest first, as in the project) and head filters set."""
    expected = ARCHITECTURES[model]()
    scales = scale_x_y or [1.0] * len(anchors_mask)
    anchor_text = ",  ".join(f"{_number(w)},{_number(h)}" for w, h in anchors)
    edits: dict[int, dict[str, str]] = {-1: {"width": str(input_shape[1]), "height": str(input_shape[0])}}
    for index, layer in enumerate(expected):
        if layer.kind == "yolo":
            mask = anchors_mask[layer.level]
            edits[index - 1] = {"filters": str(len(mask) * (5 + num_classes))}
            edits[index] = {"mask": ",".join(map(str, mask)), "anchors": anchor_text, "classes": str(num_classes),
                            "num": str(len(anchors)), "scale_x_y": _number(scales[layer.level])}
    out, index = [], -2  # -1 is [net], then darknet's layer indices
    for line in (TEMPLATE_DIR / TEMPLATES[model]).read_text(encoding="utf-8").splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped.startswith("["):
            index += 1
            out.append(line)
            out.extend(f"{key}={value}" for key, value in edits.get(index, {}).items())
        elif "=" in stripped and stripped.split("=", 1)[0].strip() in edits.get(index, {}):
            continue  # replaced by the line written under the header
        else:
            out.append(line)
    return "\n".join(out) + "\n"
