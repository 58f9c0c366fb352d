"""World-model error vs policy error: compare a world model's gradients with the simulator's.

PWM trusts the world model's first-order gradients. On a differentiable env the true gradients are
available, so the model can be checked where it matters: for an action sequence ``a_{0:H}`` from
the env's current state, compare the gradient of the model's imagined discounted return
``Σ γ^t R(z_t, a_t)`` with that of the simulator's real return, both with respect to the actions.
A model whose gradients point the simulator's way (cosine near 1) on the policy's own actions
gives the policy the right direction; a low or negative cosine there, with a high one on the
data's actions, means the policy has moved to where the model is wrong (model exploitation).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pwm_bench.world_model import WorldModel


@dataclasses.dataclass
class GradientAlignment:
    """Per-world comparison of model and simulator over one window.

    Attributes:
        cosine: ``(N,)`` cosine between the two gradients w.r.t. the whole action sequence.
        cosine_first: ``(N,)`` cosine of the gradients w.r.t. the first action only.
        env_return: ``(N,)`` discounted simulator return of the window.
        model_return: ``(N,)`` discounted imagined return.
        alive: ``(N,)`` bool, worlds that did not terminate inside the window (the comparison is
            only meaningful there: the model does not know about episode ends).
        grad_norm_ratio: ``(N,)`` ``|g_model| / |g_env|``.
    """

    cosine: torch.Tensor
    cosine_first: torch.Tensor
    env_return: torch.Tensor
    model_return: torch.Tensor
    alive: torch.Tensor
    grad_norm_ratio: torch.Tensor

    def summary(self) -> dict[str, float]:
        """Medians over the worlds that stayed alive (NaN if none did)."""
        ok = self.alive
        if not bool(ok.any()):
            return {"alive": 0.0}

        def med(x: torch.Tensor) -> float:
            return float(x[ok].median())

        return {
            "alive": float(ok.float().mean()),
            "cosine": med(self.cosine),
            "cosine_first": med(self.cosine_first),
            "grad_norm_ratio": med(self.grad_norm_ratio),
            "env_return": float(self.env_return[ok].mean()),
            "model_return": float(self.model_return[ok].mean()),
            "return_abs_error": float((self.model_return - self.env_return)[ok].abs().mean()),
        }


@contextlib.contextmanager
def probing(env: Any, resets: bool = False) -> Iterator[None]:
    """Within the block the env may be stepped freely; afterwards its simulator state, its episode
    statistics, its step counter and its reset generator are as before, and its autograd graph is cut.

    This lets a diagnostic probe a training env from its live states without changing the training
    run (the returns and lengths of its running episodes included). By default finished worlds are
    not reset (a world that falls keeps falling). With ``resets=True`` they reset as in training, and
    every probe in a row draws the same reset states (the env's generator ``_gen`` is restored).
    """
    state0 = env.get_state()
    stats = (env._ep_return.clone(), env._ep_length.clone(), env._steps_taken)
    gen = getattr(env, "_gen", None)
    gen_state = gen.get_state() if gen is not None else None
    try:
        if resets:
            yield
        else:
            with env.resets_suspended():
                yield
    finally:
        env.set_state(state0)
        env.detach()
        env._ep_return, env._ep_length, env._steps_taken = stats
        if gen is not None:
            gen.set_state(gen_state)


def _model_rewards(
    wm: WorldModel, obs: torch.Tensor, actions: torch.Tensor, task: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's open-loop rollout of ``actions (H, N, A)`` from ``h(obs)``: the actions as a leaf that
    requires grad, and the rewards ``(H, N)`` in env units, differentiable w.r.t. them only (the
    model's parameters are left as they were)."""
    requires = [p.requires_grad for p in wm.parameters()]
    wm.requires_grad_(False)
    try:
        with torch.enable_grad():
            a_wm = actions.detach().clone().requires_grad_(True)
            z = wm.encode(obs.detach(), task)
            rewards = []
            for t in range(actions.shape[0]):
                rewards.append(wm.reward_to_env(wm.reward(z, a_wm[t], task)))
                z = wm.next(z, a_wm[t], task)
    finally:
        for p, r in zip(wm.parameters(), requires, strict=True):
            p.requires_grad_(r)
    return a_wm, torch.stack(rewards)


def model_gradient_alignment(
    env: Any,
    wm: WorldModel,
    obs: torch.Tensor,
    actions: torch.Tensor,
    gamma: float = 0.99,
    task: torch.Tensor | None = None,
) -> GradientAlignment:
    """Compare the model's and the simulator's return gradients for ``actions`` from the env's state.

    Args:
        env: differentiable env (``differentiable=True``) with ``get_state``/``set_state`` and
            ``resets_suspended`` (the Warp envs); its current state is the start of the window and is
            restored afterwards.
        wm: the world model (its parameters are not changed).
        obs: ``(N, O)`` the env's current observations (what the model encodes).
        actions: ``(H, N, A)`` action sequence in [-1, 1].
        gamma: discount of both returns.
        task: task ids ``(N,)`` for a multi-task model.
    """
    if not getattr(env, "differentiable", False):
        raise ValueError(f"env {getattr(env, 'name', env)!r} was not built with differentiable=True")
    horizon, n = actions.shape[0], actions.shape[1]
    a_env = actions.detach().clone().requires_grad_(True)
    ret_env = torch.zeros(n, device=actions.device)
    alive = torch.ones(n, dtype=torch.bool, device=actions.device)
    with probing(env), torch.enable_grad():
        for t in range(horizon):
            _, r, terminated, _, _ = env.step(a_env[t])
            ret_env = ret_env + alive.float() * gamma**t * r
            alive = alive & ~terminated
        (g_env,) = torch.autograd.grad(ret_env.sum(), a_env)
    a_wm, r_wm = _model_rewards(wm, obs, actions, task)
    ret_wm = torch.zeros(n, device=actions.device)
    for t in range(horizon):  # the same sum, in the same order, as the simulator's return
        ret_wm = ret_wm + gamma**t * r_wm[t]
    (g_wm,) = torch.autograd.grad(ret_wm.sum(), a_wm)
    flat_env, flat_wm = g_env.transpose(0, 1).reshape(n, -1), g_wm.transpose(0, 1).reshape(n, -1)
    cos = torch.nn.functional.cosine_similarity
    return GradientAlignment(
        cosine=cos(flat_wm, flat_env, dim=1).detach(),
        cosine_first=cos(g_wm[0], g_env[0], dim=1).detach(),
        env_return=ret_env.detach(),
        model_return=ret_wm.detach(),
        alive=alive,
        grad_norm_ratio=(flat_wm.norm(dim=1) / flat_env.norm(dim=1).clamp_min(1e-12)).detach(),
    )


@dataclasses.dataclass
class LookaheadAlignment:
    """How the model's and the simulator's reward at step ``k`` respond to the window's first action.

    Every field is ``(H,)``, one entry per lookahead ``k`` (the reward of step ``k``, whose state the
    first action reaches after ``k`` transitions), over the worlds still alive before step ``k``.

    Attributes:
        worlds: count of those worlds.
        cosine: median over them of the per-world cosine of ``d r_k / d a_0`` (model vs simulator).
        cosine_sum: cosine of the two gradients summed over them (what an update over the batch sees).
        env_reward, model_reward: their mean rewards at step ``k`` (env units).
    """

    worlds: torch.Tensor
    cosine: torch.Tensor
    cosine_sum: torch.Tensor
    env_reward: torch.Tensor
    model_reward: torch.Tensor


def reward_lookahead_alignment(
    env: Any, wm: WorldModel, obs: torch.Tensor, actions: torch.Tensor, task: torch.Tensor | None = None
) -> LookaheadAlignment:
    """Per lookahead ``k``, compare ``d r_k / d a_0`` through the model with the simulator's for open-loop
    ``actions (H, N, A)`` from the env's current state ``obs (N, O)`` (restored afterwards; worlds do
    not reset). Where the model's multi-step predictions go wrong, the cosine falls with ``k``; a
    model that misses a fall the simulator takes shows as a negative cosine and a model reward far
    above the env's."""
    horizon, n = actions.shape[0], actions.shape[1]
    a_env = actions.detach().clone().requires_grad_(True)
    alive = torch.ones(n, dtype=torch.bool, device=actions.device)
    r_env, alive_before = [], []
    with probing(env), torch.enable_grad():
        for t in range(horizon):
            alive_before.append(alive.clone())
            _, r, terminated, _, _ = env.step(a_env[t])
            r_env.append(r)
            alive = alive & ~terminated
        g_env = [torch.autograd.grad(r_env[k].sum(), a_env, retain_graph=True)[0][0] for k in range(horizon)]
    a_wm, r_wm = _model_rewards(wm, obs, actions, task)
    g_wm = [torch.autograd.grad(r_wm[k].sum(), a_wm, retain_graph=True)[0][0] for k in range(horizon)]
    cos = torch.nn.functional.cosine_similarity
    nan = torch.tensor(float("nan"))
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("worlds", "cosine", "cosine_sum", "env", "model")}
    for k in range(horizon):
        m = alive_before[k]
        out["worlds"].append(m.sum())
        if not bool(m.any()):
            for key in ("cosine", "cosine_sum", "env", "model"):
                out[key].append(nan)
            continue
        ge, gw = g_env[k][m].detach(), g_wm[k][m].detach()
        out["cosine"].append(cos(gw, ge, dim=1).median())
        out["cosine_sum"].append(cos(gw.sum(0), ge.sum(0), dim=0))
        out["env"].append(r_env[k][m].detach().mean())
        out["model"].append(r_wm[k][m].detach().mean())
    return LookaheadAlignment(
        worlds=torch.stack(out["worlds"]),
        cosine=torch.stack(out["cosine"]),
        cosine_sum=torch.stack(out["cosine_sum"]),
        env_reward=torch.stack(out["env"]),
        model_reward=torch.stack(out["model"]),
    )


