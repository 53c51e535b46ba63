"""Paired statistics: VOC AP from per-image records against the evaluator, the bootstrap, the t interval."""
import numpy as np
import pytest
from conftest import GOLDEN_AP, assert_truncated_equal, load_golden

from utils.compare import paired
from utils.eval.utils_map import DetBox, GTBox, evaluate_detections


def random_set(rng, *, images=12, classes=("a", "b", "c")) -> tuple[dict, dict]:
    """Random ground truth (some difficult, some images empty) and detections near and away from it."""
    gt, dets = {}, {}
    for i in range(images):
        boxes = []
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 200, 2)
            boxes.append(GTBox(str(rng.choice(classes)), x, y, x + rng.uniform(10, 60), y + rng.uniform(10, 60),
                               bool(rng.random() < 0.15)))
        gt[f"img{i}"] = boxes
        found = []
        for box in boxes:
            for _ in range(rng.integers(0, 3)):  # duplicates and shifted copies
                jitter = rng.normal(0, 6, 4)
                found.append(DetBox(box.class_name if rng.random() < 0.8 else str(rng.choice(classes)),
                                    float(np.round(rng.random(), 2)), *(np.array(box[1:5]) + jitter)))
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 200, 2)
            found.append(DetBox(str(rng.choice(classes)), float(np.round(rng.random(), 2)), x, y, x + 30, y + 30))
        dets[f"img{i}"] = found
    return gt, dets


@pytest.mark.parametrize("iou_threshold", sorted(GOLDEN_AP))
def test_ap_from_records_matches_the_golden_values(iou_threshold):
    gt, dets = load_golden("groundtruths", detections=False), load_golden("detections", detections=True)
    records = paired.image_records(gt=gt, dets=dets, class_names=["person"], iou_threshold=iou_threshold)
    ap = paired.voc_ap_from_flags(scores=records.det_score, tp=records.det_tp, n_gt=int(records.n_gt.sum()))
    assert_truncated_equal(ap, GOLDEN_AP[iou_threshold][1])


def test_records_by_hand_and_the_saved_file_format(tmp_path):
    gt = {"a": [GTBox("cat", 0, 0, 9, 9), GTBox("cat", 20, 20, 29, 29, True), GTBox("bird", 0, 0, 9, 9)],
          "b": [GTBox("dog", 0, 0, 9, 9)]}
    dets = {"b": [DetBox("dog", 0.6, 0, 0, 9, 9), DetBox("dog", 0.6, 1, 0, 10, 9)],  # TP, then a tied duplicate
            "a": [DetBox("cat", 0.7, 0, 0, 9, 9),     # duplicate of the 0.9 one
                  DetBox("cat", 0.8, 20, 20, 29, 29),  # on the difficult cat: no row
                  DetBox("cat", 0.9, 0, 0, 9, 9)]}     # TP
    records = paired.image_records(gt=gt, dets=dets, class_names=["cat", "dog"])  # bird is not a listed class
    assert records.image_ids == ["a", "b"] and records.class_names == ["cat", "dog"]
    # Rows by image, then by descending score (file order among ties).
    np.testing.assert_array_equal(records.det_image, [0, 0, 1, 1])
    np.testing.assert_array_equal(records.det_class, [0, 0, 1, 1])
    np.testing.assert_array_equal(records.det_score, [0.9, 0.7, 0.6, 0.6])
    np.testing.assert_array_equal(records.det_tp, [True, False, True, False])
    np.testing.assert_array_equal(records.n_gt, [[1, 0], [0, 1]])
    # A file in the saved format, written here key by key, reads back as the same records.
    np.savez_compressed(tmp_path / "eval_images.npz", image_ids=np.array(["a", "b"]),
                        class_names=np.array(["cat", "dog"]), det_image=np.array([0, 0, 1, 1]),
                        det_class=np.array([0, 0, 1, 1]), det_score=np.array([0.9, 0.7, 0.6, 0.6]),
                        det_tp=np.array([True, False, True, False]), n_gt=np.array([[1, 0], [0, 1]]))
    loaded = paired.ImageRecords.from_npz(tmp_path / "eval_images.npz")
    records.to_npz(tmp_path / "again.npz")
    again = paired.ImageRecords.from_npz(tmp_path / "again.npz")
    for other in (loaded, again):
        assert other.image_ids == records.image_ids and other.class_names == records.class_names
        for key in ("det_image", "det_class", "det_score", "det_tp", "n_gt"):
            assert np.array_equal(getattr(other, key), getattr(records, key))
            assert getattr(other, key).dtype == getattr(records, key).dtype


