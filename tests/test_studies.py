"""The smooth-surrogate toys: the ball thrown at a wall (optimality gap) and stochastic smoothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from pwm_bench.analysis import ball_wall as bw
from pwm_bench.analysis.studies import run_study

from .conftest import cli


def test_the_throw_reaches_the_wall_when_its_kinematics_say_so() -> None:
    """The time to the wall solves a/2 t² + v cosθ t = wall; the reference's a·wall (factor 0.5) puts
    the ball at half the wall's distance then."""
    theta = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    for factor in (1.0, 0.5):
        throw = bw.Throw(a_wall_factor=factor)
        t = throw.time_to_wall(theta)
        x = 0.5 * throw.a * t**2 + throw.v * torch.cos(theta) * t
        assert x.tolist() == pytest.approx([factor * throw.wall] * 3)
    # uniform motion: the wall is reached at wall / (v cosθ); backward throws never reach it
    flat = bw.Throw(v=10.0, a=0.0, g=10.0, wall=5.0, height=2.0)
    th = torch.tensor([0.1, 1.0, 2.0])  # 0.1 rad hits the wall low; 1.0 rad is 5.3 m high there
    assert flat.time_to_wall(th)[:2].tolist() == pytest.approx([0.5 / math.cos(0.1), 0.5 / math.cos(1.0)])
    assert math.isinf(float(flat.time_to_wall(th)[2]))
    assert flat.stuck(th).tolist() == [True, False, False]
    assert flat.distance(th)[:2].tolist() == pytest.approx([5.0, 20 * math.cos(1.0)])


def test_the_gap_objective_has_the_published_optimum_and_plateau() -> None:
    theta, target = bw.grid()
    assert float(target.min()) == pytest.approx(-21.850, abs=1e-3)
    assert float(theta[int(torch.argmin(target))]) == pytest.approx(0.123, abs=0.01)
    assert float(target[bw.REFERENCE_TRUE_INDEX]) == pytest.approx(-5.0)
    th = torch.tensor([-1.0], requires_grad=True)
    (g,) = torch.autograd.grad(bw.gap_objective(th).sum(), th)
    assert float(g) == 0.0  # the plateau: gradient descent cannot leave it


def test_reference_protocol_reproduces_the_published_table() -> None:
    torch.set_num_threads(1)
    rows = bw.reference_protocol()
    for name, (error, gap) in bw.REFERENCE_TABLE.items():
        assert round(rows[name]["model_error"], 3) == error, name
        assert round(rows[name]["gap"], 3) == gap, name


def test_smoothing_matches_the_gaussian_closed_form_on_a_step() -> None:
    """E[1{θ + σε > 0}] = Φ(θ/σ), and its derivative φ(θ/σ)/σ, which the true gradient (0) misses."""
    theta = torch.linspace(-0.5, 0.5, 11, dtype=torch.float64)
    sigma = 0.2
    mean, grad = bw.smoothed(lambda x: (x > 0).to(x.dtype), theta, sigma)
    z = theta.numpy() / sigma
    assert mean.numpy() == pytest.approx(scipy.stats.norm.cdf(z), abs=2e-3)
    assert grad.numpy() == pytest.approx(scipy.stats.norm.pdf(z) / sigma, abs=2e-2)


def test_wall_toy_first_order_stalls_on_the_plateau_and_smoothing_gets_over() -> None:
    res = bw.wall_toy(points=401)
    assert res["grad_on_plateau"] == 0.0
    assert 0.3 < res["stuck_share"] < 0.7
    asc = res["ascent"]
    assert asc["first-order"] == pytest.approx(5.0)  # stuck at the wall
    assert asc["sigma=0.2"] > 10.0  # over the wall
    # on the plateau just below the edge the smoothed gradient points up the angle, the true one is 0
    _mean, grad = res["smoothed"][0.2]
    i = int(np.searchsorted(res["theta"], 0.6))
    assert res["stuck"][i] and res["grad"][i] == 0.0 and grad[i] > 1.0


def test_fair_protocol_reports_true_gaps_over_seeds() -> None:
    torch.set_num_threads(1)
    res = bw.fair_protocol(seeds=(0, 1), starts=8, steps=100, epochs=20)
    s = res["summary"]
    assert set(s) == set(bw.FAIR_MODELS)
    # the true J: every descent ends on the plateau (-5) or in the basin it started in, never below J*
    assert s["true"]["gap_mean"] >= 0 and s["true"]["model_error"] == 0.0
    for m in bw.FAIR_MODELS:
        assert s[m]["seeds"] == 2 and s[m]["gap_ci"][0] <= s[m]["gap_mean"] <= s[m]["gap_ci"][1]
        assert s[m]["gap_mean"] >= -1e-6  # a true J can never be below its optimum
    start, end = res["endpoints"]["true"]
    assert start.shape == end.shape == (8,) and np.all(np.abs(end) <= math.pi + 1e-6)


