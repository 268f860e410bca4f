"""DINO loss: cross-entropy from a centred, sharpened teacher to the student.

The loss owns the teacher centre (an EMA of batch means, all-reduced across processes) so that
centring and the cross-entropy always see the same statistics. Caron et al., ICCV 2021, Alg. 1;
the pairing (each global teacher view teaches every other student view) and the per-epoch teacher
temperature follow the official `main_dino.DINOLoss`.
"""

import numpy as np
import torch
from torch import Tensor, nn

from dino_model.runtime.distributed import all_reduce_sum, world_size


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Teacher temperature for each epoch: linspace(warmup_temp, temp, warmup_epochs), then temp."""
    return np.concatenate(
        (np.linspace(warmup_temp, temp, warmup_epochs), np.ones(epochs - warmup_epochs) * temp)
    )


class DINOLoss(nn.Module):
    """Mean over (teacher view a, student view v != a) pairs of H(P_t^a, P_s^v).

    Args:
        out_dim: K, the head's output size.
        ncrops: number of student views (2 globals + locals), in crop-major order.
        epochs: length of the teacher-temperature schedule.
    """

    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        *,
        epochs: int,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        n_global: int = 2,
    ) -> None:
        super().__init__()
        self.ncrops = ncrops
        self.n_global = n_global
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temps = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, epochs
        )
        self.last_teacher_entropy = torch.tensor(0.0)

    def n_pairs(self) -> int:
        return self.n_global * (self.ncrops - 1)

    def teacher_temp(self, epoch: int) -> float:
        return float(self.teacher_temps[min(epoch, len(self.teacher_temps) - 1)])

    def teacher_log_probs(self, teacher_output: Tensor, epoch: int) -> Tensor:
        """log softmax((t - c) / tau_t), shape (n_global, B, K); log-space gives the entropy without a log pass."""
        t = (teacher_output.float() - self.center) / self.teacher_temp(epoch)
        return t.log_softmax(dim=-1).detach().view(self.n_global, -1, t.shape[-1])

    def forward(self, student_output: Tensor, teacher_output: Tensor, epoch: int) -> Tensor:
        """Loss for student logits ((ncrops)*B, K) and teacher logits (n_global*B, K); updates the centre."""
        batch = teacher_output.shape[0] // self.n_global
        if student_output.shape[0] != self.ncrops * batch:
            raise ValueError(
                f"student output has {student_output.shape[0]} rows, expected ncrops*B = "
                f"{self.ncrops}*{batch}"
            )
        log_p_s = (student_output.float() / self.student_temp).log_softmax(dim=-1)
        log_p_s = log_p_s.view(self.ncrops, batch, -1)
        log_p_t = self.teacher_log_probs(teacher_output, epoch)
        p_t = log_p_t.exp()
        # Each student view v is taught by every teacher view a != v: sum over all (a, v), then remove
        # the a == v terms. No (ncrops, B, K) weight tensor: at K = 65536 that pass is memory-bound.
        all_pairs = (p_t.sum(dim=0) * log_p_s.sum(dim=0)).sum()
        same_view = (p_t * log_p_s[: self.n_global]).sum()
        loss = -(all_pairs - same_view) / (batch * self.n_pairs())
        with torch.no_grad():
            self.last_teacher_entropy = -(p_t * log_p_t).sum(-1).mean()
        self.update_center(teacher_output)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        """center <- m * center + (1 - m) * mean of the teacher logits over all processes."""
        batch_sum = all_reduce_sum(teacher_output.float().sum(dim=0, keepdim=True))
        batch_center = batch_sum / (teacher_output.shape[0] * world_size())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
