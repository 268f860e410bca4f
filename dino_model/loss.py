"""DINO loss: cross-entropy from a centred, sharpened teacher to the student.

The loss owns the teacher centre (an EMA of batch means, all-reduced across processes) so that
centring and the cross-entropy always see the same statistics. Caron et al., ICCV 2021, Alg. 1;
the pairing (each global teacher view teaches every other student view) and the per-epoch teacher
temperature follow the official `main_dino.DINOLoss`.

At K = 65536 prototypes every pass over the (ncrops * B, K) student logits costs milliseconds and
the loss is memory-bound, so the student side has a hand-written backward (`_StudentCrossEntropy`):
the gradient (w_v - c_v softmax(s_v / tau)) / tau is written straight into the logits' dtype from
the saved log-probabilities, instead of autograd's chain through the crop sums, a zero-filled
slice gradient, log-softmax, division and cast; the scaling by 1 / tau is done in place on the fp32 copy.
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
        t = torch.sub(teacher_output.detach(), self.center).div_(self.teacher_temp(epoch))  # fp32 from any dtype
        return t.log_softmax(dim=-1).view(self.n_global, -1, t.shape[-1])

    def forward(self, student_output: Tensor, teacher_output: Tensor, epoch: int) -> Tensor:
        """Loss for student logits ((ncrops)*B, K) and teacher logits (n_global*B, K); updates the centre."""
        batch = teacher_output.shape[0] // self.n_global
        if student_output.shape[0] != self.ncrops * batch:
            raise ValueError(
                f"student output has {student_output.shape[0]} rows, expected ncrops*B = "
                f"{self.ncrops}*{batch}"
            )
        log_p_t = self.teacher_log_probs(teacher_output, epoch)
        p_t = log_p_t.exp()
        cross = _StudentCrossEntropy.apply(student_output, p_t, self.student_temp, self.ncrops)
        loss = -cross / (batch * self.n_pairs())
        with torch.no_grad():
            self.last_teacher_entropy = -(p_t * log_p_t).sum(-1).mean()
        self.update_center(teacher_output)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        """center <- m * center + (1 - m) * mean of the teacher logits over all processes."""
        # fp32 for bf16 / fp16 logits, the working dtype (fp64) when it is wider
        dtype = torch.promote_types(torch.promote_types(teacher_output.dtype, self.center.dtype), torch.float32)
        batch_sum = all_reduce_sum(teacher_output.sum(dim=0, keepdim=True, dtype=dtype))
        batch_center = batch_sum / (teacher_output.shape[0] * world_size())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


class _StudentCrossEntropy(torch.autograd.Function):
    """sum over teacher views a, student views v != a and rows b of <p_t[a, b], log softmax(s[v, b] / tau)>.

    Each student view v has the weight w_v = sum_{a != v} p_t[a] and c_v = sum_k w_v = the number of
    its teachers, so the gradient with respect to its logits is (w_v - c_v softmax(s_v / tau)) / tau.
    Inputs: student logits (ncrops * B, K) in any float dtype, teacher probabilities (n_global, B, K)
    (no gradient). Arithmetic is fp32 or wider; the gradient comes back in the logits' dtype.
    """

    @staticmethod
    def forward(ctx, student_output: Tensor, p_t: Tensor, temp: float, ncrops: int) -> Tensor:  # noqa: ANN001
        n_global, batch, k = p_t.shape
        dtype = torch.promote_types(torch.promote_types(student_output.dtype, p_t.dtype), torch.float32)
        z = student_output.to(dtype, memory_format=torch.contiguous_format, copy=True).mul_(1.0 / temp)
        log_q = z.log_softmax(dim=-1).view(ncrops, batch, k)
        p_sum = p_t.sum(dim=0)  # the weight of a local view: every teacher view
        # each student view v is taught by every teacher view a != v: all (a, v) pairs minus a == v
        cross = (p_sum * log_q.sum(dim=0)).sum() - (p_t * log_q[:n_global]).sum()
        counts = torch.full((ncrops, 1, 1), float(n_global), dtype=dtype, device=z.device)
        counts[:n_global] -= 1  # a global view is not taught by itself
        ctx.save_for_backward(log_q, counts, p_t, p_sum)
        ctx.temp, ctx.dtype = temp, student_output.dtype
        return cross

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:  # noqa: ANN001
        log_q, counts, p_t, p_sum = ctx.saved_tensors
        g = log_q.exp().mul_(counts)  # c_v softmax(z_v)
        g.sub_(p_sum)
        g[: p_t.shape[0]].add_(p_t)  # c_v softmax(z_v) - w_v
        g.mul_(-grad / ctx.temp)  # d cross / d s = (w_v - c_v softmax) / tau, scaled in place
        # then cast by a plain copy: a multiply with an output of another dtype took 29 ms on CPU for
        # (8, 32, 65536), the in-place multiply and the copy 4 ms together
        out = torch.empty(g.shape, dtype=ctx.dtype, device=g.device).copy_(g) if ctx.dtype != g.dtype else g
        return out.view(-1, g.shape[-1]), None, None, None