def test_plot_optimality_gap_reference_prints_the_published_table(tmp_path: Path) -> None:
    res = cli("plot", "optimality-gap", "--protocol", "reference", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    for line in ("true             0.000           16.850", "ReLU             0.707           16.046"):
        assert line in res.stdout
    assert "SimNorm          1.131            3.473" in res.stdout
    folder = tmp_path / "figures" / "optimality-gap-reference"
    assert (folder / "landscape.png").exists() and (folder / "landscape.pdf").exists()
    man = json.loads((folder / "manifest.json").read_text())
    assert man["protocol"] == "reference" and man["numbers"]["rows"]["SimNorm"]["gap"] == pytest.approx(3.473, abs=5e-4)


def test_studies_at_smoke_scale_write_their_figures(tmp_path: Path) -> None:
    for name, stem in (("optimality-gap", "landscape"), ("wall-toy", "wall_toy")):
        res = run_study(name, tmp_path, "smoke")
        assert (res.folder / f"{stem}.png").stat().st_size > 1000 and (res.folder / "table.md").exists()
    assert res.folder.name == "wall-toy-smoke"


def test_study_input_errors_exit_2(tmp_path: Path) -> None:
    for args, word in (
        (["plot", "optimality-gap", "--protocol", "nope"], "reference"),
        (["plot", "wall-toy", "--protocol", "fair"], "no --protocol"),
        (["sweep", "optimality-gap"], "nothing to sweep"),
        (["plot", "single-task", "--protocol", "fair"], "studies"),
    ):
        res = cli(*args, "--out", str(tmp_path))
        assert res.returncode == 2 and word in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)


def test_gradient_stats_match_the_closed_form_of_a_noisy_linear_loss() -> None:
    """loss = Σ θ_i (μ_i + σ_i ε_i), ε ~ N(0, 1): the gradient is μ + σ ε, so Var = σ² and
    ESNR = μ² / σ² per parameter; the estimator also equals numpy's on its own samples."""
    from pwm_bench.gradient_stats import gradient_stats

    mu = torch.tensor([1.0, -2.0, 0.5, 0.0])
    sigma = torch.tensor([0.5, 1.0, 2.0, 1.0])
    theta = torch.nn.Parameter(torch.zeros(4))

    def loss(i: int) -> torch.Tensor:
        eps = torch.randn(4, generator=torch.Generator().manual_seed(i))
        return (theta * (mu + sigma * eps)).sum()

    s = gradient_stats(loss, [theta], samples=4000)
    g = s.grads.numpy()
    assert s.var.numpy() == pytest.approx(np.var(g, axis=0, ddof=1))
    assert s.var.numpy() == pytest.approx((sigma**2).numpy(), rel=0.08)
    assert s.mean.numpy() == pytest.approx(mu.numpy(), abs=0.1)
    assert s.variance == pytest.approx(float((sigma**2).mean()), rel=0.08)
    assert s.esnr == pytest.approx(float((mu**2 / sigma**2).mean()), rel=0.1)
    with pytest.raises(ValueError, match="at least 2"):
        gradient_stats(loss, [theta], samples=1)


# --------------------------------------------------------------------------------------------------
# gradient variance and ESNR against horizon


def test_batched_per_sample_gradients_equal_one_rollout_per_sample() -> None:
    """S worlds (or model rows) with one copy of the policy each give, in one backward pass, the
    gradients that S separate single-world rollouts give (through the simulator and a world model)."""
    from pwm_bench.analysis import esnr
    from pwm_bench.envs import make_env
    from pwm_bench.gradient_stats import gradient_stats
    from pwm_bench.world_model import WorldModel, sized_config

    torch.manual_seed(0)
    model = WorldModel(6, 1, sized_config("pwm", latent_dim=16, mlp_dim=32, enc_dim=32)).eval()
    for q in model.parameters():  # a trained-looking model: random weights everywhere, incl. the reward head
        torch.nn.init.normal_(q, std=0.3)
        q.requires_grad_(False)
    policy = esnr.LatentPolicy.init(16, 1, 8, seed=3)
    S, h = 3, 4
    eps = esnr.noise(h, S, 1, seed=0)
    batch = make_env("double_pendulum", S, differentiable=True, stochastic_init=False)
    single = make_env("double_pendulum", 1, differentiable=True, stochastic_init=False)
    obs0 = single.reset(seed=0)[0].detach()
    for detach in (False, True):
        cases = {
            "sim": (
                esnr.sim_return(batch, model.encode, eps, detach),
                lambda e, d=detach: esnr.sim_return(single, model.encode, e, d),
            ),
            "model": (
                esnr.model_return(model, obs0.expand(S, -1), eps, detach),
                lambda e, d=detach: esnr.model_return(model, obs0, e, d),
            ),
        }
        for name, (batched, one) in cases.items():
            g, ret = esnr.per_sample_policy_grads(policy, batched, S)
            params = [v.clone().requires_grad_() for v in policy.params.values()]

            def loss(i: int, one=one, params=params) -> torch.Tensor:
                p = {k: v.unsqueeze(0) for k, v in zip(policy.params, params, strict=True)}
                return one(eps[:, i : i + 1])(p).sum()

            ref = gradient_stats(loss, params, S).grads
            assert g.shape == (S, policy.num_params) and ret.shape == (S,)
            assert torch.allclose(g.double(), ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max())), (name, detach)
            assert float(ref.abs().max()) > 0 and not torch.allclose(ref[0], ref[1])  # the noise matters


