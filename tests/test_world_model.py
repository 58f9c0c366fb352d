"""The latent world model: sizes, SimNorm, two-hot regression, losses, gradients, variants."""

from __future__ import annotations

import math

import pytest
import torch

from pwm_bench.errors import UsageError
from pwm_bench.testing import fd_gradient_check
from pwm_bench.world_model import (
    SimNorm,
    WorldModel,
    consistency_loss,
    model_config,
    parameter_count,
    soft_ce,
    symexp,
    symlog,
    two_hot,
    two_hot_inv,
    world_model_loss,
)


@pytest.mark.parametrize(
    ("size", "obs", "act", "tasks", "task_dim", "expected"),
    [
        # PWM single-task dflex models: about 1.46 M (hopper) to 1.62 M (SNU humanoid)
        ("pwm", 11, 3, 1, 0, 1.46e6),
        ("pwm", 53, 152, 1, 0, 1.62e6),
        # TD-MPC2 single-task 5M: walker-walk 4.96 M, dog-run 5.16 M
        ("5M", 24, 6, 1, 0, 4.96e6),
        ("5M", 223, 38, 1, 0, 5.16e6),
        # TD-MPC2 multi-task MT80 (obs 39, act 6, 80 tasks, task_dim 96)
        ("1M", 39, 6, 80, 96, 1.44e6),
        ("5M", 39, 6, 80, 96, 5.39e6),
        ("19M", 39, 6, 80, 96, 18.97e6),
        ("48M", 39, 6, 80, 96, 48.79e6),
    ],
)
def test_parameter_counts_match_the_reference_models(size, obs, act, tasks, task_dim, expected) -> None:
    cfg = model_config(size, num_tasks=tasks, task_dim=task_dim)
    with torch.device("meta"):  # count without allocating the large models
        n = parameter_count(WorldModel(obs, act, cfg))
    assert abs(n - expected) / expected < 0.005, n


def test_shapes_and_latents_are_simplices() -> None:
    m = WorldModel(11, 3, model_config("5M", latent_dim=64, mlp_hidden=(32, 32), enc_hidden=(32,)))
    obs, act = torch.randn(7, 11), torch.randn(7, 3)
    z = m.encode(obs)
    assert z.shape == (7, 64)
    groups = z.reshape(7, 8, 8)
    torch.testing.assert_close(groups.sum(-1), torch.ones(7, 8))
    assert (groups >= 0).all()
    z2 = m.next(z, act)
    assert z2.shape == (7, 64) and torch.allclose(z2.reshape(7, 8, 8).sum(-1), torch.ones(7, 8))
    assert m.reward_logits(z, act).shape == (7, 101) and m.reward(z, act).shape == (7,)
    assert m.q_logits(z, act).shape == (5, 7, 101)
    a, mean = m.policy(z)
    assert a.shape == mean.shape == (7, 3) and a.abs().max() <= 1
    # zero-initialised heads predict reward 0 (uniform over symmetric bins) and bin logits 0
    assert torch.allclose(m.reward(z, act), torch.zeros(7), atol=1e-6)


def test_simnorm_groups_sum_to_one() -> None:
    x = torch.randn(4, 5, 24) * 10
    y = SimNorm(8)(x)
    torch.testing.assert_close(y.reshape(4, 5, 3, 8).sum(-1), torch.ones(4, 5, 3))


def test_symlog_symexp_round_trip() -> None:
    x = torch.tensor([-1e4, -3.0, -0.5, 0.0, 0.25, 7.0, 2e4], dtype=torch.float64)
    torch.testing.assert_close(symexp(symlog(x)), x)
    assert symlog(torch.tensor(0.0)) == 0 and torch.sign(symlog(x)).equal(torch.sign(x))