@pytest.mark.parametrize("seed", range(5))
def test_map_from_records_equals_the_evaluator_and_a_resample_equals_copied_images(seed):
    rng = np.random.default_rng(seed)
    gt, dets = random_set(rng)
    names = ["a", "b", "c"]
    records = paired.image_records(gt=gt, dets=dets, class_names=names)
    oracle = evaluate_detections(gt=gt, dets=dets, class_names=names)["map"]
    assert paired.weighted_map(records, np.ones((1, len(gt))))[0] == pytest.approx(oracle, abs=1e-12)
    counts = rng.multinomial(len(gt), np.full(len(gt), 1 / len(gt)))
    copies_gt, copies_dets = {}, {}
    for image_id, count in zip(records.image_ids, counts):
        for k in range(count):
            copies_gt[f"{image_id}#{k}"] = gt[image_id]
            copies_dets[f"{image_id}#{k}"] = [d._replace(score=d.score - 1e-9 * k) for d in dets[image_id]]
    resampled = evaluate_detections(gt=copies_gt, dets=copies_dets, class_names=names)["map"]
    assert paired.weighted_map(records, counts[None].astype(float))[0] == pytest.approx(resampled, abs=1e-6)


def test_bootstrap_is_reproducible_and_brackets_the_difference():
    rng = np.random.default_rng(3)
    gt, dets_a = random_set(rng, images=20)
    _, dets_b = random_set(np.random.default_rng(4), images=20)
    dets_b = {k: v for k, v in zip(gt, dets_b.values())}
    a = paired.image_records(gt=gt, dets=dets_a, class_names=["a", "b", "c"])
    b = paired.image_records(gt=gt, dets=dets_b, class_names=["a", "b", "c"])
    first = paired.paired_bootstrap(focal=a, reference=b, resamples=1000, seed=7)
    assert first == paired.paired_bootstrap(focal=a, reference=b, resamples=1000, seed=7)
    assert first != paired.paired_bootstrap(focal=a, reference=b, resamples=1000, seed=8)
    assert first["low"] <= first["diff"] <= first["high"]
    same = paired.paired_bootstrap(focal=a, reference=a, resamples=200, seed=7)
    assert same["low"] == same["high"] == same["diff"] == 0.0


def test_t_interval_and_verdict_by_hand():
    diffs = [0.010, 0.030, -0.005]  # mean 0.011667, sd 0.017559, t(0.975, 2) = 4.3027
    ci = paired.t_interval(diffs)
    sd = np.sqrt(((0.010 - 0.035 / 3) ** 2 + (0.030 - 0.035 / 3) ** 2 + (-0.005 - 0.035 / 3) ** 2) / 2)
    assert ci["mean"] == pytest.approx(0.035 / 3) and ci["sd"] == pytest.approx(sd)
    assert ci["low"] == pytest.approx(0.035 / 3 - 4.3027 * sd / np.sqrt(3))
    assert ci["high"] == pytest.approx(0.035 / 3 + 4.3027 * sd / np.sqrt(3))
    assert paired.t_interval([0.02, 0.03, 0.025, 0.035])["low"] == pytest.approx(0.0275 - 3.1824 * np.sqrt(
        np.var([0.02, 0.03, 0.025, 0.035], ddof=1)) / 2)
    line = paired.verdict(low=ci["low"], high=ci["high"], diff=ci["mean"], name="focal", reference="bce",
                          basis="t over 3 seeds")
    assert line.startswith("Verdict at 95 %: no detectable difference between focal and bce")
    assert "better" in paired.verdict(low=0.01, high=0.02, diff=0.015, name="f", reference="b", basis="")
    assert "worse" in paired.verdict(low=-0.02, high=-0.01, diff=-0.015, name="f", reference="b", basis="")
