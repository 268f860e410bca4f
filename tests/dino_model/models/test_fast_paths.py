"""Per-device attention choice: the table's choices, and that both paths compute the same function."""

import copy

import pytest
import torch

from dino_model.config import ModelConfig
from dino_model.models import fast_paths
from dino_model.models.backbone import build_backbone
from dino_model.models.fast_paths import FUSED, MATMUL, apply_fast_paths, attention_impl, use_attention

TINY = ModelConfig(arch="vit_tiny", patch_size=4, img_size=32, depth=2, embed_dim=64, num_heads=2, drop_path_rate=0.0)


@pytest.mark.parametrize(("device", "dtype", "impl"), [
    ("cpu", torch.bfloat16, MATMUL),
    ("cpu", torch.float32, FUSED),
    ("cuda", torch.bfloat16, FUSED),
    ("cuda", torch.float16, FUSED),
    ("cuda", torch.float32, FUSED),
    ("mps", torch.float16, FUSED),  # not measured: the library default
])
def test_the_measured_choice_per_device_and_dtype(device: str, dtype: torch.dtype, impl: str) -> None:
    assert attention_impl(device, dtype) == impl


def test_a_dtype_name_is_refused() -> None:
    with pytest.raises(TypeError, match="torch.dtype"):
        attention_impl("cpu", "bf16")


def test_use_attention_sets_every_layer_and_refuses_unknown_names() -> None:
    model, _ = build_backbone(TINY)
    assert use_attention(model, MATMUL) == 2
    assert [b.attn.fused_attn for b in model.blocks] == [False, False]
    assert use_attention(model, FUSED) == 2
    assert all(b.attn.fused_attn for b in model.blocks)
    with pytest.raises(ValueError, match="flash"):
        use_attention(model, "flash")


def test_apply_fast_paths_follows_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = build_backbone(TINY)[0], build_backbone(TINY)[0]
    assert apply_fast_paths([a, b], torch.device("cpu"), torch.bfloat16) == MATMUL
    assert not any(blk.attn.fused_attn for m in (a, b) for blk in m.blocks)
    monkeypatch.setitem(fast_paths.ATTENTION, ("cpu", torch.bfloat16), FUSED)
    assert apply_fast_paths([a], torch.device("cpu"), torch.bfloat16) == FUSED
    assert all(blk.attn.fused_attn for blk in a.blocks)


def _forward_backward(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> tuple:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = model(x)
    (out.float() ** 2).sum().backward()
    return out.detach().double(), {n: p.grad.double() for n, p in model.named_parameters()}


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).norm() / ref.norm())


def test_matmul_and_fused_attention_agree_with_an_fp64_reference_in_bf16() -> None:
    """Both paths under bf16 autocast are within bf16 rounding of the exact (fp64) function, and of each other."""
    torch.manual_seed(0)
    fused, _ = build_backbone(TINY)
    plain, exact = copy.deepcopy(fused), copy.deepcopy(fused).double()
    use_attention(plain, MATMUL)
    use_attention(exact, MATMUL)
    x = torch.randn(4, 3, 32, 32)
    ref_out, ref_grads = _forward_backward(exact, x.double(), None)
    results = {impl: _forward_backward(m, x, torch.bfloat16) for impl, m in ((FUSED, fused), (MATMUL, plain))}
    for out, grads in results.values():
        assert _rel_err(out, ref_out) < 2e-2  # bf16 keeps 8 bits: 2^-8 = 0.4% per rounding
        for name, g in grads.items():
            assert _rel_err(g, ref_grads[name]) < 5e-2, name
    (out_f, grads_f), (out_m, grads_m) = results[FUSED], results[MATMUL]
    assert _rel_err(out_m, out_f) < 2e-2
    assert max(_rel_err(grads_m[n], grads_f[n]) for n in grads_f) < 5e-2
    assert not torch.equal(out_m, out_f)  # the switch took effect: two different kernels ran


def test_in_fp32_both_paths_are_equal_to_fp32_rounding() -> None:
    torch.manual_seed(0)
    fused, _ = build_backbone(TINY)
    plain = copy.deepcopy(fused)
    use_attention(plain, MATMUL)
    x = torch.randn(2, 3, 16, 16)
    (out_f, grads_f), (out_m, grads_m) = (_forward_backward(m, x, None) for m in (fused, plain))
    assert _rel_err(out_m, out_f) < 1e-6  # fp32 keeps 24 bits: only summation order differs
    assert max(_rel_err(grads_m[n], grads_f[n]) for n in grads_f) < 1e-3  # small grads (cls token) lose more


@pytest.mark.parametrize(("precision", "fused"), [("bf16", False), ("fp32", True)])
def test_the_trainer_uses_the_choice_for_its_device_and_precision(precision: str, fused: bool) -> None:
    from dino_model.config import load_config
    from dino_model.runtime.distributed import DistInfo
    from dino_model.train.loop import build_trainer

    cfg = load_config("tiny", overrides=[f"train.precision={precision}", "train.cpu_keep_freed_memory=false"])
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    t = build_trainer(cfg, dist, steps_per_epoch=1)
    layers = [b.attn for m in (t.student_module, t.teacher_module) for b in m.backbone.blocks]
    assert len(layers) == 4 and all(layer.fused_attn is fused for layer in layers)