def test_two_hot_round_trip_and_clamping() -> None:
    y = torch.tensor([-5000.0, -20.0, -1.3, 0.0, 0.1, 3.7, 100.0, 1e6], dtype=torch.float64)
    enc = two_hot(y, 101, -10.0, 10.0)
    torch.testing.assert_close(enc.sum(-1), torch.ones(len(y), dtype=torch.float64))
    assert ((enc > 0).sum(-1) <= 2).all()
    centers = torch.linspace(-10, 10, 101, dtype=torch.float64)
    torch.testing.assert_close((enc * centers).sum(-1), symlog(y).clamp(-10, 10))
    # logits equal to log(two-hot) decode back to y (inside the support)
    inside = y.abs() < 2e4
    logits = torch.log(enc[inside] + 1e-30)
    torch.testing.assert_close(two_hot_inv(logits, -10.0, 10.0), y[inside], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(two_hot_inv(logits, -10.0, 10.0, symlog_space=True), symlog(y[inside]))


def test_soft_cross_entropy_is_smallest_at_the_target() -> None:
    target = torch.tensor([2.5])
    good = torch.log(two_hot(target, 101, -10, 10) + 1e-12)
    bad = torch.log(two_hot(torch.tensor([-2.5]), 101, -10, 10) + 1e-12)
    assert soft_ce(good, target, -10, 10) < soft_ce(bad, target, -10, 10)


def test_consistency_loss_weights_steps_by_rho() -> None:
    g = torch.Generator().manual_seed(0)
    pred, tgt = torch.randn(4, 3, 8, generator=g), torch.randn(4, 3, 8, generator=g)
    rho = 0.5
    direct = sum(rho**t * ((pred[t] - tgt[t]) ** 2).mean() for t in range(4)) / 4
    torch.testing.assert_close(consistency_loss(pred, tgt, rho), direct)
    # the target gets no gradient
    tgt.requires_grad_(True)
    consistency_loss(pred.requires_grad_(True), tgt, rho).backward()
    assert tgt.grad is None and pred.grad is not None


@pytest.mark.parametrize("num_bins", [0, 101])
def test_reward_of_a_latent_rollout_has_exact_action_gradients(num_bins: int) -> None:
    """d(Σ_t R(z_t, a_t))/da through H = 8 dynamics steps equals central differences (float64)."""
    torch.manual_seed(0)
    cfg = model_config("pwm", latent_dim=32, enc_hidden=(32,), mlp_hidden=(32, 32), num_bins=num_bins)
    m = WorldModel(5, 2, cfg).double()
    for p in m.parameters():  # a trained-looking model: non-zero reward head
        p.data.add_(0.1 * torch.randn_like(p))
    z0 = m.encode(torch.randn(3, 5, dtype=torch.float64)).detach()

    def fn(actions: torch.Tensor) -> torch.Tensor:
        z, total = z0, torch.zeros((), dtype=torch.float64)
        for t in range(actions.shape[0]):
            total = total + m.reward(z, actions[t]).sum()
            z = m.next(z, actions[t])
        return total

    report = fd_gradient_check(fn, torch.rand(8, 3, 2, dtype=torch.float64) * 2 - 1, eps=1e-6, n_directions=8)
    assert report.max_rel_error < 1e-6, report


@pytest.mark.parametrize("variant", ["simnorm", "mish", "relu"])
def test_variants_train_on_a_linear_system(variant: str) -> None:
    """Each ablation variant fits a small linear system: its loss falls by at least half in 150 steps."""
    torch.manual_seed(0)
    cfg = model_config("pwm", latent_dim=32, enc_hidden=(64,), mlp_hidden=(64, 64), variant=variant)
    m = WorldModel(4, 2, cfg)
    if variant == "relu":
        assert not any(isinstance(x, torch.nn.LayerNorm) for x in m.modules())
    if variant == "mish":
        assert not any(isinstance(x, SimNorm) for x in m.modules())
    A = torch.tensor([[1.0, 0.05, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0.05], [0, 0, 0, 1.0]])
    B = torch.tensor([[0.0, 0], [0.05, 0], [0, 0], [0, 0.05]])
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)

    def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        o = [torch.randn(64, 4)]
        a = torch.rand(5, 64, 2) * 2 - 1
        r = []
        for t in range(5):
            r.append(-(o[-1] ** 2).sum(-1) - 0.1 * (a[t] ** 2).sum(-1))
            o.append(o[-1] @ A.T + a[t] @ B.T)
        return torch.stack(o), a, torch.stack(r)

    losses = []
    for _ in range(150):
        loss = world_model_loss(m, *batch(), rho=0.99)
        opt.zero_grad()
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 20.0)
        opt.step()
        losses.append(float(loss.reward))
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_bad_configs_are_rejected() -> None:
    with pytest.raises(UsageError, match="valid"):
        model_config("7M")
    with pytest.raises(UsageError, match="simnorm_dim"):
        model_config("pwm", latent_dim=100)
    with pytest.raises(UsageError, match="variant"):
        model_config("pwm", variant="gelu")
    with pytest.raises(UsageError, match="num_bins"):
        model_config("pwm", num_q=2)


