"""FGD and MGD detection feature losses (kd_reference §6): masks, attention and loss values pinned by hand."""

from __future__ import annotations

import math

import pytest
import torch

from methods.baselines.fgd import (
    FGD_HPARAMS,
    GcBlock,
    box_masks,
    fgd_attention_loss,
    fgd_feature_loss,
    fgd_global_loss,
    fgd_loss,
    spatial_channel_attention,
)
from methods.baselines.mgd import MGD_HPARAMS, MGDGenerator, mgd_loss, random_spatial_mask

NINTH, QUARTER = 1 / 9, 1 / 4


# box_masks: 8×8 image → 4×4 feature map (scale 0.5); floor(x1, y1), ceil(x2, y2), inclusive.
def test_box_masks_one_box_inclusive_ceil() -> None:
    # (2, 2, 6, 6) → (1, 1, 3, 3): rows/cols 1..3 inclusive, so 3×3 cells and weight 1/9 (not the 2×2 box size).
    fg, bg = box_masks([torch.tensor([[2.0, 2.0, 6.0, 6.0]])], [(8, 8)], (4, 4))
    expected_fg = torch.tensor([[0, 0, 0, 0], [0, NINTH, NINTH, NINTH], [0, NINTH, NINTH, NINTH],
                                [0, NINTH, NINTH, NINTH]])
    s = 1 / 7  # 7 cells outside the box
    expected_bg = torch.tensor([[s, s, s, s], [s, 0, 0, 0], [s, 0, 0, 0], [s, 0, 0, 0]])
    assert fg.shape == bg.shape == (1, 4, 4)
    torch.testing.assert_close(fg[0], expected_fg)
    torch.testing.assert_close(bg[0], expected_bg)


def test_box_masks_overlap_keeps_smaller_box() -> None:
    # (0, 0, 4, 4) → rows/cols 0..2, weight 1/9; (3, 3, 4, 4) → (1.5, 1.5, 2, 2) → 1..2, weight 1/4.
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [3.0, 3.0, 4.0, 4.0]])
    fg, bg = box_masks([boxes], [(8, 8)], (4, 4))
    expected_fg = torch.tensor([[NINTH, NINTH, NINTH, 0], [NINTH, QUARTER, QUARTER, 0], [NINTH, QUARTER, QUARTER, 0],
                                [0, 0, 0, 0]])
    s = 1 / 7
    expected_bg = torch.tensor([[0, 0, 0, s], [0, 0, 0, s], [0, 0, 0, s], [s, s, s, s]])
    torch.testing.assert_close(fg[0], expected_fg)
    torch.testing.assert_close(bg[0], expected_bg)
    # Box order does not matter (max, not last write).
    torch.testing.assert_close(box_masks([boxes.flip(0)], [(8, 8)], (4, 4))[0], fg)


def test_box_masks_edge_box_keeps_unclipped_weight() -> None:
    # (4, 4, 8, 8) → rows/cols 2..4: weight 1/(3·3) although only rows/cols 2..3 exist (official slicing).
    fg, bg = box_masks([torch.tensor([[4.0, 4.0, 8.0, 8.0]])], [(8, 8)], (4, 4))
    expected_fg = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, NINTH, NINTH], [0, 0, NINTH, NINTH]])
    torch.testing.assert_close(fg[0], expected_fg)
    torch.testing.assert_close(bg[0], (expected_fg == 0).float() / 12)


