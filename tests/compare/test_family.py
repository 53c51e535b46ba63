"""Several arms against one reference: Holm's step-down, the t distribution and the bootstrap p-value behind it,
the corrected report, the forest plot, and --family planning (commands, devices) without training."""
import json
import math

import numpy as np
import pytest
from conftest import shapes_compare_argv, write_shapes_voc

import compare_focal
from utils.compare import experiment, family, plots, report
from utils.compare.multiplicity import bootstrap_p, holm, t_quantile, t_two_sided_p
from utils.compare.paired import T_975, image_records, t_interval
from utils.core.config import ConfigError
from utils.eval.utils_map import DetBox, GTBox


def holm_by_definition(p: list[float]) -> list[float]:
    """Adjusted p of H_(i) = max over j <= i of min(1, (m - j + 1) p_(j)), written as loops."""
    m = len(p)
    ranked = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    for i, index in enumerate(ranked):
        adjusted[index] = max(min(1.0, (m - j) * p[ranked[j]]) for j in range(i + 1))
    return adjusted


def test_holm_by_hand():
    result = holm([0.01, 0.04, 0.03])
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04): 0.03, 0.06, 0.06
    np.testing.assert_allclose(result["adjusted"], [0.03, 0.06, 0.06])
    assert result["rejected"].tolist() == [True, False, False] and result["m"] == 3
    # 0.01 passed 0.05 / 3; the step-down stopped at 0.03 (> 0.05 / 2): 0.04, after it, gets that level too
    np.testing.assert_allclose(result["alpha_used"], [0.05 / 3, 0.025, 0.025])
    everything = holm([0.02, 0.001, 0.01])  # 0.001 <= 0.05/3, 0.01 <= 0.05/2, 0.02 <= 0.05: all rejected
    np.testing.assert_allclose(everything["adjusted"], [0.02, 0.003, 0.02])
    np.testing.assert_allclose(everything["alpha_used"], [0.05, 0.05 / 3, 0.025])
    assert everything["rejected"].all()
    np.testing.assert_allclose(holm([0.5, 0.6])["adjusted"], [1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(holm([0.03])["adjusted"], [0.03])  # one hypothesis: unchanged


@pytest.mark.parametrize("seed", range(4))
def test_holm_equals_its_definition_and_rejects_where_the_adjusted_p_is_at_most_alpha(seed):
    p = np.random.default_rng(seed).uniform(0, 0.08, size=6).tolist()
    result = holm(p)
    np.testing.assert_allclose(result["adjusted"], holm_by_definition(p))
    assert result["rejected"].tolist() == [a <= 0.05 for a in holm_by_definition(p)]
    # an interval at the level used excludes zero exactly for the rejected: p below the level used
    assert [pi <= used for pi, used in zip(p, result["alpha_used"])] == result["rejected"].tolist()


def test_t_distribution_against_tables_and_closed_forms():
    for df, tabled in enumerate(T_975, start=1):  # the 4-decimal table paired.py uses for one arm
        assert t_quantile(0.975, df) == pytest.approx(tabled, abs=5e-5)
    for df, tabled in ((1, 63.657), (2, 9.925), (3, 5.841), (4, 4.604), (5, 4.032), (10, 3.169)):  # t 0.995
        assert t_quantile(0.995, df) == pytest.approx(tabled, abs=5e-4)
    for t in (0.3, 1.0, 2.5, 40.0):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-14)  # Cauchy
        assert t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-14)
    assert t_two_sided_p(math.inf, 4) == 0.0 and t_two_sided_p(0.0, 4) == pytest.approx(1.0)


def test_t_distribution_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 7, 12, 29, 60):
        for prob in (0.975, 0.99, 1 - 0.05 / 12, 0.9995):
            assert t_quantile(prob, df) == pytest.approx(stats.t.ppf(prob, df), rel=1e-9)
        for t in (0.5, 2.0, 6.0):
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-8, abs=1e-14)