def test_pwm_world_model_loss_is_the_reference_formula_on_normalised_rewards() -> None:
    """PWM's loss ``[Σ_t ρ^t MSE(ẑ_{t+1}, h(o_{t+1})) + mean_t ρ^t mean_b (R_t − r̃_t)²] / H`` with
    ``r̃ = clamp((r − μ)/σ, ±5)``, computed by hand on a tiny model, equals what pretraining and
    online fine-tuning minimise."""
    from pwm_bench.pretrain import PretrainConfig
    from pwm_bench.pwm import PWMConfig
    from pwm_bench.pwm.single_task import pwm_model_loss

    torch.manual_seed(0)
    m = WorldModel(3, 2, model_config("pwm", latent_dim=8, enc_hidden=(8,), mlp_hidden=(8,)))
    torch.nn.init.normal_(m.reward_head[-1].weight, std=0.3)
    m.set_reward_stats(0.5, 2.0, 5.0)
    h, b, rho = 4, 5, 0.99
    obs, act = torch.randn(h + 1, b, 3), torch.rand(h, b, 2) * 2 - 1
    rew = torch.randn(h, b) * 8  # some beyond ±5σ: clamped
    cons = rew_sum = 0.0
    with torch.no_grad():
        z = m.encode(obs[0])
        for t in range(h):
            r_t = ((rew[t] - 0.5) / 2.0).clamp(-5, 5)
            rew_sum += rho**t * float((m.reward(z, act[t]) - r_t).square().mean())
            z = m.next(z, act[t])
            cons += rho**t * float((z - m.encode(obs[t + 1])).square().mean())
    reference = (cons + rew_sum / h) / h
    cfg = PWMConfig(horizon=h)
    got = pwm_model_loss(m, cfg, obs, act, rew, torch.zeros(h, b))
    assert float(got.total.detach()) == pytest.approx(reference, rel=1e-5)
    assert float(got.consistency) == pytest.approx(cons / h, rel=1e-5)
    assert float(got.reward) == pytest.approx(rew_sum / h, rel=1e-5)
    # pretraining uses the same weights by default
    pre = PretrainConfig(horizon=h, rho=rho)
    direct = world_model_loss(m, obs, act, rew, rho=rho, reward_coef=pre.reward_weight())
    assert float(direct.total.detach()) == pytest.approx(reference, rel=1e-5)