def test_box_masks_batch_with_empty_image_and_own_img_shape() -> None:
    boxes = [torch.tensor([[2.0, 2.0, 6.0, 6.0]]), torch.zeros(0, 4), torch.tensor([[1.5, 0.0, 3.0, 2.0]])]
    # Image 2 is 8 high, 6 wide (un-padded): x scale 4/6, y scale 4/8 → (1, 0, 2, 1): rows 0..1, cols 1..2.
    fg, bg = box_masks(boxes, [(8, 8), (8, 8), (8, 6)], (4, 4))
    assert fg.shape == (3, 4, 4)
    torch.testing.assert_close(fg[0], box_masks(boxes[:1], [(8, 8)], (4, 4))[0][0])
    torch.testing.assert_close(fg[1], torch.zeros(4, 4))
    torch.testing.assert_close(bg[1], torch.full((4, 4), 1 / 16))  # no boxes: 1/(H·W) everywhere
    expected_fg2 = torch.tensor([[0, QUARTER, QUARTER, 0], [0, QUARTER, QUARTER, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(fg[2], expected_fg2)
    torch.testing.assert_close(bg[2], (expected_fg2 == 0).float() / 12)


def test_box_masks_full_cover_gives_zero_background() -> None:
    fg, bg = box_masks([torch.tensor([[0.0, 0.0, 8.0, 8.0]])], [(8, 8)], (4, 4))
    torch.testing.assert_close(fg[0], torch.full((4, 4), 1 / 25))  # 0..4 inclusive: 5×5
    torch.testing.assert_close(bg[0], torch.zeros(4, 4))


def test_box_masks_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one k×4 tensor"):
        box_masks([torch.zeros(0, 4)], [(8, 8), (8, 8)], (4, 4))
    with pytest.raises(ValueError, match="k×4"):
        box_masks([torch.zeros(4)], [(8, 8)], (4, 4))


# Attention: 1×2×1×2, |F| = c0 (1, 3), c1 (1, 1): pixel means (1, 2), channel means (2, 1).
def test_spatial_channel_attention_formula() -> None:
    feat = torch.tensor([[[[1.0, -3.0]], [[-1.0, 1.0]]]])
    spatial, channel = spatial_channel_attention(feat, 0.5)
    e2 = math.exp(2.0)  # logit gap (2 − 1) / 0.5
    torch.testing.assert_close(spatial, torch.tensor([[[2 / (1 + e2), 2 * e2 / (1 + e2)]]]))  # H·W = 2
    torch.testing.assert_close(channel, torch.tensor([[2 * e2 / (1 + e2), 2 / (1 + e2)]]))  # C = 2


# FGD terms on 1×2×2×2, T = 1. Teacher c0 = [[2, 0], [0, 0]], c1 = 0; student c0 = 0, c1 = 1.
TEACHER = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])
STUDENT = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]])
FG_MASK = torch.tensor([[[0.5, 0.5], [0.0, 0.0]]])
BG_MASK = torch.tensor([[[0.0, 0.0], [0.5, 0.5]]])
E, SQRT_E = math.e, math.sqrt(math.e)
# Teacher: pixel means (1, 0, 0, 0) → A_S = 4·softmax; channel means (0.5, 0) → A_C = 2·softmax.
AS_T_HOT, AS_T_COLD = 4 * E / (E + 3), 4 / (E + 3)
AC_T0, AC_T1 = 2 * SQRT_E / (SQRT_E + 1), 2 / (SQRT_E + 1)
# Student: pixel means all 0.5 → A_S = 1; channel means (0, 1).
AC_S0, AC_S1 = 2 / (1 + E), 2 * E / (1 + E)
# (F^t − F^s)²: c0 = [[4, 0], [0, 0]], c1 = all ones.
FG_BY_HAND = 0.5 * AS_T_HOT * (4 * AC_T0 + 1 * AC_T1) + 0.5 * AS_T_COLD * (0 * AC_T0 + 1 * AC_T1)
BG_BY_HAND = 0.5 * AS_T_COLD * AC_T1 + 0.5 * AS_T_COLD * AC_T1
ATTN_BY_HAND = abs(AC_T0 - AC_S0) + abs(AC_T1 - AC_S1) + abs(AS_T_HOT - 1) + 3 * abs(AS_T_COLD - 1)
GLOBAL_AT_INIT = 4 + 4 * 1  # Σ (F^s − F^t)² with identity GcBlocks


def test_fgd_feature_loss_uses_teacher_attention() -> None:
    fg, bg = fgd_feature_loss(STUDENT, TEACHER, FG_MASK, BG_MASK, 1.0)
    assert fg.item() == pytest.approx(FG_BY_HAND, rel=1e-6)
    assert bg.item() == pytest.approx(BG_BY_HAND, rel=1e-6)


