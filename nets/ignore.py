"""The ignore test of YOLOLoss: which cells' decoded boxes overlap a ground truth of their image above a threshold.

Three exact methods; ``cells_overlapping`` picks the cheapest per level from the number of pairs each would test:
- windowed: IoU > t needs an overlap width above t * max(w_pred, w_gt) (the overlap height is at most
  min(h_pred, h_gt) and the union at least the larger area), and so, whatever the predicted size, centres closer
  than k * w_gt in x (likewise in y) with k = max(1 - t, 1 / (2t) - 1/2): 0.5 at the usual t = 0.5, i.e. the
  predicted centre lies inside the ground truth. A cell's predicted centre stays within its cell (widened by
  scale_x_y), so each ground truth tests only the cells of a window around it, for every anchor. The pairs are
  gathered, about ten times the cost per pair of the dense method: it wins for boxes small against the image.
- banded: the grid's rows cut into IGNORE_BANDS bands; each band tests only the ground truths whose window reaches
  it. The bands are contiguous slices, so this is the dense computation on (image, band) pairs with fewer ground
  truths each: it wins for boxes large against the cells but small against the image.
- dense: every cell against every ground truth of its image, in cache-sized blocks of reused buffers.
All three test IoU > t as inter > t / (1 + t) * (area_pred + area_gt): no union, no division; this differs from
comparing the divided IoU only where the two round differently at exactly the threshold.
"""
import math
from typing import NamedTuple

import torch
from torch import Tensor

from utils.core.boxes import box_xyxy_to_cxcywh

# Most (ground truth, cell) pairs any method builds at once: bounds memory for any number and size of boxes
# (2**18 floats, 1 MB per buffer, cache-sized: measured fastest between 2**15 and 2**22 on a 2-core CPU).
IGNORE_CHUNK_ELEMENTS = 1 << 18
# Cost of one pair of each method in units of one dense pair (measured on a 2-core CPU; windowed pairs are gathered).
PAIR_COST = {"windowed": 10.0, "banded": 1.5, "dense": 1.0}
IGNORE_BANDS = 16  # row bands per grid for the banded method (4 to 16 measured alike on the 52-row grid)


def cells_overlapping(pred_xyxy_planes_px: Tensor, gt_xyxy_px: Tensor, gt_img: Tensor, *, threshold: float,
                      scale_x_y: float, input_shape: tuple[int, int]) -> Tensor:
    """(B, A, H, W) bool: whether a cell's box (pred_xyxy_planes_px, (4, B, A, H, W): x1, y1, x2, y2 planes,
    centres inside their cells as decoded with ``scale_x_y``) has IoU > ``threshold`` with a ground truth of its
    image (gt_xyxy_px (G, 4) in input pixels, image indices gt_img (G,))."""
    _, batch, num_anchors, height, width = pred_xyxy_planes_px.shape
    if len(gt_xyxy_px) == 0:
        return torch.zeros((batch, num_anchors, height, width), dtype=torch.bool, device=gt_xyxy_px.device)
    windows = cell_windows(gt_xyxy_px, threshold=threshold, scale_x_y=scale_x_y, input_shape=input_shape,
                           grid_hw=(height, width))
    bands = row_bands(windows, gt_img, batch=batch, height=height)
    cells = batch * num_anchors * height * width
    pairs = {"windowed": int((windows[1] - windows[0] + 1).mul(windows[3] - windows[2] + 1).sum()) * num_anchors,
             "banded": cells // height * bands.rows * bands.count * bands.most_per_band,
             "dense": cells * int(torch.bincount(gt_img).max())}
    method = min(pairs, key=lambda name: pairs[name] * PAIR_COST[name])
    if method == "windowed":
        return cells_overlapping_windowed(pred_xyxy_planes_px, gt_xyxy_px, gt_img, windows=windows,
                                          threshold=threshold)
    if method == "banded":
        return cells_overlapping_banded(pred_xyxy_planes_px, gt_xyxy_px, bands=bands, threshold=threshold)
    gt_padded_xyxy_px, gt_valid = pad_per_image(gt_img, gt_xyxy_px, batch)  # (B, M, 4), (B, M)
    overlaps = any_iou_above(pred_xyxy_planes_px.flatten(2, 4), gt_padded_xyxy_px, gt_valid, threshold=threshold)
    return overlaps.view(batch, num_anchors, height, width)