def test_masked_world_model_loss_counts_only_the_steps_inside_the_episode() -> None:
    """Partial windows: the loss is the hand-computed ``Σ_t ρ^t Σ_b m_tb ℓ_tb / (B H)`` for each term;
    a mask of ones is the unmasked loss, and what lies past the mask does not matter."""
    torch.manual_seed(0)
    m = WorldModel(3, 2, model_config("pwm", latent_dim=8, enc_hidden=(8,), mlp_hidden=(8,), termination=True))
    torch.nn.init.normal_(m.reward_head[-1].weight, std=0.3)
    h, b, rho = 4, 5, 0.9
    obs, act, rew = torch.randn(h + 1, b, 3), torch.rand(h, b, 2) * 2 - 1, torch.randn(h, b)
    term = torch.zeros(h, b)
    lengths = torch.tensor([4, 1, 2, 3, 4])
    mask = (torch.arange(h).unsqueeze(1) < lengths).float()
    term[lengths - 1, torch.arange(b)] = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    cons = rew_sum = bce = 0.0
    with torch.no_grad():
        z = m.encode(obs[0])
        for t in range(h):
            rew_sum += rho**t * float(((m.reward(z, act[t]) - rew[t]).square() * mask[t]).sum()) / b
            z = m.next(z, act[t])
            cons += rho**t * float(((z - m.encode(obs[t + 1])).square().mean(-1) * mask[t]).sum()) / b
            logit = m.termination_logit(z)
            bce += float(
                (torch.nn.functional.binary_cross_entropy_with_logits(logit, term[t], reduction="none") * mask[t]).sum()
            )
    got = world_model_loss(m, obs, act, rew, rho=rho, reward_coef=0.5, terminated=term, mask=mask)
    assert float(got.consistency) == pytest.approx(cons / h, rel=1e-5)
    assert float(got.reward) == pytest.approx(rew_sum / h, rel=1e-5)
    assert float(got.termination) == pytest.approx(bce / (h * b), rel=1e-5)
    assert float(got.total.detach()) == pytest.approx(cons / h + 0.5 * rew_sum / h + bce / (h * b), rel=1e-5)
    ones = world_model_loss(m, obs, act, rew, rho=rho, terminated=term, mask=torch.ones(h, b))
    plain = world_model_loss(m, obs, act, rew, rho=rho, terminated=term)
    assert float(ones.total.detach()) == pytest.approx(float(plain.total.detach()), rel=1e-6)
    outside = mask == 0
    obs2, act2, rew2 = obs.clone(), act.clone(), rew.clone()
    obs2[1:][outside] += 10.0
    act2[outside] = -act2[outside]
    rew2[outside] += 7.0
    moved = world_model_loss(m, obs2, act2, rew2, rho=rho, reward_coef=0.5, terminated=term, mask=mask)
    assert float(moved.total.detach()) == pytest.approx(float(got.total.detach()), rel=1e-6)


def test_reward_units_come_from_the_training_data() -> None:
    from types import SimpleNamespace

    from pwm_bench.pretrain import reward_stats

    data = SimpleNamespace(reward=torch.tensor([1.0, 3.0, 5.0, 7.0]))
    std = float(torch.tensor([1.0, 3.0, 5.0, 7.0]).std(unbiased=False))
    assert reward_stats(data, "scale") == pytest.approx((0.0, std, math.inf))  # type: ignore[arg-type]
    assert reward_stats(data, "standard") == pytest.approx((4.0, std, 5.0))  # type: ignore[arg-type]
    assert reward_stats(data, "none") == (0.0, 1.0, math.inf)  # type: ignore[arg-type]
    assert reward_stats(data, "none", 5.0) == (0.0, 1.0, 5.0)  # type: ignore[arg-type]
    m = WorldModel(3, 2, model_config("pwm", latent_dim=8, enc_hidden=(8,), mlp_hidden=(8,)))
    m.set_reward_stats(1.0, 2.0)  # a positive rescaling: nothing is clamped
    r = torch.tensor([-100.0, 0.0, 3.0])
    assert torch.allclose(m.reward_target(r), torch.tensor([-50.5, -0.5, 1.0]))
    assert torch.allclose(m.reward_to_env(m.reward_target(r)), r)
    m.set_reward_stats(1.0, 2.0, 5.0)  # the reference's normaliser
    assert torch.allclose(m.reward_target(r), torch.tensor([-5.0, -0.5, 1.0]))
    with pytest.raises(ValueError, match="positive"):
        m.set_reward_stats(0.0, 0.0)