@torch.no_grad()
def episode_end_errors(wm: WorldModel, dataset: Any, horizon: int = 16, before_end: int = 24) -> dict[str, list[float]]:
    """How well the model sees an episode's end coming, per rollout depth ``d = 0 .. horizon - 1``.

    For every episode of ``dataset`` (an :class:`~pwm_bench.datasets.EpisodeDataset`) that ended in a
    termination and has at least ``d + 1`` transitions, the model starts from the encoding of the
    observation ``d`` steps before the terminal transition, rolls its latent ``d`` steps with the
    recorded actions, and predicts the terminal transition's reward. As a reference, the same is done
    for the transition ``before_end`` steps before the end (in episodes long enough). Returns lists of
    length ``horizon``: ``episodes`` (how many ended at depth ``d``), ``end_reward_error`` and
    ``ref_reward_error`` (mean squared error in the model's reward units), and, for a model with a
    termination head, ``end_termination`` and ``ref_termination`` (mean predicted probability that the
    transition terminates; NaN without a head).
    """
    device = dataset.obs.device
    last = dataset.tr_start + dataset.length - 1  # each episode's last transition
    ended = dataset.terminated[last].bool()
    out: dict[str, list[float]] = {
        k: [] for k in ("episodes", "end_reward_error", "ref_reward_error", "end_termination", "ref_termination")
    }
    head = wm.term_head is not None
    nan = float("nan")

    def predict(episodes: torch.Tensor, target: torch.Tensor, depth: int) -> tuple[float, float]:
        """Mean squared reward error and termination probability at transition index ``target`` (per episode)."""
        if episodes.numel() == 0:
            return nan, nan
        start = target - depth  # index within the episode
        z = wm.encode(dataset.obs[dataset.obs_start[episodes] + start])
        for t in range(depth):
            z = wm.next(z, dataset.action[dataset.tr_start[episodes] + start + t])
        row = dataset.tr_start[episodes] + target
        a = dataset.action[row]
        err = (wm.reward(z, a) - wm.reward_target(dataset.reward[row])).square().mean()
        term = torch.sigmoid(wm.termination_logit(wm.next(z, a))).mean() if head else torch.tensor(nan)
        return float(err), float(term)

    for depth in range(horizon):
        eps = (ended & (dataset.length >= depth + 1)).nonzero().squeeze(-1).to(device)
        end_err, end_term = predict(eps, dataset.length[eps] - 1, depth)
        ref = (dataset.length >= before_end + depth + 1).nonzero().squeeze(-1).to(device)
        ref_err, ref_term = predict(ref, dataset.length[ref] - 1 - before_end, depth)
        out["episodes"].append(float(eps.numel()))
        out["end_reward_error"].append(end_err)
        out["ref_reward_error"].append(ref_err)
        out["end_termination"].append(end_term)
        out["ref_termination"].append(ref_term)
    return out


