"""ModelEMA against averages worked out by hand on a toy model with two weights and two buffers."""
import math

import pytest
import torch
from torch import nn

from utils.train.ema import ModelEMA

# With tau = 1 / ln 2, exp(-t / tau) = 2^-t, so decay 0.5 warms up as d_t = 0.5 * (1 - 2^-t):
# d_1 = 0.25, d_2 = 0.375, d_3 = 0.4375 (exact binary fractions).
TAU_HALVING = 1.0 / math.log(2.0)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, 2.0]))
        self.register_buffer("running", torch.tensor([4.0]))  # stands for a BatchNorm running mean
        self.register_buffer("count", torch.tensor(0))  # stands for num_batches_tracked

    def set(self, weight: list[float], running: float, count: int) -> None:
        with torch.no_grad():
            self.weight.copy_(torch.tensor(weight))
            self.running.fill_(running)
            self.count.fill_(count)


def test_decay_warms_up_as_the_formula_says():
    ema = ModelEMA(Toy(), decay=0.9999, tau=2000.0)
    assert ema.decay_at(0) == 0.0
    assert ema.decay_at(2000) == pytest.approx(0.9999 * 0.6321205588, abs=1e-9)  # 1 - e^-1 = 0.6321205588
    assert ema.decay_at(20000) == pytest.approx(0.9999 * (1 - 4.539993e-5), abs=1e-9)  # e^-10 = 4.539993e-5
    halving = ModelEMA(Toy(), decay=0.5, tau=TAU_HALVING)
    assert [halving.decay_at(t) for t in (1, 2, 3)] == pytest.approx([0.25, 0.375, 0.4375], abs=1e-12)


def test_average_of_weights_and_buffers_by_hand():
    model = Toy()
    ema = ModelEMA(model, decay=0.5, tau=TAU_HALVING)
    model.set([3.0, 6.0], running=8.0, count=1)
    ema.update(model)  # d_1 = 0.25: 0.25 * [1, 2] + 0.75 * [3, 6] = [2.5, 5.0]; running 0.25 * 4 + 0.75 * 8 = 7
    assert ema.module.weight.tolist() == pytest.approx([2.5, 5.0], abs=1e-6)
    assert ema.module.running.item() == pytest.approx(7.0, abs=1e-6)
    assert ema.module.count.item() == 1  # integer buffers are copied
    model.set([0.0, 2.0], running=0.0, count=2)
    ema.update(model)  # d_2 = 0.375: [0.375 * 2.5, 0.375 * 5 + 0.625 * 2] = [0.9375, 3.125]; running 0.375 * 7
    assert ema.module.weight.tolist() == pytest.approx([0.9375, 3.125], abs=1e-6)
    assert ema.module.running.item() == pytest.approx(2.625, abs=1e-6)
    assert ema.module.count.item() == 2 and ema.updates == 2
    assert model.weight.tolist() == [0.0, 2.0]  # the model itself is untouched
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_unchanged_weights_stay_bit_exact():
    """A frozen layer must not drift in the average through rounding (0.1 is not a binary fraction)."""
    model = Toy()
    model.set([0.1, -0.3], running=0.7, count=0)
    ema = ModelEMA(model, decay=0.9, tau=3.0)
    before = ema.module.weight.detach().clone()
    for _ in range(5):
        ema.update(model)
    assert torch.equal(ema.module.weight, before) and torch.equal(ema.module.weight, model.weight)


def test_resumed_average_equals_the_uninterrupted_one():
    steps = [([3.0, 6.0], 8.0, 1), ([0.0, 2.0], 0.0, 2), ([1.0, 1.0], 2.0, 3)]
    model = Toy()
    straight = ModelEMA(model, decay=0.5, tau=TAU_HALVING)
    for weight, running, count in steps:
        model.set(weight, running=running, count=count)
        straight.update(model)
    # By hand, step 3 (d_3 = 0.4375): 0.4375 * [0.9375, 3.125] + 0.5625 * [1, 1] = [0.97265625, 1.9296875]
    assert straight.module.weight.tolist() == pytest.approx([0.97265625, 1.9296875], abs=1e-6)

    model = Toy()
    first = ModelEMA(model, decay=0.5, tau=TAU_HALVING)
    for weight, running, count in steps[:2]:
        model.set(weight, running=running, count=count)
        first.update(model)
    saved_weights = {k: v.clone() for k, v in first.module.state_dict().items()}
    saved_state = first.state_dict()
    resumed = ModelEMA(Toy(), decay=0.5, tau=TAU_HALVING)
    resumed.load(weights=saved_weights, state=saved_state)
    assert resumed.updates == 2
    weight, running, count = steps[2]
    model.set(weight, running=running, count=count)
    resumed.update(model)
    for key, value in straight.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[key], value), key


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(Toy(), decay=1.0, tau=10.0)
    with pytest.raises(ValueError, match="tau"):
        ModelEMA(Toy(), decay=0.9, tau=0.0)