def test_fgd_attention_loss_value() -> None:
    assert fgd_attention_loss(STUDENT, TEACHER, 1.0).item() == pytest.approx(ATTN_BY_HAND, rel=1e-6)
    assert fgd_attention_loss(TEACHER, TEACHER, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_fgd_global_loss_value() -> None:
    assert fgd_global_loss(torch.ones(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)).item() == pytest.approx(8.0)


def test_fgd_loss_weights_and_divides_by_batch() -> None:
    torch.manual_seed(0)
    student_gc, teacher_gc = GcBlock(2), GcBlock(2)
    weights = {"temperature": 1.0, "alpha": 2.0, "beta": 3.0, "gamma": 5.0, "lambda_": 7.0}
    expected = {"loss_fgd_fg": 2 * FG_BY_HAND, "loss_fgd_bg": 3 * BG_BY_HAND, "loss_fgd_attn": 5 * ATTN_BY_HAND,
                "loss_fgd_global": 7 * GLOBAL_AT_INIT}
    for n in (1, 2):  # duplicated samples: Σ / N unchanged
        rep = (n, 1, 1, 1)
        losses = fgd_loss(STUDENT.repeat(rep), TEACHER.repeat(rep), FG_MASK.repeat(n, 1, 1), BG_MASK.repeat(n, 1, 1),
                          **weights, student_gc=student_gc, teacher_gc=teacher_gc)
        assert losses.keys() == expected.keys()
        for key, value in expected.items():
            assert losses[key].item() == pytest.approx(value, rel=1e-6), key


def test_fgd_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="align conv"):
        fgd_feature_loss(STUDENT[:, :1], TEACHER, FG_MASK, BG_MASK, 1.0)
    with pytest.raises(ValueError, match="box_masks"):
        fgd_feature_loss(STUDENT, TEACHER, FG_MASK[:, :1], BG_MASK, 1.0)


def test_fgd_hparams_table() -> None:
    assert FGD_HPARAMS["retinanet"] == {"temperature": 0.5, "alpha": 1e-3, "beta": 5e-4, "gamma": 5e-4, "lambda_": 5e-6}
    assert FGD_HPARAMS["fcos"]["temperature"] == 0.8
    assert FGD_HPARAMS["faster_rcnn"]["lambda_"] == 5e-7
    assert {"faster_rcnn", "retinanet", "fcos", "reppoints"} <= FGD_HPARAMS.keys()


# GcBlock.
def test_gc_block_identity_at_init() -> None:
    torch.manual_seed(0)
    gc = GcBlock(4)
    assert torch.count_nonzero(gc.transform[-1].weight) == 0 and torch.count_nonzero(gc.transform[-1].bias) == 0
    assert torch.count_nonzero(gc.context_logits.bias) == 0
    x = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(gc(x), x)


def test_gc_block_hand_case() -> None:
    # C = 4, 1×4×1×2. W_k reads channel 0 with weight ln3/4: logits (ln 3, 0) + bias → softmax (3/4, 1/4).
    feat = torch.tensor([[[[4.0, 0.0]], [[1.0, 3.0]], [[0.0, 0.0]], [[0.0, 0.0]]]])
    gc = GcBlock(4)
    w1, w2 = gc.transform[0], gc.transform[3]
    with torch.no_grad():
        gc.context_logits.weight.zero_()
        gc.context_logits.weight[0, 0] = math.log(3) / 4
        gc.context_logits.bias.fill_(0.3)
        w1.weight.zero_()
        w1.weight[0, 0] = w1.weight[1, 1] = 1.0
        w1.bias.zero_()
        w2.weight.copy_(torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])[:, :, None, None])
    # ctx = (4·3/4, 1·3/4 + 3·1/4, 0, 0) = (3, 1.5, 0, 0); W1 keeps (3, 1.5); LN → ±0.75/√(0.75² + 1e-5);
    # ReLU keeps the first, so W2 adds a·(1, 2, 3, 4). (Uniform weights would give (2, 2) → LN 0 → no offset.)
    a = 0.75 / math.sqrt(0.5625 + 1e-5)
    expected = feat + a * torch.tensor([1.0, 2.0, 3.0, 4.0])[None, :, None, None]
    torch.testing.assert_close(gc(feat), expected)


def test_fgd_gradients_reach_student_and_both_gc_blocks_not_teacher() -> None:
    torch.manual_seed(0)
    student_gc, teacher_gc = GcBlock(4), GcBlock(4)
    student = torch.randn(2, 4, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 4, 4, 4, requires_grad=True)
    fg, bg = box_masks([torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.zeros(0, 4)], [(8, 8), (8, 8)], (4, 4))
    sum(fgd_loss(student, teacher, fg, bg, 0.5, 1.0, 1.0, 1.0, 1.0, student_gc, teacher_gc).values()).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    for gc in (student_gc, teacher_gc):  # at init only W2 has gradient (it gates everything before it)
        assert gc.transform[-1].weight.grad.abs().sum() > 0 and gc.transform[-1].bias.grad.abs().sum() > 0
    # Once W2 is non-zero, the teacher-side W_k and W1 train through the global term too.
    with torch.no_grad():
        teacher_gc.transform[-1].weight.normal_()
    teacher_gc.zero_grad()
    fgd_global_loss(student_gc(student), teacher_gc(teacher.detach())).backward()
    assert teacher_gc.context_logits.weight.grad.abs().sum() > 0
    assert teacher_gc.transform[0].weight.grad.abs().sum() > 0