def test_bootstrap_p_by_hand_and_its_intervals_agree_with_it():
    # Five resamples at positions u = 0, 1/4, ..., 1: zero lies halfway between -0.01 (u 1/4) and 0.01 (u 1/2).
    diffs = np.array([0.05, -0.01, 0.03, -0.02, 0.01])
    assert bootstrap_p(diffs) == pytest.approx(2 * 0.375)
    assert bootstrap_p(np.linspace(-0.01, 0.09, 1001)) == pytest.approx(0.2)  # zero at u = 0.1
    assert bootstrap_p(np.full(7, 0.02)) == 0.0 and bootstrap_p(np.full(7, -0.02)) == 0.0
    assert bootstrap_p(np.zeros(7)) == 1.0
    rng = np.random.default_rng(0)
    for _ in range(20):
        sample = rng.normal(rng.uniform(-0.02, 0.02), 0.01, size=200)
        p = bootstrap_p(sample)
        for a in (0.01, 0.02, 0.05, 0.1, 0.3):
            if abs(a - p) > 1e-9:
                low, high = np.percentile(sample, [100 * a / 2, 100 * (1 - a / 2)])
                assert (low > 0 or high < 0) == (p < a), (p, a)


def comparison(name: str, maps: list[float]) -> dict:
    return {"arm": name, "reference": "bce",
            "seeds": [{"seed": 11 + i, "map": m, "bootstrap_low": -1.0, "bootstrap_high": 1.0, "per_class": {},
                       "small": None, "medium": None, "large": m} for i, m in enumerate(maps)],
            "over_seeds": t_interval(maps)}


def t2_quantile(coverage: float) -> float:
    """Student t with 2 df: P(|T| <= t) = t / sqrt(2 + t^2), solved for t."""
    return coverage * math.sqrt(2 / (1 - coverage ** 2))


def test_family_over_three_seeds_by_hand():
    maps = {"a": [0.04, 0.045, 0.05], "b": [0.0, 0.02, 0.04], "c": [-0.01, 0.0, 0.04]}
    comparisons = [comparison(name, values) for name, values in maps.items()]
    resampled = {(i, 11 + k): np.linspace(-0.5, 0.5, 11) for i in range(3) for k in range(3)}
    family.adjust_over_family(comparisons, resampled)
    p = {}
    for name, values in maps.items():  # 2 df: p = 1 - |t| / sqrt(2 + t^2)
        t = np.mean(values) / (np.std(values, ddof=1) / math.sqrt(3))
        p[name] = 1 - abs(t) / math.sqrt(2 + t * t)
    assert p["a"] < 0.05 / 3 < 0.025 < p["b"] < p["c"]  # a passes 0.05 / 3; b fails 0.05 / 2: the step-down stops
    expected = {"a": (3 * p["a"], 0.05 / 3), "b": (2 * p["b"], 0.025), "c": (p["c"], 0.025)}
    for comp in comparisons:
        over, (adjusted, used) = comp["over_seeds"], expected[comp["arm"]]
        assert comp["family"] == 3 and over["p"] == pytest.approx(p[comp["arm"]], rel=1e-9)
        assert over["p_holm"] == pytest.approx(adjusted, rel=1e-9) and over["level"] == pytest.approx(1 - used)
        standard_error = np.std(maps[comp["arm"]], ddof=1) / math.sqrt(3)
        half = t2_quantile(1 - used) * standard_error
        assert (over["low"], over["high"]) == pytest.approx((over["mean"] - half, over["mean"] + half), rel=1e-9)
        half_95 = 4.3027 * standard_error  # the unadjusted interval stays beside it
        assert (over["low_95"], over["high_95"]) == pytest.approx((over["mean"] - half_95, over["mean"] + half_95))
    lines = [report.verdict_line(comp) for comp in comparisons]
    assert lines[0].startswith("Verdict at 95 %, Holm over m = 3 comparisons: a better than bce: mAP@0.5 "
                               "difference +0.0450, 98.33 % interval [")
    assert lines[0].endswith(f"(Student t over 3 paired seeds; p_Holm {3 * p['a']:.3f}).")
    assert all(line.startswith("Verdict at 95 %, Holm over m = 3 comparisons: no detectable difference between ")
               and ", 97.5 % interval [" in line for line in lines[1:])


