"""The shared building blocks: the fast Mish, the Adam factory and the gradient clip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pwm_bench.nn import ACTIVATIONS, Mish, adam, clip_grad_norm_


def test_mish_matches_torch_in_value_and_gradient_over_the_float32_range() -> None:
    x = torch.cat([torch.linspace(-120.0, 120.0, 240_001), torch.tensor([0.0, -0.0, 1e-30, -1e-30])])
    mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = Mish()(mine), F.mish(ref)
    y.sum().backward()
    y_ref.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(mine.grad).all()
    assert (y - y_ref).abs().max() <= 1e-6 * (1 + y_ref.abs()).max()
    assert torch.allclose(y, y_ref, rtol=1e-6, atol=1e-7)
    assert torch.allclose(mine.grad, ref.grad, rtol=1e-5, atol=3e-6)
    assert torch.equal(y[x > 30], x[x > 30])  # the identity far right, no overflow


def test_mish_gradient_is_the_derivative_in_float64() -> None:
    x = (torch.randn(64, dtype=torch.float64) * 6).requires_grad_()
    assert torch.autograd.gradcheck(Mish(), (x,))
    y_ref = F.mish(x.detach())
    assert torch.allclose(Mish()(x).detach(), y_ref, rtol=1e-12, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(st.floats(-60.0, 60.0, allow_nan=False))
def test_mish_agrees_with_torch_at_any_point(v: float) -> None:
    x = torch.tensor([v], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(Mish()(x).sum(), x)
    xr = x.detach().clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(F.mish(xr).sum(), xr)
    assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-12)


def test_the_networks_use_the_fast_mish() -> None:
    from pwm_bench.world_model import WorldModel, WorldModelConfig

    assert ACTIVATIONS["mish"] is Mish
    wm = WorldModel(5, 2, WorldModelConfig(latent_dim=16, enc_hidden=(32,), mlp_hidden=(32,)))
    kinds = {type(m) for m in wm.modules()}
    assert Mish in kinds and nn.Mish not in kinds


def test_adam_is_fused_on_cpu_and_steps_as_the_single_tensor_adam() -> None:
    torch.manual_seed(0)
    a = nn.Linear(7, 3)
    b = nn.Linear(7, 3)
    b.load_state_dict(a.state_dict())
    fast = adam([{"params": [a.weight], "lr": 1e-3}, {"params": [a.bias]}], lr=3e-3, betas=(0.7, 0.95))
    slow = torch.optim.Adam([{"params": [b.weight], "lr": 1e-3}, {"params": [b.bias]}], lr=3e-3, betas=(0.7, 0.95))
    assert fast.defaults["fused"] is True
    for _ in range(20):
        x = torch.randn(11, 7)
        for net, opt in ((a, fast), (b, slow)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    assert torch.allclose(a.weight, b.weight, rtol=1e-5, atol=1e-7)
    assert not torch.equal(a.weight, nn.Linear(7, 3).weight)


def test_a_single_tensor_adam_checkpoint_restores_the_single_tensor_path() -> None:
    net = nn.Linear(3, 2)
    old = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(4, 3)).sum().backward()
    old.step()
    new = adam(net.parameters(), lr=1e-3)
    new.load_state_dict(old.state_dict())
    assert not new.param_groups[0]["fused"]


def _grads(values: list[list[float]]) -> list[nn.Parameter]:
    params = [nn.Parameter(torch.zeros(len(v))) for v in values]
    for p, v in zip(params, values, strict=True):
        p.grad = torch.tensor(v)
    return params


def test_clip_equals_torch_when_the_gradients_are_finite() -> None:
    mine, ref = _grads([[3.0, 4.0], [12.0]]), _grads([[3.0, 4.0], [12.0]])
    n = clip_grad_norm_(mine, 6.5, nonfinite_to_zero=True)
    n_ref = nn.utils.clip_grad_norm_(ref, 6.5)
    assert float(n) == pytest.approx(13.0) and torch.equal(n, n_ref)
    for p, q in zip(mine, ref, strict=True):
        assert torch.equal(p.grad, q.grad)


def test_clip_zeroes_nonfinite_entries_first_when_asked() -> None:
    params = _grads([[3.0, float("nan")], [float("inf"), 4.0]])
    n = clip_grad_norm_(params, 100.0, nonfinite_to_zero=True)
    assert float(n) == pytest.approx(5.0)
    assert params[0].grad.tolist() == [3.0, 0.0] and params[1].grad.tolist() == [0.0, 4.0]
    kept = _grads([[3.0, float("nan")]])
    assert not torch.isfinite(clip_grad_norm_(kept, 1.0))  # without the flag, torch's behaviour
