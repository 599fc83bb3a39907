"""CIRKD losses and memory checked against explicit loops on tiny hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods.baselines.cirkd import (
    PIXEL_CONTRAST_SIZE,
    REGION_CONTRAST_SIZE,
    ClassMemory,
    StudentProjector,
    memory_contrast_loss,
    pixel_pair_loss,
)


def _kl_rows(t_logits: list[float], s_logits: list[float]) -> float:
    """KL(softmax(t) ‖ softmax(s)) for one row, with plain Python math."""
    zt = sum(math.exp(v) for v in t_logits)
    zs = sum(math.exp(v) for v in s_logits)
    total = 0.0
    for vt, vs in zip(t_logits, s_logits, strict=True):
        pt, ps = math.exp(vt) / zt, math.exp(vs) / zs
        total += pt * (math.log(pt) - math.log(ps))
    return total


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def _reference_pixel_pair(s: torch.Tensor, t: torch.Tensor, tau: float, group: int) -> float:
    """Explicit loops over groups, ordered pairs and pixels."""
    s = F.normalize(s, dim=1).flatten(2)
    t = F.normalize(t, dim=1).flatten(2)
    hw = s.shape[2]
    group_losses = []
    for start in range(0, s.shape[0], group):
        members = list(range(start, min(start + group, s.shape[0])))
        total = 0.0
        for i in members:
            for j in members:
                pair = 0.0
                for p in range(hw):
                    s_row = [_dot(s[i, :, p], s[j, :, q]) / tau for q in range(hw)]
                    t_row = [_dot(t[i, :, p], t[j, :, q]) / tau for q in range(hw)]
                    pair += _kl_rows(t_row, s_row)
                total += pair / hw
        group_losses.append(total / len(members) ** 2)
    return sum(group_losses) / len(group_losses)


@pytest.mark.parametrize("group", [1, 2, 3, 5])
def test_pixel_pair_loss_matches_loops(group: int) -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)
    teacher = torch.randn(3, 3, 2, 2, generator=g, dtype=torch.float64)  # channel counts may differ
    loss = pixel_pair_loss(student, teacher, tau=0.5, group=group)
    assert loss.item() == pytest.approx(_reference_pixel_pair(student, teacher, 0.5, group), rel=1e-9, abs=1e-12)


def test_pixel_pair_loss_uneven_group_is_mean_over_groups() -> None:
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)
    first = pixel_pair_loss(student[:2], teacher[:2], group=2)
    last = pixel_pair_loss(student[2:], teacher[2:], group=2)
    assert pixel_pair_loss(student, teacher, group=2).item() == pytest.approx(((first + last) / 2).item(), rel=1e-5)


def test_pixel_pair_loss_zero_and_gradient_to_student_only() -> None:
    g = torch.Generator().manual_seed(2)
    feat = torch.randn(4, 3, 2, 3, generator=g)
    assert pixel_pair_loss(feat, feat.clone()).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(4, 3, 2, 3, generator=g, requires_grad=True)
    teacher = torch.randn(4, 5, 2, 3, generator=g, requires_grad=True)
    pixel_pair_loss(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_pixel_pair_loss_rejects_mismatched_maps() -> None:
    with pytest.raises(ValueError, match="spatial"):
        pixel_pair_loss(torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 3))


def _which(rows: torch.Tensor, candidates: torch.Tensor) -> list[int]:
    """For each row (n×D), the index of the one candidate row (m×D) it equals up to float rounding."""
    close = torch.isclose(rows[:, None], candidates[None], rtol=1e-5, atol=1e-6).all(dim=2)
    assert (close.sum(dim=1) == 1).all(), close
    return close.int().argmax(dim=1).tolist()


def _memory(**kwargs: int) -> ClassMemory:
    torch.manual_seed(0)
    return ClassMemory(num_classes=3, dim=2, **kwargs)


def test_class_memory_buffers_and_init() -> None:
    memory = _memory(pixel_size=5, region_size=3, pixels_per_class=2)
    state = memory.state_dict()
    assert set(state) == {"pixel_queue", "region_queue", "pixel_ptr", "region_ptr"}
    assert state["pixel_queue"].shape == (3, 5, 2) and state["region_queue"].shape == (3, 3, 2)
    assert state["pixel_ptr"].dtype == torch.long and state["pixel_ptr"].tolist() == [0, 0, 0]
    torch.testing.assert_close(memory.pixel_queue.norm(dim=2), torch.ones(3, 5))
    torch.testing.assert_close(memory.region_queue.norm(dim=2), torch.ones(3, 3))
    default = ClassMemory(19, 1)
    assert default.pixel_queue.shape == (19, 20000, 1) and default.region_queue.shape == (19, 2000, 1)
    assert default.pixels_per_class == 16


def test_class_memory_enqueue_regions_and_pixels() -> None:
    memory = _memory(pixel_size=5, region_size=3, pixels_per_class=2)
    before_pixels, before_regions = memory.pixel_queue.clone(), memory.region_queue.clone()
    emb = F.normalize(torch.randn(2, 2, 2, 2, generator=torch.Generator().manual_seed(3)), dim=1)
    labels = torch.tensor([[[0, 0], [1, 255]], [[0, 2], [2, 2]]])
    memory.enqueue(emb, labels, generator=torch.Generator().manual_seed(4))
    pix = emb.flatten(2).transpose(1, 2)  # B×P×D

    def region(b: int, positions: list[int]) -> torch.Tensor:
        return F.normalize(pix[b, positions].mean(0), dim=0)

    torch.testing.assert_close(memory.region_queue[0, 0], region(0, [0, 1]))
    torch.testing.assert_close(memory.region_queue[0, 1], region(1, [0]))
    torch.testing.assert_close(memory.region_queue[1, 0], region(0, [2]))
    torch.testing.assert_close(memory.region_queue[2, 0], region(1, [1, 2, 3]))
    assert memory.region_ptr.tolist() == [2, 1, 1]
    # Pixels (official quirk: a permutation of range(#class pixels) indexes the image): class 0 gets image 0's
    # positions 0-1, then image 1's position 0; class 1 (1 pixel) gets image 0's position 0; class 2 (3 pixels)
    # gets 2 of image 1's positions 0-2.
    assert memory.pixel_ptr.tolist() == [3, 1, 2]
    assert sorted(_which(memory.pixel_queue[0, :2], pix[0])) == [0, 1]
    torch.testing.assert_close(memory.pixel_queue[0, 2], pix[1, 0])
    torch.testing.assert_close(memory.pixel_queue[1, 0], pix[0, 0])
    written2 = _which(memory.pixel_queue[2, :2], pix[1])
    assert len(set(written2)) == 2 and set(written2) <= {0, 1, 2}
    # Slots past each pointer are untouched; ignore pixels (image 0, position 3) are never written.
    torch.testing.assert_close(memory.pixel_queue[0, 3:], before_pixels[0, 3:])
    torch.testing.assert_close(memory.pixel_queue[1, 1:], before_pixels[1, 1:])
    torch.testing.assert_close(memory.region_queue[1, 1:], before_regions[1, 1:])
    assert not torch.isclose(memory.pixel_queue, pix[0, 3], rtol=1e-5, atol=1e-6).all(dim=2).any()


def test_class_memory_enqueue_is_reproducible_with_generator() -> None:
    emb = F.normalize(torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(5)), dim=1)
    labels = torch.randint(0, 3, (2, 3, 3), generator=torch.Generator().manual_seed(6))
    a, b = _memory(pixel_size=5, pixels_per_class=2), _memory(pixel_size=5, pixels_per_class=2)
    a.enqueue(emb, labels, generator=torch.Generator().manual_seed(7))
    b.enqueue(emb, labels, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.pixel_queue, b.pixel_queue)


def test_class_memory_wraparound() -> None:
    memory = _memory(pixel_size=5, region_size=3, pixels_per_class=2)
    labels = torch.zeros(1, 1, 2, dtype=torch.long)  # two class-0 pixels per call
    writes, pointers = [], []
    for step in range(4):
        emb = F.normalize(torch.tensor([[[[1.0 + step, 0.5]], [[1.0, -0.5 - step]]]]), dim=1)
        memory.enqueue(emb, labels)
        writes.append(emb.flatten(2)[0].T)  # the call's 2 pixel embeddings, 2×D
        pointers.append((int(memory.pixel_ptr[0]), int(memory.region_ptr[0])))
    every = torch.cat(writes)  # row 2·step + k is pixel k of call `step`
    # Pixel queue (size 5, 2 per call): ptr 0→2→4; at 4, 4+2 ≥ 5 so the last 2 slots are written and ptr = 0.
    # Region queue (size 3, 1 per call): ptr 0→1→2; at 2, 2+1 ≥ 3 so the last slot is written and ptr = 0.
    assert pointers == [(2, 1), (4, 2), (0, 0), (2, 1)]
    calls = [row // 2 for row in _which(memory.pixel_queue[0], every)]
    assert calls == [3, 3, 1, 2, 2]
    assert sorted(_which(memory.pixel_queue[0, 3:], every)) == [4, 5]
    means = [F.normalize(w.mean(0), dim=0) for w in writes]
    torch.testing.assert_close(memory.region_queue[0], torch.stack([means[3], means[1], means[2]]))


def _reference_memory_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, queue: torch.Tensor,
                           index: list[int], tau: float) -> float:
    """Explicit loops over anchors and contrasts."""
    contrasts = [queue[k, m] for k in range(queue.shape[0]) for m in index]
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for y in range(labels.shape[1]):
            for x in range(labels.shape[2]):
                if labels[b, y, x] == 255:
                    continue
                s_row = [_dot(student[b, :, y, x], c) / tau for c in contrasts]
                t_row = [_dot(teacher[b, :, y, x], c) / tau for c in contrasts]
                total += _kl_rows(t_row, s_row)
                count += 1
    return total / count


def _embeddings(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = F.normalize(torch.randn(2, 2, 2, 2, generator=g, dtype=torch.float64), dim=1)
    teacher = F.normalize(torch.randn(2, 2, 2, 2, generator=g, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(3, 5, 2, generator=g, dtype=torch.float64), dim=2)
    labels = torch.tensor([[[0, 255], [1, 2]], [[2, 2], [255, 0]]])
    return student, teacher, labels, queue


def test_memory_contrast_loss_matches_loops() -> None:
    student, teacher, labels, queue = _embeddings(8)
    loss = memory_contrast_loss(student, teacher, labels, queue, samples_per_class=2, tau=0.5,
                                generator=torch.Generator().manual_seed(9))
    index = torch.randperm(5, generator=torch.Generator().manual_seed(9))[:2].tolist()
    expected = _reference_memory_loss(student, teacher, labels, queue, index, 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    # A different seed samples different slots, hence (generically) a different value.
    other = memory_contrast_loss(student, teacher, labels, queue, samples_per_class=2, tau=0.5,
                                 generator=torch.Generator().manual_seed(10))
    other_index = torch.randperm(5, generator=torch.Generator().manual_seed(10))[:2].tolist()
    assert sorted(other_index) != sorted(index)
    assert other.item() == pytest.approx(_reference_memory_loss(student, teacher, labels, queue, other_index, 0.5))


def test_memory_contrast_loss_ignores_void_pixels() -> None:
    student, teacher, labels, queue = _embeddings(11)
    base = memory_contrast_loss(student, teacher, labels, queue, 2, generator=torch.Generator().manual_seed(0))
    void = labels == 255
    student2, teacher2 = student.clone(), teacher.clone()
    student2.permute(0, 2, 3, 1)[void] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    teacher2.permute(0, 2, 3, 1)[void] = torch.tensor([1.0, 0.0], dtype=torch.float64)
    moved = memory_contrast_loss(student2, teacher2, labels, queue, 2, generator=torch.Generator().manual_seed(0))
    assert moved.item() == pytest.approx(base.item(), rel=1e-12)


def test_memory_contrast_loss_zero_cases_and_gradient() -> None:
    student, teacher, labels, queue = _embeddings(12)
    assert memory_contrast_loss(teacher, teacher.clone(), labels, queue, 2).item() == pytest.approx(0.0, abs=1e-12)
    all_void = torch.full_like(labels, 255)
    leaf = student.clone().requires_grad_(True)
    empty = memory_contrast_loss(leaf, teacher, all_void, queue, 2)
    assert empty.item() == 0.0 and empty.requires_grad
    empty.backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() == 0
    leaf, teacher_leaf = student.clone().requires_grad_(True), teacher.clone().requires_grad_(True)
    memory_contrast_loss(leaf, teacher_leaf, labels, queue, 2).backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    assert teacher_leaf.grad is None


def test_official_contrast_sizes() -> None:
    assert (PIXEL_CONTRAST_SIZE, REGION_CONTRAST_SIZE) == (216, 54)


def test_student_projector_layout() -> None:
    projector = StudentProjector(3, 5)
    assert projector(torch.randn(2, 3, 4, 4)).shape == (2, 5, 4, 4)
    assert [name for name, _ in projector.named_parameters()] == ["0.weight", "1.weight", "1.bias", "3.weight"]
    assert isinstance(projector[1], torch.nn.BatchNorm2d) and isinstance(projector[2], torch.nn.ReLU)