def test_family_of_one_seed_uses_the_bootstrap_at_holms_levels():
    comparisons = [comparison(name, [m]) for name, m in (("a", 0.04), ("b", 0.5), ("c", 0.0))]
    # Evenly spaced resamples: the percentile curve is a line, zero at u0, p = 2 min(u0, 1 - u0).
    resampled = {(0, 11): np.linspace(-0.01, 0.09, 1001),  # u0 = 0.1: p 0.2
                 (1, 11): np.linspace(-0.001, 0.999, 1001),  # u0 = 0.001: p 0.002
                 (2, 11): np.linspace(-0.5, 0.5, 1001)}  # p 1
    family.adjust_over_family(comparisons, resampled)
    a, b, c = (comp["seeds"][0] for comp in comparisons)
    # sorted b 0.002 <= 0.05/3 (rejected), a 0.2 > 0.05/2 (stop), c after it
    assert (b["bootstrap_p_holm"], a["bootstrap_p_holm"], c["bootstrap_p_holm"]) == pytest.approx((0.006, 0.4, 1.0))
    assert (b["bootstrap_level"], a["bootstrap_level"], c["bootstrap_level"]) == pytest.approx((1 - 0.05 / 3,
                                                                                                0.975, 0.975))
    # a at 97.5 %: the 1.25 % and 98.75 % points of the line from -0.01 to 0.09
    assert (a["bootstrap_low"], a["bootstrap_high"]) == pytest.approx((-0.01 + 0.1 * 0.0125, -0.01 + 0.1 * 0.9875))
    assert (b["bootstrap_low"], b["bootstrap_high"]) == pytest.approx((-0.001 + 0.05 / 6, 0.999 - 0.05 / 6))
    assert a["bootstrap_95"] == [-1.0, 1.0] and "p_holm" not in comparisons[0]["over_seeds"]
    lines = [report.verdict_line(comp) for comp in comparisons]
    assert lines[1].startswith("Verdict at 95 %, Holm over m = 3 comparisons: b better than bce")
    assert "98.33 % interval" in lines[1] and "one seed" in lines[1] and lines[1].endswith("p_Holm 0.006).")
    assert "no detectable difference between a and bce" in lines[0] and "97.5 % interval" in lines[0]
    table = report.paired_table(comparisons, class_names=[])
    assert "p_Holm (m = 3)" in table.splitlines()[0] and "(98.33 %, p_Holm 0.006)" in table


def test_one_comparison_is_left_as_it_was():
    comparisons = [comparison("focal", [0.01, 0.03, -0.005])]
    before = json.dumps(comparisons)
    family.adjust_over_family(comparisons, {(0, s): np.zeros(3) for s in (11, 12, 13)})
    assert json.dumps(comparisons) == before
    assert report.verdict_line(comparisons[0]).startswith("Verdict at 95 %: no detectable difference between focal "
                                                          "and bce: mAP@0.5 difference +0.0117, 95 % interval [")


def test_forest_plot_has_one_row_per_arm(tmp_path, monkeypatch):
    comparisons = [comparison(name, values) for name, values in
                   (("focal", [0.01, 0.03, 0.02]), ("qfl", [0.04, 0.045, 0.05]), ("vfl", [-0.02, 0.0, 0.01]))]
    family.adjust_over_family(comparisons, {(i, 11 + k): np.zeros(5) for i in range(3) for k in range(3)})
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out_path: figures.append(fig))
    plots.plot_forest(comparisons=comparisons, out_path=tmp_path / "forest.png")
    (fig,) = figures
    ax = fig.axes[0]
    plots.plt.close(fig)
    labels = {tick.get_position()[1]: tick.get_text() for tick in ax.get_yticklabels()}
    assert labels == {2.0: "focal − bce", 1.0: "qfl − bce", 0.0: "vfl − bce"}  # the first at the top
    points = [collection.get_offsets() for collection in ax.collections]
    assert len(points) == 3
    for offsets, row, comp in zip(points, (2, 1, 0), comparisons):
        assert offsets[:, 0].tolist() == [s["map"] for s in comp["seeds"]] and set(offsets[:, 1]) == {row}
    lines = ax.get_lines()
    zero = [line for line in lines if list(line.get_xdata()) == [0, 0]]
    bars = [line for line in lines if len(line.get_xdata()) == 2 and line not in zero]  # the mean is one point
    assert len(zero) == 1 and len(bars) == 3
    for bar, row, comp in zip(bars, (2, 1, 0), comparisons):
        assert list(bar.get_xdata()) == [comp["over_seeds"]["low"], comp["over_seeds"]["high"]]
        assert list(bar.get_ydata()) == [row, row]
    means = [line for line in lines if line.get_marker() == "D"]
    assert [line.get_xdata()[0] for line in means] == [c["over_seeds"]["mean"] for c in comparisons]
    assert [text.get_text() for text in ax.texts] == [f"{100 * c['over_seeds']['level']:.4g} %" for c in comparisons]
    assert "Holm over m = 3" in ax.get_title()