def policy_actions(env: Any, act: Any, obs: torch.Tensor, horizon: int) -> torch.Tensor:
    """``(H, N, A)`` actions a policy takes closed-loop from the env's current state (state restored).

    ``act(obs) -> actions`` is called on each observation; worlds are not reset inside the window.
    """
    out = []
    with torch.no_grad(), probing(env):
        o = obs
        for _ in range(horizon):
            a = act(o)
            out.append(a)
            o = env.step(a)[0]
    return torch.stack(out)


def check_pwm_run(
    run_dir: str | Path,
    *,
    worlds: int = 32,
    horizon: int = 16,
    seed: int = 0,
    device: str | torch.device = "cpu",
    checkpoint: str = "latest",
    noise_draws: int = 4,
    warmup: int = 0,
    ends: bool = False,
) -> dict[str, Any]:
    """Gradient alignment of a single-task PWM run's world model, on the policy's actions and on random ones.

    Loads the run's world model as its checkpoint holds it (fine-tuned, for an online run) and its
    actor, resets ``worlds`` differentiable worlds of the run's env with ``seed``, and compares the
    model with the simulator (:func:`model_gradient_alignment`) for the deterministic policy's
    closed-loop actions and for uniform random actions. Returns ``{"policy": summary, "random": summary,
    "actor": {...}}``, where ``actor`` holds the mean over ``noise_draws`` exploration-noise draws of
    the cosine between the actor-parameter gradients of the actor loss through the model and
    through the simulator (:func:`~pwm_bench.pwm.single_task.actor_gradient_cosine`), with the
    critics' bootstrap (``cosine``) and without it (``cosine_rewards``), and ``"lookahead"``, the
    fields of :func:`reward_lookahead_alignment` as lists, for the stochastic policy's closed-loop
    actions. With ``warmup`` the deterministic policy first runs that many steps from the reset
    states (worlds that end reset), so that the window starts where the policy's episodes go. With
    ``ends``, ``"ends"`` holds :func:`episode_end_errors` of the run's model on the held-out episodes
    of the dataset its world model was pretrained on (the pretraining's own split).
    """
    from pwm_bench.config import from_dict
    from pwm_bench.envs import env_spec, make_env
    from pwm_bench.errors import UsageError
    from pwm_bench.pretrain import load_world_model
    from pwm_bench.pwm import CriticEnsemble, LatentActor, PWMConfig
    from pwm_bench.pwm.single_task import actor_gradient_cosine
    from pwm_bench.store import read_config

    run = Path(run_dir)
    record = read_config(run)
    if not record:
        raise UsageError(f"{run} is not a run folder (no config.yaml)")
    if record.get("algo") != "pwm":
        raise UsageError(f"{run} is a {record.get('algo')} run; wm-check needs a pwm run")
    spec = env_spec(record["env"])
    if not spec.differentiable:
        raise UsageError(f"env '{record['env']}' has no simulator gradients to compare the model with")
    ckpt = run / "checkpoints" / f"{checkpoint}.pt"
    if not ckpt.exists():
        raise UsageError(f"{ckpt} not found (valid checkpoints: latest, best)")
    cfg = from_dict(PWMConfig, record["algo_config"])
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["algo_state"]
    wm = load_world_model(cfg.world_model, device)
    wm.load_state_dict(state["wm"])
    actor = LatentActor(wm.cfg.latent_dim, wm.act_dim, cfg.actor_hidden, cfg.init_log_std).to(device)
    actor.load_state_dict(state["actor"])
    critics = CriticEnsemble(wm.cfg.latent_dim, cfg.critic_hidden, cfg.num_critics).to(device)
    critics.load_state_dict(state["critics"])
    wm.requires_grad_(False)
    critics.requires_grad_(False)
    env_cfg = from_dict(spec.config, record.get("env_config") or {})
    env = make_env(record["env"], worlds, device, True, **dataclasses.asdict(env_cfg))
    obs, _ = env.reset(seed=seed)
    with torch.no_grad():
        for _ in range(warmup):
            obs = env.step(actor(wm.encode(obs), deterministic=True))[0]
    gen = torch.Generator().manual_seed(seed)
    candidates = {
        "policy": policy_actions(env, lambda o: actor(wm.encode(o), deterministic=True), obs, horizon),
        "random": (torch.rand(horizon, worlds, wm.act_dim, generator=gen) * 2 - 1).to(obs.device),
    }
    out = {k: model_gradient_alignment(env, wm, obs, a, cfg.gamma).summary() for k, a in candidates.items()}
    no_value = dataclasses.replace(cfg, value_gradient=False)

    def actor_cos(c: Any) -> float:
        return sum(actor_gradient_cosine(env, wm, actor, critics, obs, c, s) for s in range(noise_draws)) / noise_draws

    out["actor"] = {"cosine": actor_cos(cfg), "cosine_rewards": actor_cos(no_value)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sampled = policy_actions(env, lambda o: actor(wm.encode(o)), obs, horizon)
    look = reward_lookahead_alignment(env, wm, obs, sampled)
    out["lookahead"] = {f.name: getattr(look, f.name).tolist() for f in dataclasses.fields(look)}
    if ends:
        out["ends"] = episode_end_errors(wm, heldout_episodes(Path(cfg.world_model)), horizon)
    return out


def heldout_episodes(model_dir: str | Path) -> Any:
    """The held-out split (an :class:`~pwm_bench.datasets.EpisodeDataset`) of the dataset a pretrained
    world model's folder names, with the pretraining's own seed and share."""
    model_dir = Path(model_dir)
    import yaml

    from pwm_bench.datasets import EpisodeDataset
    from pwm_bench.errors import UsageError

    file = model_dir / "config.yaml"
    record = yaml.safe_load(file.read_text()) if file.exists() else None
    if not isinstance(record, dict) or "dataset" not in record:
        raise UsageError(f"{model_dir}: no pretraining record (config.yaml with a dataset) to find the model's data")
    pre = record.get("pretrain") or {}
    data = EpisodeDataset(record["dataset"])
    return data.split(float(pre.get("holdout", 0.05)), seed=int(pre.get("seed", 0)))[1]


__all__ = [
    "GradientAlignment",
    "LookaheadAlignment",
    "check_pwm_run",
    "episode_end_errors",
    "heldout_episodes",
    "model_gradient_alignment",
    "policy_actions",
    "probing",
    "reward_lookahead_alignment",
]