class RowBands(NamedTuple):
    """Which ground truths each (image, band of ``rows`` grid rows) tests: ``pair_key`` (P,) = image * count + band
    and ``pair_gt`` (P,) index the ground truths; ``most_per_band`` is the largest number of them in one band."""
    rows: int
    count: int
    pair_key: Tensor
    pair_gt: Tensor
    most_per_band: int


def row_bands(windows: tuple[Tensor, Tensor, Tensor, Tensor], gt_img: Tensor, *, batch: int, height: int) -> RowBands:
    """The (image, band) pairs of every ground truth whose window of rows (``cell_windows``) reaches the band."""
    rows = math.ceil(height / IGNORE_BANDS)
    count = math.ceil(height / rows)
    band_low, band_high = windows[2] // rows, windows[3] // rows  # (G,) each
    spans = band_high - band_low + 1  # (G,)
    pair_gt = torch.repeat_interleave(torch.arange(len(spans), device=spans.device), spans)  # (P,)
    first_pair = torch.cumsum(spans, 0) - spans  # (G,)
    band = band_low[pair_gt] + torch.arange(len(pair_gt), device=spans.device) - first_pair[pair_gt]  # (P,)
    pair_key = gt_img[pair_gt] * count + band  # (P,)
    most = int(torch.bincount(pair_key, minlength=batch * count).max())
    return RowBands(rows=rows, count=count, pair_key=pair_key, pair_gt=pair_gt, most_per_band=most)


def cells_overlapping_banded(pred_xyxy_planes_px: Tensor, gt_xyxy_px: Tensor, *, bands: RowBands,
                             threshold: float) -> Tensor:
    """The banded method of ``cells_overlapping``, given ``row_bands``: the dense test with each (image, band) of
    rows as an image of its own that holds only the ground truths reaching it."""
    _, batch, num_anchors, height, width = pred_xyxy_planes_px.shape
    padded_height = bands.rows * bands.count
    # Rows past the grid (to fill the last band) are empty boxes at the origin: never above; cropped below.
    planes = torch.nn.functional.pad(pred_xyxy_planes_px, (0, 0, 0, padded_height - height))  # (4, B, A, H', W)
    band_planes = (planes.view(4, batch, num_anchors, bands.count, bands.rows * width).transpose(2, 3)
                   .reshape(4, batch * bands.count, num_anchors * bands.rows * width))  # (4, B*bands, A*rows*W)
    gt_padded_xyxy_px, gt_valid = pad_per_image(bands.pair_key, gt_xyxy_px[bands.pair_gt], batch * bands.count)
    overlaps = any_iou_above(band_planes, gt_padded_xyxy_px, gt_valid, threshold=threshold)  # (B*bands, A*rows*W)
    overlaps = overlaps.view(batch, bands.count, num_anchors, bands.rows, width).transpose(1, 2)
    return overlaps.reshape(batch, num_anchors, padded_height, width)[:, :, :height]


def cell_windows(gt_xyxy_px: Tensor, *, threshold: float, scale_x_y: float, input_shape: tuple[int, int],
                 grid_hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_low, x_high, y_low, y_high), each (G,) long: the inclusive range of cells per ground truth whose
    predicted centres can come close enough for IoU > ``threshold`` (one cell of margin against rounding)."""
    reach = max(1.0 - threshold, 0.5 / threshold - 0.5) if threshold > 0 else math.inf  # in ground-truth sizes
    half_extra = (scale_x_y - 1.0) / 2  # a centre lies in (cell - half_extra, cell + 1 + half_extra) cells
    gt_cxcywh_px = box_xyxy_to_cxcywh(gt_xyxy_px)
    window = []
    for axis, cells in ((0, grid_hw[1]), (1, grid_hw[0])):
        stride = input_shape[1 - axis] / cells
        centre, size = gt_cxcywh_px[:, axis], gt_cxcywh_px[:, 2 + axis]
        window.append(((centre - reach * size) / stride - 1.0 - half_extra).floor().clamp(0, cells - 1).long())
        window.append(((centre + reach * size) / stride + half_extra).floor().clamp(0, cells - 1).long())
    return tuple(window)


def pad_per_image(img_idx: Tensor, boxes: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Regroups (N, 4) boxes of a flat target tensor into (B, M, 4) with M the most boxes in one image.

    Returns the padded boxes and a (B, M) validity mask. Vectorised: rank of each box within its image.
    """
    counts = torch.bincount(img_idx, minlength=batch_size)  # (B,)
    max_boxes = int(counts.max()) if img_idx.numel() else 0
    order = torch.argsort(img_idx, stable=True)
    first_of_image = torch.cumsum(counts, 0) - counts  # (B,)
    rank = torch.arange(img_idx.numel(), device=img_idx.device) - first_of_image[img_idx[order]]
    padded = boxes.new_zeros(batch_size, max_boxes, 4)
    valid = torch.zeros(batch_size, max_boxes, dtype=torch.bool, device=boxes.device)
    padded[img_idx[order], rank] = boxes[order]
    valid[img_idx[order], rank] = True
    return padded, valid