def shapes_argv(root, *extra: str) -> list[str]:
    return shapes_compare_argv(root, "--config=configs/bccd_tiny.toml", "--input_shape=[32,32]", *extra)


def test_family_plans_every_named_arm_against_bce_for_commands_and_devices(tmp_path, monkeypatch):
    write_shapes_voc(tmp_path, images=8)
    argv = shapes_argv(tmp_path, "--family=True", "--seeds=2")
    compare_focal.main([*argv, "--print_commands=True"])
    commands = (tmp_path / "out" / "commands.txt").read_text().splitlines()
    names = [f"{arm}__seed{seed}" for arm in ("bce", "focal", "focal_cls", "qfl", "vfl", "iou_obj")
             for seed in (11, 12)]
    assert [c.split("--config=")[1].split("/")[-2] for c in commands] == names
    for name in names:  # each run folder holds its preset's loss settings and its seed
        stored = json.loads((tmp_path / "out" / "runs" / name / "run_config.json").read_text())
        preset = experiment.ARM_PRESETS[name.split("__")[0]]
        assert {k: stored[k] for k in preset} == preset and stored["seed"] == int(name[-2:])
    launched = []

    def record(*, jobs, parallel, progress, devices):
        launched.append(([run.name for run, _ in jobs], devices))
        raise KeyboardInterrupt  # stop before evaluating runs that were not trained

    monkeypatch.setattr(experiment, "train_in_subprocesses", record)
    with pytest.raises(KeyboardInterrupt):
        compare_focal.main([*argv, "--devices=0,1"])
    assert launched == [(names, ["0", "1"])]
    for other in ("--grid=True", "--arms=['bce','qfl']"):
        with pytest.raises(ConfigError, match="--family=True trains every named arm against bce"):
            compare_focal.main([*argv, other])


def test_family_comparisons_pair_every_arm_with_bce_by_seed():
    runs = experiment.plan_runs(arms=family.planned_arms(cfg={"family": True, "grid": False, "arms": []},
                                                         default_arms=[]), sweep=[{}], seeds=[11, 12])
    assert [(r.arm, r.seed) for r in runs] == [(arm, seed) for arm in experiment.ARM_PRESETS for seed in (11, 12)]
    gt = {f"img{i}": [GTBox("a", 0, 0, 10, 10)] for i in range(4)}
    records, evaluations = {}, {}
    for k, run in enumerate(runs):  # a detection on every image, a run-dependent share of them right
        dets = {f"img{i}": [DetBox("a", 0.9, *((0, 0, 10, 10) if (i + k) % 3 else (50, 50, 60, 60)))]
                for i in range(4)}
        records[run.name] = image_records(gt=gt, dets=dets, class_names=["a"])
        evaluations[run.name] = {"map": 0.1 * k, "per_class_ap": {"a": 0.1 * k},
                                 "coco": {"APs": -1, "APm": -1, "APl": 0.1 * k}}
    comparisons = report.paired_comparisons(evaluations=evaluations, runs=runs, records=records, resamples=50, seed=0)
    assert [c["arm"] for c in comparisons] == ["focal", "focal_cls", "qfl", "vfl", "iou_obj"]
    assert all(c["reference"] == "bce" and c["family"] == 5 for c in comparisons)
    for index, comp in enumerate(comparisons, start=1):  # arm k's runs follow bce's two: map 0.1 x (2k + seed)
        assert [s["seed"] for s in comp["seeds"]] == [11, 12]
        assert [s["map"] for s in comp["seeds"]] == pytest.approx([0.2 * index, 0.2 * index])
        assert comp["over_seeds"]["n"] == 2 and "p_holm" in comp["over_seeds"]
        assert all("bootstrap_p_holm" in s and s["bootstrap_family"] == 5 for s in comp["seeds"])
