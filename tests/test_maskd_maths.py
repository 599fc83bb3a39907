"""MasKD maths on hand-computed tiny tensors: token masks, Dice diversity, masked feature loss, mask weighting."""

from __future__ import annotations

import math

import pytest
import torch

from methods.maskd.loss import masked_feature_loss
from methods.maskd.masks import dice_diversity, init_tokens, token_masks
from methods.maskd.naive import naive_masked_feature_loss
from methods.maskd.weighting import MaskWeighting


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- token masks (eq. 3)


def test_token_masks_hand_example() -> None:
    feat = torch.tensor([[[[1.0, -1.0]], [[2.0, 0.5]]]])  # 1×2×1×2: F(p0) = (1, 2), F(p1) = (−1, 0.5)
    tokens = torch.tensor([[0.5, -1.0], [2.0, 1.0]])
    expected = torch.tensor([[[[sigmoid(-1.5), sigmoid(-1.0)]], [[sigmoid(4.0), sigmoid(-1.5)]]]])
    masks = token_masks(feat, tokens)
    assert masks.shape == (1, 2, 1, 2)
    torch.testing.assert_close(masks, expected)


def test_token_masks_channel_mismatch() -> None:
    with pytest.raises(ValueError, match="channels"):
        token_masks(torch.zeros(1, 3, 2, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="N×C×H×W"):
        token_masks(torch.zeros(3, 2, 2), torch.zeros(4, 3))


def test_init_tokens() -> None:
    tokens = init_tokens(6, 256, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (6, 256)
    assert abs(tokens.std().item() - 0.01) < 0.001
    assert abs(tokens.mean().item()) < 0.002
    torch.testing.assert_close(tokens, init_tokens(6, 256, generator=torch.Generator().manual_seed(0)))


# ---------------------------------------------------------------- Dice diversity (eqs. 4–5, official version)


def test_dice_two_masks_two_images() -> None:
    # image 0: a=(1, .5, 0), b=(0, .5, 1): Σab=.25, Σa²=Σb²=1.25 → ρ=.2
    # image 1: a=(1, 1, 0), b=(1, 0, 0): Σab=1, Σa²=2, Σb²=1 → ρ=2/3
    masks = torch.tensor([[[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]], [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    assert dice_diversity(masks.view(2, 2, 1, 3)).item() == pytest.approx((0.2 + 2 / 3) / 2)


def test_dice_excludes_diagonal() -> None:
    # a=(1,0), b=(0,1), c=(1,1): ρ(a,b)=0, ρ(a,c)=ρ(b,c)=2/3; mean over 6 ordered pairs = 4/9 (eq. 4's T² mean: 17/27)
    masks = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]]])
    assert dice_diversity(masks).item() == pytest.approx(4 / 9)


def test_dice_identical_disjoint_and_degenerate() -> None:
    mask = torch.rand(3, 1, 4, 5, generator=torch.Generator().manual_seed(0)) + 0.1
    assert dice_diversity(mask.expand(3, 4, 4, 5)).item() == pytest.approx(1.0)
    disjoint = torch.eye(4).view(1, 4, 2, 2)
    assert dice_diversity(disjoint).item() == 0.0
    assert dice_diversity(torch.zeros(2, 3, 2, 2)).item() == 0.0  # empty masks: 0/(2·eps), no NaN
    assert dice_diversity(mask).item() == 0.0  # T=1: no pair, defined as 0


def test_dice_eps_added_to_each_squared_sum() -> None:
    ones = torch.ones(1, 2, 1, 1)  # Σab = Σa² = Σb² = 1
    assert dice_diversity(ones, eps=0.5).item() == pytest.approx(2 / (1.5 + 1.5))


def test_dice_shape_error() -> None:
    with pytest.raises(ValueError, match="masks must be"):
        dice_diversity(torch.zeros(4, 5))


# ---------------------------------------------------------------- masked feature loss (eqs. 2, 8)
# Image 0: S−T = c0 (1, 2), c1 (2, 0) → D = mean_c (S−T)² = (2.5, 2). Image 1: S−T = c0 (2, 0) → D = (2, 0).
# M0 = (.5, 1), M1 = (1, 0). L_{n,k} = Σ M² D / ΣM:
#   L00 = (.25·2.5 + 2)/1.5 = 1.75, L01 = 2.5/1 = 2.5, L10 = (.25·2)/1.5 = 1/3, L11 = 2/1 = 2.
STUDENT = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]], [[[2.0, 0.0]], [[0.0, 0.0]]]])
TEACHER = torch.tensor([[[[0.0, 0.0]], [[1.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]])
MASKS = torch.tensor([[[[0.5, 1.0]], [[1.0, 0.0]]]]).expand(2, 2, 1, 2)
WEIGHTS = torch.tensor([[0.25, 0.75], [1.0, 0.0]])


def test_masked_loss_eq2_hand_example() -> None:
    expected = (1.75 + 2.5 + 1 / 3 + 2) / 4  # M² numerator, ΣM denominator, mean over C, tokens and images
    assert masked_feature_loss(STUDENT, TEACHER, MASKS).item() == pytest.approx(expected)


def test_masked_loss_eq8_hand_example() -> None:
    expected = ((0.25 * 1.75 + 0.75 * 2.5) + (1.0 * 1 / 3)) / 2  # Σ_k w L per image, mean over images
    assert masked_feature_loss(STUDENT, TEACHER, MASKS, WEIGHTS).item() == pytest.approx(expected)


def test_masked_loss_eps_in_denominator() -> None:
    expected = (2.625 / 2.0 + 2.5 / 1.5 + 0.5 / 2.0 + 2 / 1.5) / 4
    assert masked_feature_loss(STUDENT, TEACHER, MASKS, eps=0.5).item() == pytest.approx(expected)


def test_masked_loss_empty_mask() -> None:
    masks = MASKS.clone()
    masks[:, 1] = 0.0
    loss = masked_feature_loss(STUDENT, TEACHER, masks, eps=1e-5)  # segmentation: empty mask contributes 0
    assert loss.item() == pytest.approx((1.75 + 0.0 + 1 / 3 + 0.0) / 4, rel=1e-5)
    # Detection (no eps): the official code's 0/0 = NaN becomes 0, with a finite gradient; others unchanged.
    student = STUDENT.clone().requires_grad_(True)
    loss = masked_feature_loss(student, TEACHER, masks)
    assert loss.item() == pytest.approx((1.75 + 0.0 + 1 / 3 + 0.0) / 4, rel=1e-6)
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_masked_loss_near_empty_mask_keeps_gradients_finite() -> None:
    """Saturated masks (σ of large features: mass 0 or 1e-30) with all the token weight on them: 1/ΣM overflowed
    in the backward pass (λ·w/(N·ΣM) > 3.4e38) and inf·0 made every gradient NaN (FCOS smoke run)."""
    masks = MASKS.clone()
    masks[0, 1] = 0.0
    masks[1, 1] = torch.tensor([[1e-30, 0.0]])
    weights = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    student = STUDENT.clone().requires_grad_(True)
    loss = 10.0 * masked_feature_loss(student, TEACHER, masks, weights)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    # Image 0 has all its weight on the empty token (adds 0); image 1: 0.5·L_{1,0} + 0.5·0 with
    # L_{1,0} = (0.5²·D(p0) + 1²·D(p1)) / (0.5 + 1) = (0.25·2 + 0) / 1.5 = 1/3.
    assert loss.item() == pytest.approx(10.0 * (0.0 + 0.5 / 3) / 2, rel=1e-6)


def _random_case(weighted: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    n, t, c, h, w = 2, 6, 16, 10, 12
    student, teacher = torch.randn(n, c, h, w, generator=g), torch.randn(n, c, h, w, generator=g)
    masks = token_masks(teacher, torch.randn(t, c, generator=g))
    weights = torch.rand(n, t, generator=g).softmax(1) if weighted else None
    return student, teacher, masks, weights


@pytest.mark.parametrize("weighted", [False, True])
def test_matches_naive(weighted: bool) -> None:
    student, teacher, masks, weights = _random_case(weighted)
    grads = []
    for fn in (masked_feature_loss, naive_masked_feature_loss):
        s, m = student.clone().requires_grad_(), masks.clone().requires_grad_()
        loss = fn(s, teacher, m, weights, eps=1e-5)
        loss.backward()
        grads.append((loss.detach(), s.grad, m.grad))
    for fast, naive in zip(*grads, strict=True):
        torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-7)


def test_gradcheck_student_and_masks() -> None:
    student, teacher, masks, weights = (x.double() for x in _random_case(True))
    student = student[:, :3, :3, :4].clone().requires_grad_()
    teacher = teacher[:, :3, :3, :4]
    masks = masks[:, :, :3, :4].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda s, m: masked_feature_loss(s, teacher, m, weights), (student, masks))


def test_gradient_reaches_student_not_teacher() -> None:
    student, teacher, masks, _ = _random_case(False)
    student.requires_grad_()
    teacher.requires_grad_()
    loss = masked_feature_loss(student, teacher, masks)
    loss.backward(retain_graph=True)
    first = student.grad.clone()
    assert first.abs().sum() > 0
    assert teacher.grad is None
    loss.backward()  # a retained graph gives the same gradient again
    torch.testing.assert_close(student.grad, 2 * first)


def test_masked_loss_shape_errors() -> None:
    s = torch.zeros(2, 4, 3, 5)
    m = torch.ones(2, 6, 3, 5)
    with pytest.raises(ValueError, match="student and teacher"):
        masked_feature_loss(s, torch.zeros(2, 4, 5, 3), m)
    with pytest.raises(ValueError, match="masks must be"):
        masked_feature_loss(s, s, torch.ones(2, 6, 5, 3))
    with pytest.raises(ValueError, match="masks must be"):
        masked_feature_loss(s, s, torch.ones(1, 6, 3, 5))
    with pytest.raises(ValueError, match="weights must be"):
        masked_feature_loss(s, s, m, torch.ones(2, 5))
    with pytest.raises(ValueError, match="student must be"):
        masked_feature_loss(s[0], s[0], m)


# ---------------------------------------------------------------- mask weighting (appendix A.2)


def test_mask_weighting() -> None:
    torch.manual_seed(0)
    c, t = 32, 6
    module = MaskWeighting(c, t)
    w = module(torch.randn(3, c, 5, 7))
    assert w.shape == (3, t)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    conv3, conv1 = module.prob[0], module.prob[2]
    assert conv3.weight.shape == (c, c, 3, 3) and conv1.weight.shape == (t, c, 1, 1)
    assert conv3.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * c)), rel=0.1)
    assert conv1.weight.std().item() == pytest.approx(math.sqrt(2 / t), rel=0.3)
    assert conv3.bias.abs().sum() == 0 and conv1.bias.abs().sum() == 0
