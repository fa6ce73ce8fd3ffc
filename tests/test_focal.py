"""Softmax focal loss, the cross-entropy module and the shared argument checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from biasloss.losses import CrossEntropyLoss, FocalLoss, create_loss, focal_loss

# Logits chosen so that the softmax is exact: row 0 -> p = (1/4, 1/4, 1/2), row 1 -> (3/5, 1/5, 1/5).
LOGITS = torch.tensor([[0.0, 0.0, math.log(2.0)], [math.log(3.0), 0.0, 0.0]])
P = [[0.25, 0.25, 0.5], [0.6, 0.2, 0.2]]
TARGET = torch.tensor([2, 1])


def _fl(q_row, p_row, gamma, alpha=(1.0, 1.0, 1.0)):
    """-sum_k alpha_k q_k (1 - p_k)^gamma log p_k, written out with floats."""
    return -sum(a * q * (1.0 - p) ** gamma * math.log(p) for a, q, p in zip(alpha, q_row, p_row))


def test_hand_computed_gamma_2():
    # sample 0: p_t = 1/2 -> (1/2)^2 * ln 2; sample 1: p_t = 1/5 -> (4/5)^2 * ln 5
    expected = torch.tensor([0.25 * math.log(2.0), 0.64 * math.log(5.0)])
    loss = focal_loss(LOGITS, TARGET, gamma=2.0, reduction="none")
    assert loss.dtype == torch.float32 and loss.shape == (2,)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(focal_loss(LOGITS, TARGET), expected.mean())
    torch.testing.assert_close(focal_loss(LOGITS, TARGET, reduction="sum"), expected.sum())


def test_hand_computed_fractional_gamma_and_alpha():
    expected = torch.tensor([0.5**0.5 * math.log(2.0), 0.8**0.5 * math.log(5.0)])
    torch.testing.assert_close(focal_loss(LOGITS, TARGET, gamma=0.5, reduction="none"), expected)
    # per-class alpha weights the target class's term: alpha_2 = 3 for sample 0, alpha_1 = 2 for sample 1
    alpha = torch.tensor([1.0, 2.0, 3.0])
    loss = focal_loss(LOGITS, TARGET, gamma=0.5, alpha=alpha, reduction="none")
    torch.testing.assert_close(loss, expected * torch.tensor([3.0, 2.0]))
    # mean stays a plain mean over the batch (not divided by the sum of the weights)
    weighted = expected * torch.tensor([3.0, 2.0])
    torch.testing.assert_close(focal_loss(LOGITS, TARGET, gamma=0.5, alpha=alpha), weighted.mean())
    # a scalar alpha multiplies the loss
    for scalar in (0.25, torch.tensor(0.25)):
        loss = focal_loss(LOGITS, TARGET, gamma=0.5, alpha=scalar, reduction="none")
        torch.testing.assert_close(loss, 0.25 * expected)


def test_hand_computed_label_smoothing_and_soft_targets():
    ls = 0.3  # q = one_hot * 0.7 + 0.1
    q = [[0.1, 0.1, 0.8], [0.1, 0.8, 0.1]]
    expected = torch.tensor([_fl(q[i], P[i], 2.0) for i in range(2)])
    torch.testing.assert_close(focal_loss(LOGITS, TARGET, label_smoothing=ls, reduction="none"), expected)

    soft = torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.25, 0.75]])
    expected = torch.tensor([_fl(soft[i].tolist(), P[i], 2.0) for i in range(2)])
    torch.testing.assert_close(focal_loss(LOGITS, soft, reduction="none"), expected)
    # PyTorch's semantics: label smoothing applies to given probabilities as well
    smoothed = soft * (1 - ls) + ls / 3
    expected = torch.tensor([_fl(smoothed[i].tolist(), P[i], 2.0) for i in range(2)])
    torch.testing.assert_close(focal_loss(LOGITS, soft, label_smoothing=ls, reduction="none"), expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ls", [0.0, 0.1, 1.0])
def test_gamma_0_is_cross_entropy(reduction, ls):
    torch.manual_seed(0)
    logits = torch.randn(8, 5) * 3
    target = torch.randint(0, 5, (8,))
    soft = torch.softmax(torch.randn(8, 5), 1)
    for t in (target, soft):
        expected = F.cross_entropy(logits, t, reduction=reduction, label_smoothing=ls)
        loss = focal_loss(logits, t, gamma=0.0, reduction=reduction, label_smoothing=ls)
        assert torch.equal(loss, expected)
        assert torch.equal(CrossEntropyLoss(reduction, ls)(logits, t, None), expected)
        # the general path (taken with any alpha) agrees too
        general = focal_loss(logits, t, gamma=0.0, alpha=1.0, reduction=reduction, label_smoothing=ls)
        torch.testing.assert_close(general, expected)
        torch.testing.assert_close(
            create_loss("ce", reduction="none", label_smoothing=ls)(logits, t, None),
            F.cross_entropy(logits, t, reduction="none", label_smoothing=ls),
        )


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_soft_one_hot_equals_hard_targets(gamma, ls):
    torch.manual_seed(1)
    logits = torch.randn(6, 4)
    target = torch.randint(0, 4, (6,))
    soft = F.one_hot(target, 4).float()
    alpha = torch.tensor([0.5, 1.0, 1.5, 2.0])
    torch.testing.assert_close(
        focal_loss(logits, soft, gamma=gamma, label_smoothing=ls, alpha=alpha, reduction="none"),
        focal_loss(logits, target, gamma=gamma, label_smoothing=ls, alpha=alpha, reduction="none"),
    )


def test_alpha_ones_is_no_alpha_and_alpha_scales_classes():
    torch.manual_seed(2)
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    plain = focal_loss(logits, target, reduction="none")
    torch.testing.assert_close(focal_loss(logits, target, alpha=torch.ones(3), reduction="none"), plain)
    alpha = torch.tensor([0.25, 1.0, 4.0])
    torch.testing.assert_close(focal_loss(logits, target, alpha=alpha, reduction="none"), plain * alpha[target])


def test_module_matches_function_and_ignores_features():
    torch.manual_seed(3)
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    alpha = torch.tensor([1.0, 2.0, 0.5])
    criterion = FocalLoss(gamma=1.5, alpha=alpha, reduction="sum", label_smoothing=0.1)
    expected = focal_loss(logits, target, gamma=1.5, alpha=alpha, reduction="sum", label_smoothing=0.1)
    torch.testing.assert_close(criterion(logits, target), expected)
    torch.testing.assert_close(criterion(logits, target, torch.randn(4, 8, 2, 2)), expected)
    # the class weights follow .to() but stay out of the state dict
    assert criterion.state_dict() == {}
    assert criterion.to(torch.float64).alpha.dtype == torch.float64
    assert "gamma=1.5" in repr(criterion)
    assert FocalLoss(alpha=0.5).alpha == 0.5 and FocalLoss().alpha is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_give_float32(dtype):
    torch.manual_seed(4)
    logits, target = torch.randn(5, 7).to(dtype), torch.randint(0, 7, (5,))
    for criterion in (FocalLoss(), CrossEntropyLoss(), FocalLoss(gamma=0.0)):
        loss = criterion(logits, target)
        assert loss.dtype == torch.float32
    torch.testing.assert_close(focal_loss(logits, target), focal_loss(logits.float(), target))
    assert create_loss("ce", reduction="none")(logits, target, None).dtype == torch.float32


def test_gradcheck_float64():
    torch.manual_seed(5)
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 0])
    soft = torch.softmax(torch.randn(5, 4, dtype=torch.float64), 1)
    alpha = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    assert focal_loss(logits, target).dtype == torch.float64
    for gamma in (2.0, 0.5):
        assert torch.autograd.gradcheck(lambda z: focal_loss(z, target, gamma=gamma), (logits,))
        assert torch.autograd.gradcheck(
            lambda z: focal_loss(z, soft, gamma=gamma, alpha=alpha, label_smoothing=0.1), (logits,)
        )


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extreme_logits_are_finite(gamma, dtype):
    # p == 1 exactly for the confident, correct rows: (1 - p)^gamma at 0 must not give NaN gradients
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 1e4]])
    if dtype == torch.float16:
        logits = logits.clamp(-6e4, 6e4) * 6
    logits = logits.to(dtype).requires_grad_()
    for target in (torch.tensor([0, 0, 2]), torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0, 0, 1.0]])):
        for ls in (0.0, 0.1):
            loss = focal_loss(logits, target, gamma=gamma, label_smoothing=ls)
            (grad,) = torch.autograd.grad(loss, logits)
            assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # a correct, certain prediction costs nothing (without label smoothing)
    assert focal_loss(logits[2:], torch.tensor([2]), gamma=gamma).item() == 0.0


def test_minus_inf_logit_of_another_class_is_finite():
    logits = torch.tensor([[0.0, float("-inf"), 1.0]], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([0]), gamma=2.0)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_accepted_inputs_and_reductions():
    # class indices and (float64) probabilities are both taken; mean and sum reduce the per-sample losses
    for name in ("ce", "focal"):
        per = create_loss(name, reduction="none")(LOGITS, TARGET, None)
        assert per.shape == (2,)
        torch.testing.assert_close(create_loss(name, reduction="mean")(LOGITS, TARGET, None), per.mean())
        torch.testing.assert_close(create_loss(name, reduction="sum")(LOGITS, TARGET, None), per.sum())
        soft = create_loss(name, reduction="none")(LOGITS, torch.rand(2, 3, dtype=torch.float64), None)
        assert soft.shape == (2,) and torch.isfinite(soft).all()
        with pytest.raises(ValueError, match="'mean', 'sum', 'none'"):
            create_loss(name, reduction="avg")


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: focal_loss(LOGITS[0], TARGET[:1]), ValueError, "2-D"),
        (lambda: focal_loss(LOGITS.view(2, 3, 1), TARGET), ValueError, "2-D"),
        (lambda: focal_loss(LOGITS.long(), TARGET), TypeError, "floating"),
        (lambda: focal_loss(LOGITS[:0], TARGET[:0]), ValueError, "empty batch"),
        (lambda: focal_loss(LOGITS.numpy(), TARGET), TypeError, "logits"),
        (lambda: focal_loss(LOGITS, [2, 1]), TypeError, "target"),
        (lambda: focal_loss(LOGITS, TARGET[:1]), ValueError, "batch size"),
        (lambda: focal_loss(LOGITS, torch.zeros(3, 3)), ValueError, "batch size"),
        (lambda: focal_loss(LOGITS, TARGET.float()), TypeError, "integer"),
        (lambda: focal_loss(LOGITS, TARGET.bool()), TypeError, "integer"),
        (lambda: focal_loss(LOGITS, torch.zeros(2, 3, dtype=torch.long)), TypeError, "floating"),
        (lambda: focal_loss(LOGITS, torch.zeros(2, 4)), ValueError, "one column per class"),
        (lambda: focal_loss(LOGITS, torch.zeros(2, 3, 1)), ValueError, "target"),
        (lambda: focal_loss(LOGITS, TARGET, reduction="avg"), ValueError, "reduction must be one of"),
        (lambda: focal_loss(LOGITS, TARGET, reduction=None), ValueError, "reduction"),
        (lambda: focal_loss(LOGITS, TARGET, gamma=-1.0), ValueError, "gamma"),
        (lambda: focal_loss(LOGITS, TARGET, gamma=float("nan")), ValueError, "gamma"),
        (lambda: focal_loss(LOGITS, TARGET, gamma="2"), TypeError, "gamma"),
        (lambda: focal_loss(LOGITS, TARGET, label_smoothing=-0.1), ValueError, "label_smoothing"),
        (lambda: focal_loss(LOGITS, TARGET, label_smoothing=1.5), ValueError, "label_smoothing"),
        (lambda: focal_loss(LOGITS, TARGET, alpha=torch.ones(4)), ValueError, "one weight per class"),
        (lambda: focal_loss(LOGITS, TARGET, alpha=torch.ones(3, 1)), ValueError, "alpha"),
        (lambda: focal_loss(LOGITS, TARGET, alpha="x"), TypeError, "alpha"),
        (lambda: FocalLoss(gamma=-0.5), ValueError, "gamma"),
        (lambda: FocalLoss(reduction="batchmean"), ValueError, "reduction"),
        (lambda: FocalLoss(label_smoothing=2.0), ValueError, "label_smoothing"),
        (lambda: FocalLoss()(LOGITS, TARGET[:1]), ValueError, "batch size"),
        (lambda: CrossEntropyLoss(reduction="avg"), ValueError, "reduction"),
        (lambda: CrossEntropyLoss(label_smoothing=-1.0), ValueError, "label_smoothing"),
        (lambda: CrossEntropyLoss()(LOGITS, TARGET.float()), TypeError, "integer"),
        (lambda: CrossEntropyLoss()(LOGITS, torch.zeros(2, 4)), ValueError, "one column per class"),
        (lambda: CrossEntropyLoss()(LOGITS[0], TARGET), ValueError, "2-D"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