def any_iou_above(pred_xyxy_planes_px: Tensor, gt_padded_xyxy_px: Tensor, gt_valid: Tensor, *,
                  threshold: float) -> Tensor:
    """(B, N) bool: whether a predicted box has IoU > ``threshold`` with a valid ground truth of its image.

    pred_xyxy_planes_px (4, B, N): x1, y1, x2, y2 planes; gt_padded_xyxy_px (B, M, 4) with validity gt_valid
    (B, M); threshold >= 0.
    IoU > t is tested as inter > t / (1 + t) * (area_pred + area_gt), which needs no union and no division;
    it differs from comparing the divided IoU only where the two round differently at exactly the threshold.
    The (ground truth x box) block is built in pieces (whole images, or slices of one image's boxes) of at most
    IGNORE_CHUNK_ELEMENTS elements, in buffers reused across pieces: a cache-sized working set instead of
    B x N x M fresh memory per call (hundreds of MB at batch 16 with 100 boxes per image, which a fresh process
    pays for in page faults). Ground truths run along dim 1 and boxes along the contiguous last dim, so every
    broadcast reads contiguous rows.
    """
    _, batch, num_boxes = pred_xyxy_planes_px.shape
    max_gt = gt_padded_xyxy_px.shape[1]
    scale = threshold / (1.0 + threshold)
    pred_coords = pred_xyxy_planes_px.contiguous()  # (4, B, N): x1, y1, x2, y2 rows
    pred_area = (pred_coords[2] - pred_coords[0]) * (pred_coords[3] - pred_coords[1]) * scale  # (B, N), scaled
    # Padded slots become empty boxes at the origin: zero intersection with anything, so never above.
    gt_xyxy = gt_padded_xyxy_px.masked_fill(~gt_valid[..., None], 0.0).permute(2, 0, 1)[..., None]  # (4, B, M, 1)
    gt_area = (gt_xyxy[2] - gt_xyxy[0]) * (gt_xyxy[3] - gt_xyxy[1]) * scale  # (B, M, 1), scaled
    margin = pred_area.new_empty(batch, num_boxes)  # max over ground truths of inter - scaled gt area
    images_per_block = max(1, IGNORE_CHUNK_ELEMENTS // max(1, num_boxes * max_gt))
    boxes_per_block = num_boxes if images_per_block > 1 else max(1, IGNORE_CHUNK_ELEMENTS // max(1, max_gt))
    block_elements = min(images_per_block, batch) * max_gt * min(boxes_per_block, num_boxes)
    inter_buf, low_buf, high_buf = (pred_area.new_empty(block_elements) for _ in range(3))
    for image_start in range(0, batch, images_per_block):
        images = slice(image_start, image_start + images_per_block)
        gx1, gy1, gx2, gy2 = (coord[images] for coord in gt_xyxy)  # each (b, M, 1)
        for box_start in range(0, num_boxes, boxes_per_block):
            boxes = slice(box_start, box_start + boxes_per_block)
            px1, py1, px2, py2 = (coord[images, None, boxes] for coord in pred_coords)  # each (b, 1, n)
            size = px1.shape[0] * max_gt * px1.shape[2]
            shape = (px1.shape[0], max_gt, px1.shape[2])
            inter, low, high = (buf[:size].view(shape) for buf in (inter_buf, low_buf, high_buf))
            # Overlap width clamped at 0; the height is not: a negative height then gives inter <= 0, which is
            # never above the (non-negative) right-hand side, exactly as a clamped height would.
            torch.minimum(px2, gx2, out=inter).sub_(torch.maximum(px1, gx1, out=low)).clamp_(min=0)
            inter.mul_(torch.minimum(py2, gy2, out=high).sub_(torch.maximum(py1, gy1, out=low)))
            # A float max, then one comparison (CPU kernels for bool compare/any are much slower); the box's own
            # scaled area is the same for every ground truth, so it is subtracted after the max, once per box.
            torch.amax(inter.sub_(gt_area[images]), dim=1, out=margin[images, boxes])
    return margin > pred_area


def cells_overlapping_windowed(pred_xyxy_planes_px: Tensor, gt_xyxy_px: Tensor, gt_img: Tensor, *,
                               windows: tuple[Tensor, Tensor, Tensor, Tensor], threshold: float) -> Tensor:
    """The windowed method of ``cells_overlapping``, given ``cell_windows``."""
    _, batch, num_anchors, height, width = pred_xyxy_planes_px.shape
    x_low, x_high, y_low, y_high = windows  # (G,) each
    cols = x_high - x_low + 1  # (G,)
    cells_per_gt = cols * (y_high - y_low + 1)  # (G,)
    ignored = torch.zeros(batch * num_anchors * height * width, dtype=torch.bool, device=gt_xyxy_px.device)
    pred_coords = pred_xyxy_planes_px.reshape(4, -1)  # (4, B*A*H*W): x1, y1, x2, y2 rows
    pred_area = (pred_coords[2] - pred_coords[0]) * (pred_coords[3] - pred_coords[1])  # (B*A*H*W,)
    gt_coords = gt_xyxy_px.t().contiguous()  # (4, G)
    gt_area = (gt_coords[2] - gt_coords[0]) * (gt_coords[3] - gt_coords[1])  # (G,)
    anchor_offsets = torch.arange(num_anchors, device=pred_coords.device) * (height * width)  # (A,)
    scale = threshold / (1.0 + threshold)
    ends = torch.cumsum(cells_per_gt * num_anchors, 0)  # (G,) pairs up to and including each ground truth
    start_gt = 0
    while start_gt < len(gt_xyxy_px):  # pieces of whole ground truths, each of at most IGNORE_CHUNK_ELEMENTS pairs
        done = ends[start_gt - 1] if start_gt else 0
        stop_gt = max(start_gt + 1, int(torch.searchsorted(ends, done + IGNORE_CHUNK_ELEMENTS, right=True)))
        counts = cells_per_gt[start_gt:stop_gt]  # (g,)
        gt_of_pair = torch.repeat_interleave(counts) + start_gt  # (P,)
        first_pair = torch.cumsum(counts, 0) - counts  # (g,)
        local = torch.arange(len(gt_of_pair), device=pred_coords.device) - first_pair[gt_of_pair - start_gt]  # (P,)
        pair_cols = cols[gt_of_pair]  # (P,)
        cell_y, cell_x = local.div(pair_cols, rounding_mode="floor"), local.remainder(pair_cols)  # (P,) each
        base = (gt_img[gt_of_pair] * (num_anchors * height * width) + (cell_y + y_low[gt_of_pair]) * width
                + cell_x + x_low[gt_of_pair])  # (P,)
        cell_index = (base[:, None] + anchor_offsets).view(-1)  # (P*A,) anchor-minor
        px1, py1, px2, py2 = torch.index_select(pred_coords, 1, cell_index).view(4, -1, num_anchors)  # (P, A) each
        gx1, gy1, gx2, gy2 = torch.index_select(gt_coords, 1, gt_of_pair)[..., None]  # (P, 1) each
        inter = (torch.minimum(px2, gx2) - torch.maximum(px1, gx1)).clamp_(min=0)  # (P, A)
        inter.mul_((torch.minimum(py2, gy2) - torch.maximum(py1, gy1)).clamp_(min=0))
        area_sum = pred_area.index_select(0, cell_index).view(-1, num_anchors) + gt_area[gt_of_pair][:, None]
        hit = inter.view(-1) > scale * area_sum.view(-1)  # (P*A,)
        ignored[cell_index[hit]] = True
        start_gt = stop_gt
    return ignored.view(batch, num_anchors, height, width)
