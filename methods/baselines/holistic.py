"""The adversarial ("holistic") term CIRKD adds to its SKD, IFVD and CWD recipes (skd_ifvd_reference §0).

The student is penalised by adv_weight·hinge_G(D(z_s)); after the student's optimizer step the
discriminator takes its own Adam step (lr 4e-4, betas (0.9, 0.99), no schedule, no weight decay) on
d_weight·hinge_D(D(z_t), D(z_s)) computed from the same forward pass's detached logits, i.e. on the
student as it was before its update, as the official `train_kd.py` does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from methods.baselines.adversarial import LogitDiscriminator, hinge_discriminator_loss, hinge_generator_loss


class AdversarialTerm(nn.Module):
    """Discriminator + its optimizer; the optimizer state rides in the module's state dict (exact resume)."""

    def __init__(self, num_classes: int, adv_weight: float = 0.001, d_weight: float = 0.1, lr: float = 4e-4,
                 betas: tuple[float, float] = (0.9, 0.99)) -> None:
        super().__init__()
        self.adv_weight, self.d_weight = adv_weight, d_weight
        self.discriminator = LogitDiscriminator(num_classes)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def generator_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """adv_weight·hinge_G(D(z_s)); keeps detached logits for the discriminator's step."""
        self._pending = (student_logits.detach(), teacher_logits.detach())
        return self.adv_weight * hinge_generator_loss(self.discriminator(student_logits))

    def step(self) -> float:
        """One discriminator step on the logits kept by the last `generator_loss`; returns its loss."""
        if self._pending is None:
            return float("nan")
        student_logits, teacher_logits = self._pending
        self._pending = None
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.d_weight * hinge_discriminator_loss(self.discriminator(teacher_logits.float()),
                                                        self.discriminator(student_logits.float()))
        loss.backward()
        if torch_dist.is_available() and torch_dist.is_initialized():  # outside DDP's forward: sync by hand
            for p in self.discriminator.parameters():
                if p.grad is not None:
                    torch_dist.all_reduce(p.grad)
                    p.grad /= torch_dist.get_world_size()
        self.optimizer.step()
        return float(loss.detach())

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
