"""Segmentation baseline losses (KD, FitNet, CWD, SKD, IFVD, adversarial): values pinned by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.baselines.adversarial import LogitDiscriminator, hinge_discriminator_loss, hinge_generator_loss
from methods.baselines.cwd import cwd_loss
from methods.baselines.fitnet import fitnet_loss
from methods.baselines.ifvd import downsample_labels, ifv_loss
from methods.baselines.kd import pixel_kd_loss
from methods.baselines.skd import pairwise_affinity_loss


def _softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _grads(loss_fn, student: torch.Tensor, teacher: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor | None]:
    student, teacher = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    loss_fn(student, teacher, *args).backward()
    return student.grad, teacher.grad


# Pixel KD: 1×2×1×2 logits, two pixels with two classes each.
S_LOGITS = torch.tensor([[[[0.0, 1.0]], [[1.0, -1.0]]]])  # pixel 0: (0, 1), pixel 1: (1, -1)
T_LOGITS = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # pixel 0: (2, 0), pixel 1: (0, 0)


def _kd_by_hand(tau: float) -> float:
    kl_sum = _kl(_softmax([2 / tau, 0]), _softmax([0, 1 / tau])) + _kl(_softmax([0, 0]), _softmax([1 / tau, -1 / tau]))
    return kl_sum / 2 * tau**2  # 2 pixel rows (N·h·w), not 4 elements nor N = 1


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_pixel_kd_batchmean_over_pixels_and_tau_squared(tau: float) -> None:
    assert pixel_kd_loss(S_LOGITS, T_LOGITS, tau).item() == pytest.approx(_kd_by_hand(tau), rel=1e-6)


def test_pixel_kd_divides_by_batch_too() -> None:
    loss = pixel_kd_loss(S_LOGITS.repeat(3, 1, 1, 1), T_LOGITS.repeat(3, 1, 1, 1))
    assert loss.item() == pytest.approx(_kd_by_hand(1.0), rel=1e-6)
    assert pixel_kd_loss(T_LOGITS, T_LOGITS).item() == pytest.approx(0.0, abs=1e-7)


# FitNet: MSE mean over all elements.
def test_fitnet_mean_over_elements() -> None:
    student = torch.zeros(1, 1, 1, 2)
    teacher = torch.tensor([[[[1.0, 3.0]]]])
    assert fitnet_loss(student, teacher).item() == pytest.approx((1 + 9) / 2)


# CWD: 1×2×1×2, softmax over the 2 positions of each channel.
CWD_S = torch.tensor([[[[0.0, 2.0]], [[1.0, 1.0]]]])
CWD_T = torch.tensor([[[[2.0, 0.0]], [[0.0, 4.0]]]])


def _cwd_by_hand(tau: float) -> float:
    kl_c0 = _kl(_softmax([2 / tau, 0]), _softmax([0, 2 / tau]))
    kl_c1 = _kl(_softmax([0, 4 / tau]), _softmax([1 / tau, 1 / tau]))
    return tau**2 * (kl_c0 + kl_c1) / (1 * 2)  # N·C = 2


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_value_tau_squared_over_nc(tau: float) -> None:
    assert cwd_loss(CWD_S, CWD_T, tau).item() == pytest.approx(_cwd_by_hand(tau), rel=1e-6)


def test_cwd_normalised_by_n_times_c() -> None:
    # Repeating batch items or channels leaves a per-(n, c) mean unchanged.
    repeated = cwd_loss(CWD_S.repeat(2, 3, 1, 1), CWD_T.repeat(2, 3, 1, 1), 4.0)
    assert repeated.item() == pytest.approx(_cwd_by_hand(4.0), rel=1e-6)


def test_cwd_zero_iff_identical() -> None:
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    assert cwd_loss(x, x.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert cwd_loss(x, x + torch.randn_like(x), 4.0).item() > 1e-4
    # Shift-invariant per channel, up to float32 rounding of x + 7 (then × τ² = 16).
    assert cwd_loss(x, x + 7.0, 4.0).item() == pytest.approx(0.0, abs=1e-5)


# SKD: 1×2×2×3 student / 1×3×2×3 teacher, 2×2 ceil-mode pooling gives N = 2 nodes (cols 0-1 and col 2).
SKD_S = torch.tensor([[[[1.0, 0.0, 0.0], [0.0, -5.0, 0.0]], [[0.0, 0.0, 1.0], [0.0, 0.0, -5.0]]]])
SKD_T = torch.ones(1, 3, 2, 3)


def test_skd_pooling_and_mean_over_b_n_squared() -> None:
    # Student nodes (1, 0) and (0, 1): A_s = I; teacher nodes equal: A_t = all ones.
    # Σ (A_s − A_t)² = 2 off-diagonal ones; / (B·N²) = 2 / 4. Floor pooling (1 node) would give 0.
    assert pairwise_affinity_loss(SKD_S, SKD_T).item() == pytest.approx(0.5, rel=1e-6)
    assert pairwise_affinity_loss(SKD_S.repeat(2, 1, 1, 1), SKD_T.repeat(2, 1, 1, 1)).item() == pytest.approx(0.5)


def test_skd_patch_one_uses_every_pixel() -> None:
    # patch 1: every pixel is a node (N = 2).
    student = torch.zeros(1, 2, 1, 2)
    student[0, 0, 0, 0], student[0, 1, 0, 1] = 1.0, 2.0  # nodes (1, 0) and (0, 2): cosine 0
    teacher = torch.tensor([[[[1.0, -3.0]]]])  # nodes 1 and −3 in 1-D: cosine −1
    # A_s = I, A_t = [[1, −1], [−1, 1]]: Σ (A_s − A_t)² = 2, / 4.
    assert pairwise_affinity_loss(student, teacher, patch=1).item() == pytest.approx(0.5, rel=1e-6)


# IFVD.
def test_downsample_labels_nearest_top_left() -> None:
    labels = torch.arange(24).view(1, 4, 6)
    expected = torch.tensor([[[0, 2, 4], [12, 14, 16]]])  # rows 0, 2 and cols 0, 2, 4
    assert torch.equal(downsample_labels(labels, (2, 3)), expected)
    via_upsample = nn.Upsample(size=(2, 3), mode="nearest")(labels[:, None].float())[:, 0].long()
    assert torch.equal(downsample_labels(labels, (2, 3)), via_upsample)


# Features 1×C×1×3; full-resolution labels 1×2×6 sample row 0, cols 0, 2, 4 → classes (0, 0, ignore).
IFV_LABELS = torch.tensor([[[0, 255, 0, 255, 255, 0], [255, 255, 255, 255, 255, 255]]])
IFV_S = torch.tensor([[[[1.0, 0.0, 3.0]], [[0.0, 1.0, -2.0]]]])  # pixels (1, 0), (0, 1), ignore (3, −2)
IFV_T = torch.tensor([[[[1.0, 1.0, 0.5]], [[0.0, 0.0, 9.0]], [[0.0, 0.0, 1.0]]]])  # (1,0,0) twice, ignore


def test_ifv_value_with_ignore_pixel_in_denominator() -> None:
    # Student prototype (0.5, 0.5): cosine 1/√2 at both class-0 pixels; teacher prototype (1, 0, 0): cosine 1.
    # The ignore pixel compares each feature with itself: error 0, but it counts (denominator 3, not 2).
    expected = 2 * (1 - 1 / math.sqrt(2)) ** 2 / 3
    assert ifv_loss(IFV_S, IFV_T, IFV_LABELS).item() == pytest.approx(expected, rel=1e-5)


def test_ifv_out_of_range_labels_are_ignored() -> None:
    expected = 2 * (1 - 1 / math.sqrt(2)) ** 2 / 3
    for other in (-1, 19):
        labels = torch.where(IFV_LABELS == 255, other, IFV_LABELS)
        assert ifv_loss(IFV_S, IFV_T, labels).item() == pytest.approx(expected, rel=1e-5)


def _ifv_official_loop(feat_s: torch.Tensor, feat_t: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """CIRKD ``CriterionIFV.forward`` restated with a Python loop over classes (the reference behaviour)."""
    size = feat_s.shape[2:]
    tar_s = nn.Upsample(size, mode="nearest")(target.unsqueeze(1).float()).expand(feat_s.size())
    tar_t = nn.Upsample(size, mode="nearest")(target.unsqueeze(1).float()).expand(feat_t.size())
    centre_s, centre_t = feat_s.clone(), feat_t.clone()
    for i in range(k):
        m_s, m_t = (tar_s == i).float(), (tar_t == i).float()
        mu_s = ((m_s * feat_s).sum(-1).sum(-1) / (m_s.sum(-1).sum(-1) + 1e-6))[..., None, None]
        mu_t = ((m_t * feat_t).sum(-1).sum(-1) / (m_t.sum(-1).sum(-1) + 1e-6))[..., None, None]
        centre_s = (1 - m_s) * centre_s + m_s * mu_s
        centre_t = (1 - m_t) * centre_t + m_t * mu_t
    cos = nn.CosineSimilarity(dim=1)
    return F.mse_loss(cos(feat_s, centre_s), cos(feat_t, centre_t))


def test_ifv_matches_official_loop_value_and_student_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    feat_s = torch.randn(2, 5, 6, 8, generator=g, dtype=torch.float64)
    feat_t = torch.randn(2, 7, 6, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 6, (2, 24, 32), generator=g)
    labels[labels == 5] = 255
    ref_s = feat_s.clone().requires_grad_()
    ref = _ifv_official_loop(ref_s, feat_t, labels, 5)
    ref.backward()
    grad_s, grad_t = _grads(ifv_loss, feat_s, feat_t, labels, 5)
    assert ifv_loss(feat_s, feat_t, labels, 5).item() == pytest.approx(ref.item(), rel=1e-9)
    torch.testing.assert_close(grad_s, ref_s.grad)  # prototypes are not detached on the student side
    assert grad_t is None


# Gradients and shape errors shared by all losses.
FEATURE_LOSSES = [
    (pixel_kd_loss, (2, 4, 3, 5), (2, 4, 3, 5), ()),
    (fitnet_loss, (2, 4, 3, 5), (2, 4, 3, 5), ()),
    (cwd_loss, (2, 4, 3, 5), (2, 4, 3, 5), (4.0,)),
    (pairwise_affinity_loss, (2, 4, 3, 5), (2, 6, 3, 5), ()),
    (ifv_loss, (2, 4, 3, 5), (2, 6, 3, 5), (torch.randint(0, 3, (2, 6, 10)), 3)),
]


@pytest.mark.parametrize(("fn", "s_shape", "t_shape", "args"), FEATURE_LOSSES, ids=lambda x: getattr(x, "__name__", ""))
def test_gradient_reaches_student_only(fn, s_shape: tuple, t_shape: tuple, args: tuple) -> None:
    torch.manual_seed(0)
    grad_s, grad_t = _grads(fn, torch.randn(s_shape), torch.randn(t_shape), *args)
    assert grad_s is not None and torch.isfinite(grad_s).all() and grad_s.abs().sum() > 0
    assert grad_t is None


@pytest.mark.parametrize(
    ("fn", "s_shape", "t_shape", "args", "match"),
    [
        (pixel_kd_loss, (1, 19, 4, 4), (1, 18, 4, 4), (), "same shape"),
        (fitnet_loss, (1, 128, 4, 4), (1, 256, 4, 4), (), r"\(1, 128, 4, 4\).*\(1, 256, 4, 4\).*adapter"),
        (cwd_loss, (1, 128, 4, 4), (1, 256, 4, 4), (4.0,), "adapter"),
        (pairwise_affinity_loss, (1, 8, 4, 4), (1, 8, 4, 6), (), "same B, h, w"),
        (ifv_loss, (1, 8, 4, 4), (2, 8, 4, 4), (torch.zeros(1, 8, 8, dtype=torch.long),), "same B, h, w"),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_shape_mismatch_raises(fn, s_shape: tuple, t_shape: tuple, args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(torch.zeros(s_shape), torch.zeros(t_shape), *args)


# Adversarial.
@pytest.fixture(scope="module")
def discriminator() -> LogitDiscriminator:
    torch.manual_seed(0)
    return LogitDiscriminator(num_classes=19)


@pytest.mark.parametrize(("size", "out"), [((64, 128), (1, 5)), ((8, 16), (1, 1))])
def test_discriminator_output_shape(discriminator: LogitDiscriminator, size: tuple, out: tuple) -> None:
    # Official last conv has padding 0: 64×128 → 4×8 after conv 4 → 1×5. 8×16 reaches 1×2 and is padded.
    with torch.no_grad():
        assert discriminator(torch.randn(1, 19, *size)).shape == (1, 1, *out)


def test_discriminator_passes_gradient_to_logits(discriminator: LogitDiscriminator) -> None:
    logits = torch.randn(2, 19, 8, 16, requires_grad=True)
    hinge_generator_loss(discriminator(logits)).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_discriminator_structure(discriminator: LogitDiscriminator) -> None:
    assert all(nn.utils.parametrize.is_parametrized(conv, "weight") for conv in discriminator.convs)
    assert not nn.utils.parametrize.is_parametrized(discriminator.last)
    assert [conv.out_channels for conv in discriminator.convs] == [64, 128, 256, 512]
    assert discriminator.attn3.gamma.item() == 0 and discriminator.attn4.gamma.item() == 0
    assert discriminator.attn4.query.out_channels == 512 // 8


def test_hinge_losses_by_hand() -> None:
    d_t = torch.tensor([0.5, 2.0])
    d_s = torch.tensor([-0.5, 0.3])
    # Teacher: mean(0.5, 0) = 0.25; student: mean(0.5, 1.3) = 0.9.
    assert hinge_discriminator_loss(d_t, d_s).item() == pytest.approx(1.15)
    assert hinge_generator_loss(d_s).item() == pytest.approx(-(-0.5 + 0.3) / 2)
    with pytest.raises(ValueError, match="differ"):
        hinge_discriminator_loss(d_t, d_s[:1])