# MGD.
def test_random_spatial_mask_statistics_and_direction() -> None:
    mask = random_spatial_mask(4, 64, 64, 0.65, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (4, 1, 64, 64) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert (mask == 0).float().mean().item() == pytest.approx(0.65, abs=0.02)
    # Official direction: zero where rand > 1 − λ (same draw, same seed).
    rand = torch.rand((4, 1, 64, 64), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mask, (rand <= 0.35).float())
    # One mask per pixel, shared by every channel.
    masked = torch.ones(4, 3, 64, 64) * mask
    assert torch.equal(masked[:, 0], masked[:, 1]) and torch.equal(masked[:, 0], masked[:, 2])
    assert torch.equal(random_spatial_mask(2, 3, 3, 0.0), torch.ones(2, 1, 3, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        random_spatial_mask(1, 2, 2, 1.5)


def _identity_relu_generator(channels: int) -> MGDGenerator:
    """G(x) = ReLU(x): both 3×3 convs are identity (centre tap), biases zero."""
    gen = MGDGenerator(channels)
    with torch.no_grad():
        for conv in (gen[0], gen[2]):
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[range(channels), range(channels), 1, 1] = 1.0
    return gen


MGD_S = torch.tensor([[[[1.0, -2.0], [3.0, 4.0]], [[0.5, 1.0], [2.0, -1.0]]]])
MGD_T = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])
MGD_MASK = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])  # pixel (0, 1) zeroed


def test_mgd_loss_hand_case_covers_all_pixels() -> None:
    gen = _identity_relu_generator(2)
    # G(F^s ⊙ M): c0 = [[1, 0], [3, 4]], c1 = [[0.5, 0], [2, 0]].
    # c0 errors (0, −1, 2, 3)² = 14 (the masked pixel counts); c1 (0.5, 0, 2, 0)² = 4.25; α = 2.
    assert mgd_loss(MGD_S, MGD_T, gen, MGD_MASK, 2.0).item() == pytest.approx(2 * 18.25)
    # Without the mask, c1 at (0, 1) generates ReLU(1) = 1: one more unit of error.
    assert mgd_loss(MGD_S, MGD_T, gen, torch.ones_like(MGD_MASK), 2.0).item() == pytest.approx(2 * 19.25)
    # Duplicated samples: Σ / N unchanged.
    doubled = mgd_loss(MGD_S.repeat(2, 1, 1, 1), MGD_T.repeat(2, 1, 1, 1), gen, MGD_MASK.repeat(2, 1, 1, 1), 2.0)
    assert doubled.item() == pytest.approx(2 * 18.25)


def test_mgd_gradients_reach_student_and_generator_not_teacher() -> None:
    torch.manual_seed(0)
    gen = MGDGenerator(2)
    student, teacher = MGD_S.clone().requires_grad_(), MGD_T.clone().requires_grad_()
    mgd_loss(student, teacher, gen, MGD_MASK, 1.0).backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0
    assert torch.count_nonzero(student.grad[0, :, 0, 1]) == 0  # a masked pixel gets no gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())


def test_mgd_rejects_bad_shapes_and_hparams_table() -> None:
    gen = MGDGenerator(2)
    with pytest.raises(ValueError, match="align conv"):
        mgd_loss(MGD_S, MGD_T[:, :1], gen, MGD_MASK, 1.0)
    with pytest.raises(ValueError, match="random_spatial_mask"):
        mgd_loss(MGD_S, MGD_T, gen, MGD_MASK[0], 1.0)
    assert MGD_HPARAMS == {"one_stage": {"alpha": 2e-5, "ratio": 0.65}, "two_stage": {"alpha": 5e-7, "ratio": 0.45},
                           "segmentation": {"alpha": 2e-5, "ratio": 0.75}}