def test_esnr_study_at_smoke_scale_keeps_raw_gradients_and_reuses_its_models(tmp_path: Path) -> None:
    res = run_study("esnr", tmp_path, "smoke")
    folder = res.folder
    assert folder.name == "esnr-smoke-full"
    assert (folder / "esnr.png").stat().st_size > 1000 and (folder / "esnr.pdf").exists()
    raw = torch.load(folder / "grads.pt", weights_only=False)
    raw["grads"] = raw["grads"]["double_pendulum"]
    assert set(raw["grads"]) == {"simulator", "model H=3", "model H=16"}
    for g in raw["grads"].values():
        assert g.shape[:2] == (4, 8) and torch.isfinite(g).all()
    man = json.loads((folder / "manifest.json").read_text())
    curves = man["numbers"]["curves"]["double_pendulum"]
    # the stored curves are the estimator applied to the stored raw gradients: nothing is added
    from pwm_bench.analysis.esnr import curves as recompute

    for src, g in raw["grads"].items():
        var, snr = recompute(g)
        assert curves[src]["variance"] == pytest.approx(var) and curves[src]["esnr"] == pytest.approx(snr)
    models = sorted((tmp_path / "world_models").glob("esnr-*"))
    assert [m.name for m in models] == ["esnr-double_pendulum-smoke-h16", "esnr-double_pendulum-smoke-h3"]
    stamp = [m.joinpath("model.pt").stat().st_mtime_ns for m in models]
    # the reference variant (policy inputs detached) reuses the models; at h = 1 nothing flows
    # through the inputs, so both variants agree there, and from h = 2 on they differ
    run_study("esnr", tmp_path, "smoke", "reference")
    assert [m.joinpath("model.pt").stat().st_mtime_ns for m in models] == stamp
    ref = torch.load(tmp_path / "figures" / "esnr-smoke-reference" / "grads.pt", weights_only=False)
    for src in raw["grads"]:
        assert torch.allclose(ref["grads"]["double_pendulum"][src][0], raw["grads"][src][0])
        assert not torch.allclose(ref["grads"]["double_pendulum"][src][1], raw["grads"][src][1])


def test_esnr_locomotion_uses_the_stores_pwm_model_and_skips_envs_without_one(tmp_path: Path) -> None:
    from pwm_bench.datasets import RecordingEnv
    from pwm_bench.envs import make_env
    from pwm_bench.pretrain import PretrainConfig, pretrain_world_model
    from pwm_bench.world_model import sized_config

    res = cli("plot", "esnr-locomotion", "--scale", "smoke", "--out", str(tmp_path))
    assert res.returncode == 2 and "pwm-bench run --algo pwm" in res.stderr and "Traceback" not in res.stderr
    env = make_env("hopper", 4)
    rec = RecordingEnv.into(tmp_path / "datasets" / "hop", env, "hopper", {"algo": "random"})
    rec.reset(seed=0)
    for _ in range(24):
        rec.step(torch.rand(4, env.act_dim) * 2 - 1)
    rec.close()
    wm = sized_config("pwm", latent_dim=16, mlp_dim=32, enc_dim=32)
    cfg = PretrainConfig(steps=4, batch_size=8, horizon=4, eval_every=4)
    pretrain_world_model(tmp_path / "datasets" / "hop", tmp_path / "world_models" / "pwm-hopper-test", cfg, wm)
    study = run_study("esnr-locomotion", tmp_path, "smoke")
    man = json.loads((study.folder / "manifest.json").read_text())
    assert man["numbers"]["skipped"] == ["ant"]
    assert man["numbers"]["world_models"]["hopper"].endswith("pwm-hopper-test")
    grads = torch.load(study.folder / "grads.pt", weights_only=False)["grads"]["hopper"]
    assert list(grads) == [
        "simulator (ke 2e+04, kd 1e+03)",
        "simulator stiff (ke 5e+04, kd 5e+03)",
        "simulator stiff (ke 1e+05, kd 1e+04)",
        "simulator stiff (ke 2e+05, kd 2e+04)",
        "PWM model",
    ]
    default, _, stiff, _, model = grads.values()
    assert default.shape == (3, 4, 16 * 16 + 16 + 16 * 3 + 3 + 3) and torch.isfinite(default).all()
    # the hopper starts 4 cm above the ground and lands at about the 6th step: before that the contact
    # stiffness cannot matter, after it the gradient differs; the model's differs from both
    assert torch.equal(default[0], stiff[0]) and not torch.allclose(default[2], stiff[2])
    assert not torch.allclose(default[0], model[0])
    assert (study.folder / "esnr.png").stat().st_size > 1000
