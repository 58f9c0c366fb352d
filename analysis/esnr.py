"""Gradient variance and ESNR against horizon: through the simulator and through world models.

The PWM paper's double-pendulum study: a freshly initialised, seeded stochastic policy starts from
one deterministic state, and for each horizon ``h`` the gradient of the ``h``-step return with
respect to the policy's parameters is sampled over the policy's noise, (i) through the
differentiable simulator and (ii) through world models trained with horizons 3 and 16. Its variance
and ESNR (:mod:`pwm_bench.gradient_stats`) are compared against ``h``.

Protocol (``full``, the default):

- Env: ``double_pendulum`` without stochastic init (poles hanging at rest), ``S`` worlds at once.
- Data and models: ``data_episodes`` episodes of ``data_envs`` worlds with stochastic init and
  uniform random actions; two world models (SimNorm, small widths for a CPU) pretrained on them
  with model horizons 3 and 16. Both live in the results store (``datasets/`` and
  ``world_models/``) and are reused by later calls.
- Policy: ``a = tanh(μ(z) + σ ε)``, ``μ`` an MLP with one ELU hidden layer acting on a latent ``z``,
  ``log σ`` a learned vector (initially ``log 0.2``), weights drawn from a seeded generator. As in
  the reference the policy acts on a world model's latent: through the simulator ``z =
  h₁₆(o_t)`` (the H=16 model's encoder), through a model ``z`` is the model's own rollout.
- Return: ``Σ_{t<h} r_t`` in env units (the models' rewards are mapped back with
  ``reward_to_env``). The gradient flows through the policy's inputs as well (the full
  first-order gradient of the h-step return, the one SHAC and PWM follow).
- Noise: ``ε`` is the same for all three sources at a given ``h`` (common random numbers) and fresh
  for every ``h``.

``reference`` is the reference script's variant: the policy's input is detached, so the gradient
only flows through the actions into the dynamics and rewards.

The ``S`` samples of one horizon run as ``S`` worlds (or ``S`` batch rows of a model) in one
rollout; each has its own copy of the policy's parameters, so one backward pass gives every
sample's gradient exactly (:func:`per_sample_policy_grads` is tested against a loop over samples).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pwm_bench.analysis.experiments import STIFFNESS_KE
from pwm_bench.gradient_stats import stats_of

log = logging.getLogger(__name__)

ENV = "double_pendulum"
MODEL_HORIZONS = (3, 16)
"""Training horizons of the two world models (the paper's "MLP H=3" and "MLP H=16")."""
INIT_STD = 0.2
"""Initial policy noise σ (the policy's log σ starts at log 0.2)."""


@dataclasses.dataclass(frozen=True)
class EsnrScale:
    """Sizes of one scale of the study.

    Attributes:
        horizons: rollout horizons h.
        samples: noise samples S per horizon.
        data_envs: worlds collecting the models' data.
        data_episodes: episodes (of 240 steps) per world.
        wm_steps: pretraining steps per model.
        wm_batch: pretraining windows per step.
        latent: latent size of the models (a multiple of 8).
        width: hidden width of the models.
        policy_hidden: hidden width of the policy.
    """

    horizons: tuple[int, ...]
    samples: int
    data_envs: int
    data_episodes: int
    wm_steps: int
    wm_batch: int
    latent: int = 64
    width: int = 128
    policy_hidden: int = 32


SCALES: dict[str, EsnrScale] = {
    "smoke": EsnrScale(horizons=(1, 2, 4, 8), samples=8, data_envs=8, data_episodes=1, wm_steps=60, wm_batch=32),
    "cpu": EsnrScale(
        horizons=tuple(range(1, 51)), samples=100, data_envs=64, data_episodes=4, wm_steps=3000, wm_batch=256
    ),
}


# --------------------------------------------------------------------------------------------------
# the policy, with one copy of its parameters per sample


@dataclasses.dataclass
class LatentPolicy:
    """Gaussian policy ``tanh(W₂ elu(W₁ z + b₁) + b₂ + exp(log σ) ε)`` on latents of size ``L``.

    Attributes:
        params: name → tensor, ``w1 (L, K)``, ``b1 (K,)``, ``w2 (K, A)``, ``b2 (A,)``, ``log_std (A,)``.
    """

    params: dict[str, torch.Tensor]

    @classmethod
    def init(cls, latent: int, act_dim: int, hidden: int, seed: int = 0, std: float = INIT_STD) -> LatentPolicy:
        """Weights ``N(0, 1/fan_in)`` from a generator seeded with ``seed``; zero biases."""
        g = torch.Generator().manual_seed(seed)
        return cls(
            {
                "w1": torch.randn(latent, hidden, generator=g) / math.sqrt(latent),
                "b1": torch.zeros(hidden),
                "w2": torch.randn(hidden, act_dim, generator=g) / math.sqrt(hidden),
                "b2": torch.zeros(act_dim),
                "log_std": torch.full((act_dim,), math.log(std)),
            }
        )

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def copies(self, samples: int) -> dict[str, torch.Tensor]:
        """``samples`` leaf copies ``(S, *shape)`` of every parameter, each requiring a gradient."""
        return {k: v.unsqueeze(0).repeat(samples, *([1] * v.ndim)).requires_grad_() for k, v in self.params.items()}

    @staticmethod
    def act(p: dict[str, torch.Tensor], z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Actions ``(S, A)`` of latents ``z (S, L)`` and noise ``eps (S, A)`` with per-sample params ``p``."""
        h = torch.nn.functional.elu(torch.einsum("sl,slk->sk", z, p["w1"]) + p["b1"])
        mean = torch.einsum("sk,ska->sa", h, p["w2"]) + p["b2"]
        return torch.tanh(mean + p["log_std"].exp() * eps)


def flatten_grads(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample gradients ``(S, P)`` from per-copy gradients ``[(S, *shape), ...]``."""
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)


def per_sample_policy_grads(
    policy: LatentPolicy,
    rollout: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    samples: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(S, P)`` of every sample's return w.r.t. the policy's parameters, and the returns ``(S,)``.

    ``rollout(params) -> returns (S,)`` must let sample ``s`` touch only ``params[k][s]``; then the
    gradient of ``Σ_s returns_s`` w.r.t. copy ``s`` is sample ``s``'s gradient.
    """
    p = policy.copies(samples)
    ret = rollout(p)
    if ret.shape != (samples,):
        raise ValueError(f"rollout must return ({samples},) returns, got {tuple(ret.shape)}")
    grads = torch.autograd.grad(ret.sum(), list(p.values()), allow_unused=True)
    flat = flatten_grads([torch.zeros_like(v) if g is None else g for v, g in zip(p.values(), grads, strict=True)])
    return flat, ret.detach()


def noise(h: int, samples: int, act_dim: int, seed: int) -> torch.Tensor:
    """Policy noise ``(h, S, A)`` of horizon ``h`` (the same for every source)."""
    g = torch.Generator().manual_seed(seed * 100_003 + h)
    return torch.randn(h, samples, act_dim, generator=g)


def sim_return(
    env: Any, encoder: Callable[[torch.Tensor], torch.Tensor], eps: torch.Tensor, detach_inputs: bool
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """Rollout through the differentiable ``env`` (``S`` worlds) from its reset state; returns ``(S,)``."""

    def rollout(p: dict[str, torch.Tensor]) -> torch.Tensor:
        obs, _ = env.reset(seed=0)
        ret = torch.zeros(env.num_envs)
        with env.resets_suspended():  # a world that falls keeps falling: the h-step return has no reset in it
            for t in range(eps.shape[0]):
                z = encoder(obs)
                a = LatentPolicy.act(p, z.detach() if detach_inputs else z, eps[t])
                obs, r, _, _, _ = env.step(a)
                ret = ret + r
        return ret

    return rollout


def model_return(
    model: Any, obs0: torch.Tensor, eps: torch.Tensor, detach_inputs: bool
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """Rollout through world model ``model`` from ``obs0 (S, O)``; returns ``(S,)`` in env units."""

    def rollout(p: dict[str, torch.Tensor]) -> torch.Tensor:
        z = model.encode(obs0)
        ret = torch.zeros(obs0.shape[0])
        for t in range(eps.shape[0]):
            a = LatentPolicy.act(p, z.detach() if detach_inputs else z, eps[t])
            ret = ret + model.reward_to_env(model.reward(z, a))
            z = model.next(z, a)
        return ret

    return rollout


# --------------------------------------------------------------------------------------------------
# data and world models in the store


def _collect(folder: Path, scale: EsnrScale, seed: int) -> Path:
    """The models' training data: uniform random actions from stochastic starts (reused when present)."""
    from pwm_bench.datasets import RecordingEnv, read_manifest
    from pwm_bench.envs import make_env

    if (folder / "manifest.json").exists():
        m = read_manifest(folder)
        if m.get("source", {}).get("complete"):
            return folder
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    env = make_env(ENV, scale.data_envs, "cpu")
    steps = scale.data_episodes * env.max_episode_steps
    rec = RecordingEnv.into(
        tmp, env, ENV, {"algo": "uniform-random", "study": "esnr", "seed": seed, "steps": steps, "complete": True}
    )
    g = torch.Generator().manual_seed(seed)
    rec.reset(seed=seed)
    for _ in range(steps):
        rec.step(torch.rand(env.num_envs, env.act_dim, generator=g) * 2.0 - 1.0)
    rec.close()
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _model(root: Path, data: Path, scale_name: str, scale: EsnrScale, horizon: int, seed: int) -> Any:
    from pwm_bench.pretrain import PretrainConfig, load_world_model, pretrain_world_model, world_models_root
    from pwm_bench.progress import LogReporter
    from pwm_bench.world_model import sized_config

    out = world_models_root(root) / f"esnr-{ENV}-{scale_name}-h{horizon}"
    summary = out / "summary.json"
    if not (summary.exists() and json.loads(summary.read_text()).get("status") == "completed"):
        cfg = PretrainConfig(
            steps=scale.wm_steps,
            batch_size=scale.wm_batch,
            horizon=horizon,
            eval_every=max(scale.wm_steps // 5, 1),
            seed=seed,
            # the units the study's models and published numbers were made with (r / σ); ESNR does
            # not depend on the reward's scale, and a cached model keeps its folder name
            reward_norm="scale",
        )
        wm = sized_config("pwm", latent_dim=scale.latent, mlp_dim=scale.width, enc_dim=scale.width)
        pretrain_world_model(data, out, cfg, wm, resume=True, reporter=LogReporter())
    model = load_world_model(out)
    for q in model.parameters():
        q.requires_grad_(False)
    return model, json.loads(summary.read_text())


Rollout = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def sample_gradients(
    sources: dict[str, Callable[[torch.Tensor], Rollout]],
    policy: LatentPolicy,
    horizons: Sequence[int],
    samples: int,
    act_dim: int,
    seed: int = 0,
    what: str = "esnr",
) -> tuple[dict[str, torch.Tensor], dict[str, list[float]]]:
    """Per-sample gradients of every source at every horizon.

    Args:
        sources: name → ``factory(eps (h, S, A)) -> rollout`` (see :func:`sim_return`, :func:`model_return`).
        policy: the policy whose parameters are differentiated.
        horizons: the horizons h.
        samples: noise samples S.
        act_dim: action size A.
        seed: seed of the noise.
        what: name in the progress log.

    Returns:
        ``grads`` name → ``(n_h, S, P)`` float32 and ``returns`` name → mean h-step return per horizon.
    """
    grads: dict[str, list[torch.Tensor]] = {k: [] for k in sources}
    returns: dict[str, list[float]] = {k: [] for k in sources}
    for i, h in enumerate(horizons):
        eps = noise(h, samples, act_dim, seed)
        for k, factory in sources.items():
            g, ret = per_sample_policy_grads(policy, factory(eps), samples)
            grads[k].append(g.to(torch.float32))
            returns[k].append(float(ret.mean()))
        if i == len(horizons) - 1 or (i + 1) % 10 == 0:
            log.info("%s: %d of %d horizons done (h up to %d)", what, i + 1, len(horizons), h)
    return {k: torch.stack(v) for k, v in grads.items()}, returns


def compute(root: Path, scale_name: str, protocol: str, seed: int = 0) -> dict[str, Any]:
    """The double-pendulum study at ``scale_name``: train (or reuse) the models, then sample every gradient.

    Returns ``{"grads": {source: (n_h, S, P) float32}, "returns", "horizons", "models": {name: summary}, ...}``.
    """
    from pwm_bench.datasets import datasets_root
    from pwm_bench.envs import make_env

    scale = SCALES[scale_name]
    data = _collect(datasets_root(root) / f"esnr-{ENV}-{scale_name}-random", scale, seed)
    models, summaries = {}, {}
    for h in MODEL_HORIZONS:
        models[f"model H={h}"], summaries[f"model H={h}"] = _model(root, data, scale_name, scale, h, seed)
    encoder = models[f"model H={MODEL_HORIZONS[-1]}"].encode
    env = make_env(ENV, scale.samples, "cpu", differentiable=True, stochastic_init=False)
    obs0 = env.reset(seed=0)[0].detach()
    policy = LatentPolicy.init(scale.latent, env.act_dim, scale.policy_hidden, seed=seed)
    detach = protocol == "reference"
    sources: dict[str, Callable[[torch.Tensor], Rollout]] = {
        "simulator": lambda eps: sim_return(env, encoder, eps, detach)
    }
    for k, m in models.items():
        sources[k] = lambda eps, m=m: model_return(m, obs0, eps, detach)
    grads, returns = sample_gradients(sources, policy, scale.horizons, scale.samples, env.act_dim, seed, ENV)
    return {
        "grads": grads,
        "returns": returns,
        "horizons": list(scale.horizons),
        "models": summaries,
        "dataset": str(data),
        "num_params": policy.num_params,
        "samples": scale.samples,
    }


# --------------------------------------------------------------------------------------------------
# hopper and ant: the simulator at two contact stiffnesses against the pretrained PWM model

LOCOMOTION_ENVS = ("hopper", "ant")
STIFF_CONTACT = {"contact_ke": 1.0e5, "contact_kd": 1.0e4}
"""The paper's stiff hopper (ke 1e5, kd 1e4)."""
HOPPER_STIFFER = STIFFNESS_KE[1:]
"""The hopper's stiffer contacts (kd = ke / 10): the ``stiffness`` experiment's axis beyond the default."""


@dataclasses.dataclass(frozen=True)
class LocomotionScale:
    """Sizes of the locomotion variant: horizons, samples S and the policy's hidden width."""

    horizons: tuple[int, ...]
    samples: int
    policy_hidden: int = 16


LOCOMOTION_SCALES: dict[str, LocomotionScale] = {
    "smoke": LocomotionScale(horizons=(1, 4, 8), samples=4),
    "cpu": LocomotionScale(horizons=(1, 2, 4, 8, 16, 32, 64), samples=100),
}


def find_pretrained(root: Path, env: str) -> Path | None:
    """The newest completed PWM world model of ``env`` under ``root/world_models`` (``pwm-<env>-*``)."""
    from pwm_bench.pretrain import world_models_root

    found = []
    for d in world_models_root(root).glob(f"pwm-{env}-*"):
        summary = d / "summary.json"
        ok = summary.exists() and (d / "model.pt").exists()
        if ok and json.loads(summary.read_text()).get("status") == "completed":
            found.append(((d / "model.pt").stat().st_mtime, d))
    return max(found)[1] if found else None


def _contacts(name: str) -> list[dict[str, float]]:
    """Env options of the stiffer simulators of ``name`` (the hopper: the stiffness axis; the ant: 1e5)."""
    if name == "hopper":
        return [{"contact_ke": ke, "contact_kd": ke / 10} for ke in HOPPER_STIFFER]
    return [dict(STIFF_CONTACT)]


def _locomotion_sources(
    sims: Sequence[Any], model: Any, obs0: torch.Tensor, detach: bool
) -> dict[str, Callable[[torch.Tensor], Rollout]]:
    """The simulators (the default contact first, then the stiffer ones) and the PWM model."""
    out: dict[str, Callable[[torch.Tensor], Rollout]] = {}
    for i, env in enumerate(sims):
        c = env.cfg
        label = f"simulator{' stiff' if i else ''} (ke {c.contact_ke:.0e}, kd {c.contact_kd:.0e})"
        out[label] = lambda eps, env=env: sim_return(env, model.encode, eps, detach)
    out["PWM model"] = lambda eps: model_return(model, obs0, eps, detach)
    return out


def compute_locomotion(root: Path, scale_name: str, protocol: str, seed: int = 0) -> dict[str, Any]:
    """Hopper and ant: gradients through the simulator (default and stiff contact) and the PWM model.

    Envs without a pretrained PWM model in the store are skipped (logged); with none at all this
    raises :class:`~pwm_bench.errors.UsageError` naming the command that makes one.
    """
    from pwm_bench.envs import make_env
    from pwm_bench.errors import UsageError
    from pwm_bench.pretrain import load_world_model

    scale = LOCOMOTION_SCALES[scale_name]
    detach = protocol == "reference"
    out: dict[str, Any] = {"envs": {}, "horizons": list(scale.horizons), "samples": scale.samples, "skipped": []}
    for name in LOCOMOTION_ENVS:
        wm_dir = find_pretrained(root, name)
        if wm_dir is None:
            log.warning("esnr-locomotion: no pretrained PWM world model for %s under %s; skipped", name, root)
            out["skipped"].append(name)
            continue
        model = load_world_model(wm_dir)
        for q in model.parameters():
            q.requires_grad_(False)
        sims = [
            make_env(name, scale.samples, "cpu", differentiable=True, stochastic_init=False, **opts)
            for opts in [{}, *_contacts(name)]
        ]
        default = sims[0]
        obs0 = default.reset(seed=0)[0].detach()
        policy = LatentPolicy.init(model.cfg.latent_dim, default.act_dim, scale.policy_hidden, seed=seed)
        sources = _locomotion_sources(sims, model, obs0, detach)
        grads, returns = sample_gradients(
            sources, policy, scale.horizons, scale.samples, default.act_dim, seed, f"esnr-locomotion {name}"
        )
        out["envs"][name] = {
            "grads": grads,
            "returns": returns,
            "world_model": str(wm_dir),
            "num_params": policy.num_params,
        }
    if not out["envs"]:
        raise UsageError(
            f"esnr-locomotion needs a pretrained PWM world model of hopper or ant under {root}/world_models; "
            f"make one with `pwm-bench run --algo pwm --env hopper --out {root}`"
        )
    return out


def curves(grads: torch.Tensor) -> tuple[list[float], list[float]]:
    """Variance and ESNR per horizon of gradients ``(n_h, S, P)``."""
    stats = [stats_of(g) for g in grads]
    return [s.variance for s in stats], [s.esnr for s in stats]


__all__ = [
    "LOCOMOTION_SCALES",
    "MODEL_HORIZONS",
    "SCALES",
    "EsnrScale",
    "LatentPolicy",
    "compute",
    "compute_locomotion",
    "curves",
    "find_pretrained",
    "model_return",
    "noise",
    "per_sample_policy_grads",
    "sample_gradients",
    "sim_return",
]
