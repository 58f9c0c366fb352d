"""PWM: gradients through the world model, critic targets, quirk flags, offline mode, stage caching."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from pwm_bench.baselines.shac import td_lambda_targets
from pwm_bench.config import apply_overrides
from pwm_bench.pwm import CriticEnsemble, LatentActor, PWMConfig, critic_targets, imagine
from pwm_bench.testing import fd_gradient_check
from pwm_bench.world_model import WorldModel, model_config

from .conftest import cli, run_inprocess

SMALL_WM = {"latent_dim": 16, "enc_hidden": (32,), "mlp_hidden": (32, 32)}


def _parts(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[WorldModel, LatentActor, CriticEnsemble]:
    torch.manual_seed(seed)
    wm = WorldModel(4, 2, model_config("pwm", **SMALL_WM)).to(dtype)
    # give the zero-initialised reward head some weight so the reward depends on the action
    torch.nn.init.normal_(wm.reward_head[-1].weight, std=0.1)
    actor = LatentActor(16, 2, (16, 16)).to(dtype)
    critics = CriticEnsemble(16, (16,), 3).to(dtype)
    wm.requires_grad_(False)
    critics.requires_grad_(False)
    return wm, actor, critics


def _cfg(**over: Any) -> PWMConfig:
    return apply_overrides(PWMConfig(), {"horizon": 5, **over})


class _WithBias(torch.nn.Module):
    """``actor`` with its output bias replaced by ``bias``, fed the recorded latents ``inputs``.

    PWM detaches the actor's input, so its gradient is the derivative of the loss with the actor's
    inputs held at their values in the rollout; feeding those values makes finite differences
    measure exactly that derivative.
    """

    def __init__(self, actor: LatentActor, bias: torch.Tensor, inputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.actor, self.bias, self.inputs = actor, bias, list(inputs)
        self.name = f"mu.{len(actor.mu) - 1}.bias"

    def forward(self, z: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        params = {**dict(self.actor.named_parameters()), self.name: self.bias}
        z_in = self.inputs.pop(0)
        return torch.func.functional_call(self.actor, params, (z_in,), {"deterministic": deterministic})


def test_actor_loss_gradient_matches_finite_differences_through_the_model() -> None:
    wm, actor, critics = _parts(dtype=torch.float64)
    z0 = wm.encode(torch.randn(8, 4, dtype=torch.float64))
    inputs: list[torch.Tensor] = []
    hook = actor.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    torch.manual_seed(3)
    with torch.no_grad():
        imagine(wm, actor, critics, z0, _cfg())
    hook.remove()

    def loss_of(bias: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(3)  # the same exploration noise in every evaluation
        window, _ = imagine(wm, _WithBias(actor, bias, inputs), critics, z0, _cfg())  # type: ignore[arg-type]
        return window.loss.sum()

    report = fd_gradient_check(loss_of, actor.mu[-1].bias.detach().clone(), eps=1e-6, n_directions=None)
    assert report.max_rel_error < 1e-6, report
    # and the library's actor gives that same gradient
    torch.manual_seed(3)
    window, _ = imagine(wm, actor, critics, z0, _cfg())
    window.loss.sum().backward()
    assert torch.allclose(actor.mu[-1].bias.grad, report.analytic, rtol=1e-10)


class _Replay(torch.nn.Module):
    """Plays back recorded actions, whatever the latent."""

    def __init__(self, actions: list[torch.Tensor]) -> None:
        super().__init__()
        self.actions = list(actions)

    def forward(self, z: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return self.actions.pop(0)


def test_actor_gradient_flows_through_the_actions_not_the_actor_input() -> None:
    wm, actor, critics = _parts()
    z0 = wm.encode(torch.randn(8, 4)).requires_grad_(True)
    actions: list[torch.Tensor] = []
    hook = actor.register_forward_hook(lambda m, i, out: actions.append(out.detach()))
    torch.manual_seed(1)
    window, _ = imagine(wm, actor, critics, z0, _cfg())
    hook.remove()
    window.loss.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())
    assert all(p.grad is None for p in wm.parameters())  # the actor loss does not train the model
    # the same rollout with the actions as constants gives the same d loss / d z0: nothing flows
    # back through the actor's input
    z1 = z0.detach().clone().requires_grad_(True)
    replayed, _ = imagine(wm, _Replay(actions), critics, z1, _cfg())  # type: ignore[arg-type]
    replayed.loss.sum().backward()
    assert torch.allclose(replayed.loss, window.loss.detach(), atol=1e-6)
    assert torch.allclose(z1.grad, z0.grad, atol=1e-6)


def test_critic_targets_are_the_td_lambda_returns_of_the_window() -> None:
    wm, actor, critics = _parts()
    with torch.no_grad():
        window, _ = imagine(wm, actor, critics, wm.encode(torch.randn(6, 4)), _cfg(horizon=7))
    cfg = _cfg(horizon=7)
    assert window.dones[-1].all() and not window.dones[:-1].any()
    expected = td_lambda_targets(window.rewards, window.next_values, window.dones, 0.99, 0.95)
    assert torch.allclose(critic_targets(window, cfg), expected)
    one = critic_targets(window, _cfg(horizon=7, critic_target="one_step"))
    assert torch.allclose(one, window.rewards + 0.99 * window.next_values)


@pytest.mark.parametrize(("flag", "power"), [("gamma_h", 4), ("gamma_h_plus_1", 5)])
def test_terminal_discount_flag(flag: str, power: int) -> None:
    """Zero rewards and a constant value c: the loss is -γ^H c (correct) or -γ^(H+1) c (reference)."""
    wm, actor, critics = _parts()
    torch.nn.init.zeros_(wm.reward_head[-1].weight)
    for net in critics.nets:
        torch.nn.init.zeros_(net[-1].weight)
        torch.nn.init.constant_(net[-1].bias, 2.0)
    with torch.no_grad():
        window, _ = imagine(wm, actor, critics, wm.encode(torch.randn(3, 4)), _cfg(horizon=4, terminal_discount=flag))
    assert torch.allclose(window.loss, torch.full((3,), -(0.99**power) * 2.0))


# -- through the harness -------------------------------------------------------------------------

PIPELINE = {
    "collect_steps": "2048",
    "pretrain_steps": "60",
    "total_steps": "1024",
    "eval_every": "512",
}


def test_pipeline_collects_pretrains_trains_and_caches_each_stage(out: Path) -> None:
    first = run_inprocess(out, algo="pwm", run_id="a", overrides=PIPELINE)
    assert first.status == "completed"
    datasets = list((out / "datasets").iterdir())
    models = list((out / "world_models").iterdir())
    assert len(datasets) == len(models) == 1
    stored = json.loads((first.run_dir / "summary.json").read_text())
    assert stored["status"] == "completed"
    config = (first.run_dir / "config.yaml").read_text()
    assert str(models[0]) in config and str(datasets[0]) in config
    mtime = (models[0] / "model.pt").stat().st_mtime_ns
    collect_runs = list((out / "runs" / "pointmass" / "shac").iterdir())

    second = run_inprocess(out, algo="pwm", run_id="b", overrides=PIPELINE)
    assert second.status == "completed"
    assert (models[0] / "model.pt").stat().st_mtime_ns == mtime  # not pretrained again
    assert list((out / "runs" / "pointmass" / "shac").iterdir()) == collect_runs  # not collected again
    df = pd.read_csv(second.run_dir / "metrics.csv")
    assert {"loss/actor", "loss/critic", "pwm/imagined_return", "wm/consistency"} <= set(df.columns)

    # a third run reuses the artefacts by name, offline: the budget is epochs, the env never steps
    stepped: list[int] = []

    class NoSteps:
        def __init__(self, env: Any) -> None:
            self._env = env

        def __getattr__(self, name: str) -> Any:
            return getattr(self._env, name)

        def step(self, actions: torch.Tensor) -> Any:
            stepped.append(1)
            return self._env.step(actions)

    offline = run_inprocess(
        out,
        algo="pwm",
        run_id="c",
        overrides={
            "pwm.mode": "offline",
            "pwm.world_model": models[0].name,
            "dataset": datasets[0].name,
            "epochs": "12",
        },
        wrap_env=lambda env, _: NoSteps(env),
    )
    assert offline.status == "completed" and not stepped
    assert offline.summary["env_steps"] == 0 and offline.summary["iterations"] == 12
    assert offline.summary["final_eval_return"] is not None


def test_bad_artefact_names_are_a_one_line_usage_error(out: Path) -> None:
    res = cli("run", "--algo", "pwm", "--env", "pointmass", "--set", "pwm.world_model=nope", "--out", str(out))
    assert res.returncode == 2 and "world model 'nope' not found" in res.stderr
    assert "Traceback" not in res.stderr
    res = cli("run", "--algo", "pwm", "--env", "pointmass", "--set", "mode=offline", "--out", str(out))
    assert res.returncode == 2 and "dataset" in res.stderr


# point-mass pipeline that learns (zero actions score about -310): SHAC data, a world model good
# enough to rank actions (about 4k pretraining steps), then online PWM without fine-tuning
PWM_POINTMASS = {
    "collect_steps": "65536",
    "pretrain_steps": "4000",
    "wm_latent_dim": "64",
    "wm_mlp_dim": "128",
    "wm_enc_dim": "128",
    "wm_batch_size": "128",
    "finetune_wm": "false",
    "num_envs": "64",
    "total_steps": "204800",
    "eval_every": "40960",
    "actor_hidden": "[64,64]",
    "critic_hidden": "[64,64]",
}


@pytest.mark.slow
def test_pwm_learns_pointmass(out: Path) -> None:
    result = run_inprocess(out, algo="pwm", preset="cpu", overrides=PWM_POINTMASS)
    assert result.status == "completed"
    assert result.summary["final_eval_return"] > -250.0, result.summary


def test_termination_head_masks_what_follows_a_predicted_end() -> None:
    """A model sure that every step ends the episode: only the first reward counts, no bootstrap."""
    torch.manual_seed(0)
    wm = WorldModel(4, 2, model_config("pwm", termination=True, **SMALL_WM))
    torch.nn.init.normal_(wm.reward_head[-1].weight, std=0.1)
    torch.nn.init.constant_(wm.term_head[-1].bias, 30.0)  # p(end) = 1 - 1e-13
    actor, critics = LatentActor(16, 2, (16,)), CriticEnsemble(16, (16,), 3)
    with torch.no_grad():
        window, _ = imagine(wm, actor, critics, wm.encode(torch.randn(5, 4)), _cfg(horizon=6))
    assert torch.allclose(window.loss, -window.rewards[0], atol=1e-5)
    assert torch.allclose(critic_targets(window, _cfg(horizon=6)), window.rewards, atol=1e-5)
    # and the head is trained by the model loss when terminations are given
    from pwm_bench.world_model import world_model_loss

    obs, act = torch.randn(4, 8, 4), torch.rand(3, 8, 2) * 2 - 1
    term = torch.zeros(3, 8)
    term[-1, :2] = 1
    losses = world_model_loss(wm, obs, act, torch.randn(3, 8), terminated=term)
    assert losses.termination is not None and losses.termination > 1.0  # confident and mostly wrong
    assert world_model_loss(wm, obs, act, torch.randn(3, 8)).termination is None
