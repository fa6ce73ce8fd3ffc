"""Bias Loss against hand-computed values and SPEC section 1."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from biasloss import BiasLoss, bias_loss, bias_weights, create_loss, feature_variance
from biasloss.losses import scale_variance

# Three samples, four feature values each: variances 0, 1/3 and 4/3 (unbiased, n - 1 = 3).
FEATURES = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.0, 2.0, 0.0, 2.0]])
LOGITS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 3.0]])
TARGET = torch.tensor([0, 0, 2])


def _ce(row, k):
    return math.log(sum(math.exp(v) for v in row)) - row[k]


CE = [_ce(LOGITS[i].tolist(), int(TARGET[i])) for i in range(3)]
SCALED = [0.0, 0.25, 1.0]  # (v - 0) / (4/3 - 0)


def _z(s, alpha=0.3, beta=0.3):
    return math.exp(alpha * s) - beta


def test_feature_variance_hand_computed():
    v = feature_variance(FEATURES.view(3, 1, 2, 2))
    assert v.dtype == torch.float32 and v.shape == (3,)
    torch.testing.assert_close(v, torch.tensor([0.0, 1 / 3, 4 / 3]))


def test_feature_variance_is_detached_and_layout_free():
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    v = feature_variance(x)
    assert not v.requires_grad
    cl = x.detach().to(memory_format=torch.channels_last)
    torch.testing.assert_close(feature_variance(cl), v)
    torch.testing.assert_close(v, x.detach().flatten(1).var(dim=1))


def test_bias_loss_hand_computed():
    expected = sum(_z(s) * ce for s, ce in zip(SCALED, CE)) / 3
    loss = bias_loss(LOGITS, TARGET, FEATURES)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_weights_hand_computed_and_within_spec_range():
    w = bias_weights(FEATURES)
    torch.testing.assert_close(w, torch.tensor([_z(s) for s in SCALED]))
    # SPEC: at alpha = beta = 0.3 in batch mode the weights lie in [0.7, 1.05].
    w = bias_weights(torch.randn(64, 16, 3, 3) * torch.rand(64, 1, 1, 1) * 5)
    assert w.min() >= 0.7 - 1e-6 and w.max() <= math.exp(0.3) - 0.3 + 1e-6


def test_reductions():
    per = bias_loss(LOGITS, TARGET, FEATURES, reduction="none")
    torch.testing.assert_close(per, torch.tensor([_z(s) * ce for s, ce in zip(SCALED, CE)]))
    torch.testing.assert_close(bias_loss(LOGITS, TARGET, FEATURES, reduction="sum"), per.sum())
    torch.testing.assert_close(bias_loss(LOGITS, TARGET, FEATURES), per.mean())


def test_clamp_bounds_weights_and_none_is_unclamped():
    kwargs = dict(alpha=1.6, beta=0.0)
    w = bias_weights(FEATURES, clamp=(0.5, 1.5), **kwargs)
    assert w.min() >= 0.5 and w.max() <= 1.5
    torch.testing.assert_close(w, torch.tensor([1.0, math.exp(0.4), 1.5]))
    w = bias_weights(FEATURES, clamp=(0.5, 1.5), alpha=0.0, beta=0.8)  # exp(0) - 0.8 = 0.2 -> 0.5
    torch.testing.assert_close(w, torch.full((3,), 0.5))
    # clamp=None: the authors' code, exp(alpha * v) - beta unbounded.
    w = bias_weights(FEATURES, clamp=None, **kwargs)
    torch.testing.assert_close(w, torch.tensor([1.0, math.exp(0.4), math.exp(1.6)]))
    loss = bias_loss(LOGITS, TARGET, FEATURES, clamp=None, **kwargs)
    expected = sum(math.exp(1.6 * s) * ce for s, ce in zip(SCALED, CE)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_matches_cross_entropy_when_weights_are_one():
    # alpha = 0, beta = 0 -> z = 1, so the Bias Loss is plain cross-entropy.
    for ls in (0.0, 0.1):
        loss = bias_loss(LOGITS, TARGET, FEATURES, alpha=0.0, beta=0.0, label_smoothing=ls)
        torch.testing.assert_close(loss, F.cross_entropy(LOGITS, TARGET, label_smoothing=ls))


def test_soft_one_hot_targets_equal_hard_targets():
    soft = F.one_hot(TARGET, 3).float()
    torch.testing.assert_close(bias_loss(LOGITS, soft, FEATURES), bias_loss(LOGITS, TARGET, FEATURES))
    mixed = 0.7 * soft + 0.3 * F.one_hot(torch.tensor([1, 2, 0]), 3).float()
    expected = (
        torch.tensor([_z(s) for s in SCALED]) * -(mixed * LOGITS.log_softmax(1)).sum(1)
    ).mean()
    torch.testing.assert_close(bias_loss(LOGITS, mixed, FEATURES), expected)


@pytest.mark.parametrize("features", [torch.randn(1, 8, 2, 2), torch.ones(4, 8, 2, 2)])
def test_batch_of_one_or_equal_variances_is_finite(features):
    logits = torch.randn(features.shape[0], 5)
    target = torch.zeros(features.shape[0], dtype=torch.long)
    loss = bias_loss(logits, target, features)
    assert torch.isfinite(loss)
    # every scaled variance is 0 -> weight exp(0) - beta = 0.7
    torch.testing.assert_close(loss, 0.7 * F.cross_entropy(logits, target))
    criterion = BiasLoss(scaling="running_min")
    assert torch.isfinite(criterion(logits, target, features))


def test_gradcheck_float64():
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 0])
    features = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: bias_loss(z, target, features), (logits,))
    soft = torch.softmax(torch.randn(5, 4, dtype=torch.float64), 1)
    assert torch.autograd.gradcheck(lambda z: bias_loss(z, soft, features, label_smoothing=0.1), (logits,))


def test_no_gradient_through_the_weights():
    logits = torch.randn(4, 3, requires_grad=True)
    features = torch.randn(4, 6, 2, 2, requires_grad=True)
    bias_loss(logits, torch.tensor([0, 1, 2, 0]), features).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert features.grad is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_features_give_float32_result(dtype):
    torch.manual_seed(0)
    logits, target = torch.randn(16, 10), torch.randint(0, 10, (16,))
    features = torch.randn(16, 32, 4, 4) * torch.linspace(0.5, 2.0, 16).view(16, 1, 1, 1)
    low = bias_loss(logits.to(dtype), target, features.to(dtype))
    assert low.dtype == torch.float32
    # the same as float32 on the rounded inputs...
    ref = bias_loss(logits.to(dtype).float(), target, features.to(dtype).float())
    torch.testing.assert_close(low, ref)
    # ...and within the inputs' rounding of the full-precision loss
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(low, bias_loss(logits, target, features), rtol=tol, atol=tol)


def test_autocast_cpu_bfloat16():
    model = torch.nn.Conv2d(3, 8, 3)
    x = torch.randn(4, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model(x)
        logits = features.mean((2, 3))
        loss = bias_loss(logits, torch.tensor([0, 1, 2, 3]), features)
    assert features.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert model.weight.grad is not None


def test_running_min_over_a_sequence_of_batches():
    criterion = BiasLoss(scaling="running_min", clamp=None)
    assert criterion.running_min.item() == 1e5
    logits, target = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    # batches of two samples whose variances are (a, b)
    def batch(a, b):
        return torch.tensor([[0.0, 2 * math.sqrt(a)], [0.0, 2 * math.sqrt(b)]])  # var = 2 * x

    seen_min = math.inf
    for a, b in [(2.0, 3.0), (1.0, 5.0), (4.0, 6.0), (0.5, 0.5)]:
        criterion(logits, target, batch(a, b))
        va, vb = 2 * a, 2 * b
        seen_min = min(seen_min, va, vb)
        assert criterion.running_min.item() == pytest.approx(seen_min)
        span = vb - va
        expected = [0.0, 0.0] if span == 0 else [(va - seen_min) / span, (vb - seen_min) / span]
        expected_w = [math.exp(0.3 * s) - 0.3 for s in expected]
        torch.testing.assert_close(criterion.last_weights, torch.tensor(expected_w))
    # third batch: numerator uses the running minimum (2.0), so scaled values exceed 1
    assert criterion.running_min.item() == pytest.approx(1.0)


def test_running_min_frozen_in_eval_and_saved_in_state_dict():
    criterion = BiasLoss(scaling="running_min")
    criterion(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.randn(4, 5) * 3)
    saved = criterion.running_min.item()
    assert saved < 1e5
    criterion.eval()
    criterion(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.randn(4, 5) * 1e-3)
    assert criterion.running_min.item() == saved
    restored = BiasLoss(scaling="running_min")
    restored.load_state_dict(criterion.state_dict())
    assert restored.running_min.item() == saved
    assert "running_min" in criterion.state_dict()


def test_module_equals_functional_in_batch_mode():
    torch.manual_seed(1)
    logits, target, features = torch.randn(8, 5), torch.randint(0, 5, (8,)), torch.randn(8, 4, 3, 3)
    features = features * torch.rand(8, 1, 1, 1)
    criterion = BiasLoss(alpha=0.5, beta=0.2, label_smoothing=0.1)
    torch.testing.assert_close(
        criterion(logits, target, features),
        bias_loss(logits, target, features, alpha=0.5, beta=0.2, label_smoothing=0.1),
    )


def test_create_loss_by_name():
    logits, target, features = torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.randn(4, 2, 2, 2)
    for name in ("ce", "focal", "bias"):
        assert torch.isfinite(create_loss(name)(logits, target, features))
    torch.testing.assert_close(create_loss("ce")(logits, target, None), F.cross_entropy(logits, target))
    torch.testing.assert_close(
        create_loss("focal", gamma=0.0)(logits, target, None), F.cross_entropy(logits, target)
    )
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("hinge")


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: bias_loss(LOGITS, TARGET, FEATURES[:2]), ValueError, "batch size"),
        (lambda: bias_loss(LOGITS, TARGET[:2], FEATURES), ValueError, "batch size"),
        (lambda: BiasLoss(label_smoothing=1.5), ValueError, "label_smoothing"),
        (lambda: bias_loss(LOGITS, TARGET, FEATURES[0]), ValueError, "at least one feature dim"),
        (lambda: bias_loss(LOGITS, TARGET, FEATURES[:, :1]), ValueError, "at least 2 values"),
        (lambda: bias_loss(LOGITS, TARGET, FEATURES, reduction="avg"), ValueError, "reduction"),
        (lambda: bias_loss(LOGITS, TARGET, FEATURES, clamp=(1.5, 0.5)), ValueError, "low <= high"),
        (lambda: bias_loss(LOGITS, TARGET, FEATURES, clamp=(0.5,)), TypeError, "clamp"),
        (lambda: bias_loss(LOGITS, TARGET, FEATURES, alpha="0.3"), TypeError, "alpha"),
        (lambda: bias_loss(LOGITS, TARGET, FEATURES, beta=float("nan")), ValueError, "beta"),
        (lambda: bias_loss(LOGITS, TARGET, FEATURES.long()), TypeError, "floating"),
        (lambda: bias_loss(LOGITS, TARGET, FEATURES.numpy()), TypeError, "features"),
        (lambda: bias_loss(LOGITS, TARGET, FEATURES, sync=True), ValueError, "process group"),
        (lambda: BiasLoss(scaling="global"), ValueError, "scaling"),
        (lambda: BiasLoss(reduction="avg"), ValueError, "reduction"),
        (lambda: BiasLoss(clamp=(2.0, 1.0)), ValueError, "low <= high"),
        (lambda: BiasLoss(sync="yes"), TypeError, "sync"),
        (lambda: BiasLoss()(LOGITS, TARGET, FEATURES[:1]), ValueError, "batch size"),
        (lambda: bias_weights(torch.zeros(0, 4)), ValueError, "empty batch"),
        (lambda: BiasLoss().weights(torch.zeros(0, 4)), ValueError, "empty batch"),
        (lambda: scale_variance(torch.zeros(0)), ValueError, "empty batch"),
        (lambda: bias_loss(LOGITS, TARGET, FEATURES, label_smoothing=1.5), ValueError, "label_smoothing"),
        (lambda: BiasLoss()(LOGITS, TARGET, FEATURES.long()), TypeError, "floating"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_weight_function_by_hand():
    import math

    from biasloss.losses import weight_function

    v = torch.tensor([0.0, 0.5, 1.0])
    # eq. 3 at the paper's alpha = beta = 0.3: 1 - 0.3, e^0.15 - 0.3, e^0.3 - 0.3
    expected = [0.7, math.exp(0.15) - 0.3, math.exp(0.3) - 0.3]
    assert weight_function(v, 0.3, 0.3, None).tolist() == pytest.approx(expected)
    # the default clamp [0.5, 1.5] never binds on scaled variances in [0, 1] at these values ...
    assert weight_function(v, 0.3, 0.3, (0.5, 1.5)).tolist() == pytest.approx(expected)
    # ... but does at alpha = 1: e^1 - 0.3 = 2.418 -> 1.5
    assert weight_function(v, 1.0, 0.3, (0.5, 1.5)).tolist() == pytest.approx([0.7, math.exp(0.5) - 0.3, 1.5])


def test_clamp_option_reads_the_command_line_value():
    from biasloss.losses import check_clamp, clamp_option

    assert clamp_option("none") is None  # --no-clamp
    assert clamp_option(None) == (0.5, 1.5)  # a run from before --clamp: the paper's
    assert clamp_option([0.4, 2]) == (0.4, 2.0)
    with pytest.raises(ValueError, match="low <= high"):
        clamp_option([2.0, 1.0])
    with pytest.raises(TypeError, match="pair"):
        check_clamp([1.0])


def test_rank_scaling_by_hand():
    from biasloss.losses import rank_scale

    # variances 5, 1, 3, 3: ranks 3, 0, 1.5, 1.5 of 4 samples -> /3
    variance = torch.tensor([5.0, 1.0, 3.0, 3.0])
    torch.testing.assert_close(rank_scale(variance), torch.tensor([1.0, 0.0, 0.5, 0.5]))
    assert rank_scale(torch.tensor([2.0])).tolist() == [0.0]  # a batch of one: 0, not 0/0
    # one outlier does not squash the others, as min-max scaling does
    features = torch.stack([torch.arange(8.0).view(2, 2, 2) * s for s in (1.0, 1.1, 1.2, 100.0)])
    weights = BiasLoss(scaling="rank").weights(features)
    torch.testing.assert_close(weights, torch.exp(0.3 * torch.tensor([0.0, 1 / 3, 2 / 3, 1.0])) - 0.3)
    minmax = BiasLoss().weights(features)
    assert (minmax[:3] < 0.701).all() and (weights[:3] - 0.7).abs().max() > 0.1


def test_weight_stats_by_hand_and_only_when_recording():
    from biasloss.losses import weight_stats

    w = torch.tensor([0.5, 0.7, 0.7, 0.9, 1.5])
    stats = weight_stats(w, torch.tensor([True, True, True, False, False]), (0.5, 1.5))
    assert stats["z_mean"] == pytest.approx(0.86)
    assert stats["z_std"] == pytest.approx(math.sqrt(((w - 0.86) ** 2).mean().item()), abs=1e-6)
    assert stats["z_p50"] == pytest.approx(0.7) and stats["z_p10"] == pytest.approx(0.58)  # linear interpolation
    assert stats["z_p99"] == pytest.approx(1.476)
    assert (stats["z_near_min"], stats["z_at_low"], stats["z_at_high"]) == pytest.approx((0.6, 0.2, 0.2))
    assert "z_at_low" not in weight_stats(w)  # no clamp, no bound

    criterion = BiasLoss(alpha=1.0, beta=0.0, clamp=(0.5, 1.5))
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    features = torch.randn(4, 2, 2, 2) * torch.tensor([1.0, 1.0, 2.0, 9.0]).view(4, 1, 1, 1)
    criterion(logits, target, features)
    assert criterion.pop_weight_stats() is None  # not recording: nothing kept (no memory growth)
    criterion.record_weights = True
    criterion(logits, target, features)
    criterion(logits, target, features[[3, 2, 1, 0]])
    criterion.eval()
    criterion(logits, target, features)  # evaluation batches are not counted
    stats = criterion.pop_weight_stats()
    weights = BiasLoss(alpha=1.0, beta=0.0, clamp=(0.5, 1.5)).weights(features)
    assert stats["z_mean"] == pytest.approx(weights.mean().item(), abs=1e-6)
    assert stats["z_at_high"] == pytest.approx((weights >= 1.5).float().mean().item())
    assert stats["z_near_min"] == pytest.approx(((weights <= weights.min() + 0.01).float().mean()).item())
    assert criterion.pop_weight_stats() is None  # popped


@pytest.mark.parametrize("scaling", ["batch", "running_min", "rank"])
def test_torch_compile_fullgraph(scaling):
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    features = torch.randn(8, 4, 3, 3, generator=g) * torch.linspace(0.1, 3.0, 8).view(8, 1, 1, 1)
    eager, compiled = BiasLoss(scaling=scaling), BiasLoss(scaling=scaling)
    compiled.record_weights = eager.record_weights = True
    loss = torch.compile(compiled, fullgraph=True)(logits, target, features)
    torch.testing.assert_close(loss, eager(logits, target, features))
    assert compiled.pop_weight_stats() == eager.pop_weight_stats()
