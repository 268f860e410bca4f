"""DINO projection head: MLP, L2 normalisation, and a weight-normalised prototype layer.

Caron et al., ICCV 2021, Sec. 3.1; defaults from the official `vision_transformer.DINOHead`.
The last layer uses the current weight-norm parametrisation (`parametrizations.weight.original0`
is the official `weight_g`, `original1` is `weight_v`); `official_checkpoint.py` maps the names.
With `norm_last_layer` the norm g is frozen at 1, so the logits are cosine similarities.
"""

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """Projects backbone features (B, in_dim) to prototype logits (B, out_dim)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            for _ in range(nlayers - 2):
                layers += _norm_act(hidden_dim, use_bn) + [nn.Linear(hidden_dim, hidden_dim)]
            layers += _norm_act(hidden_dim, use_bn) + [nn.Linear(hidden_dim, bottleneck_dim)]
            self.mlp = nn.Sequential(*layers)
        self.apply(_init_linear)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad = not norm_last_layer

    def forward(self, x: Tensor) -> Tensor:
        x = self.mlp(x)
        x = nn.functional.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


def _norm_act(dim: int, use_bn: bool) -> list[nn.Module]:
    return ([nn.BatchNorm1d(dim)] if use_bn else []) + [nn.GELU()]


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
