"""The DiffRL rigid-body environments on Warp/Newton: hopper, ant, humanoid, double_pendulum and the
muscle-driven lower bodies (snu_humanoid from the MASS files, muscle_humanoid from the project's own
muscle layout).

Each env simulates ``num_envs`` worlds of one robot with :class:`~pwm_bench.envs.physics.ArticulatedSim`
(dflex joint forces and ground contact on Newton's Featherstone solver) and computes observations,
rewards and terminations in torch, following DiffRL's ``HopperEnv``, ``AntEnv``, ``HumanoidEnv`` and
``SNUHumanoidEnv``.

Conventions that differ from DiffRL on purpose:

- **z-up.** Newton is z-up, DiffRL was y-up. Heights are ``z``, the forward direction is ``+x`` and
  headings are projected on the x-y plane. Root quaternions (xyzw) and velocities in the observation
  are expressed in z-up world axes, so individual components are permuted relative to DiffRL (for
  example yaw lives in ``quat.z`` here, in ``quat.y`` there). The start pose needs no
  ``rot_x(-90°)``, so the observed quaternion is the orientation relative to the start pose, as in
  DiffRL (``torso_quat = q ⊗ conj(start_rot)``).
- **Reward timing.** The reward of step ``t`` reads the state *after* the step, ``r_t = r(s_{t+1}, a_t)``.
  DiffRL's own envs do the same (they simulate, then compute observations and rewards from the new
  state); PWM's dflex wrapper computed the reward before refreshing its observation buffer (PWM issue
  #4), which makes ``r_t`` depend on ``s_t`` and lets the action reach the reward only through the
  action penalty. With ``r(s_{t+1}, a_t)`` the action reaches the progress reward through the
  dynamics, which is what SHAC's and PWM's first-order gradients are meant to exploit, and every
  algorithm in this suite sees the same convention.
- **Root velocity.** Newton's free-joint velocity is the centre-of-mass twist; observations use the
  velocity of the torso origin, ``v_o = v_com - omega × (R com)``, which is the quantity DiffRL observes
  (``v - p × omega`` of its world-origin twist).

Shapes: observations ``(num_envs, obs_dim)``, rewards ``(num_envs,)``, all float32 on the env device.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from pwm_bench.config import neutral
from pwm_bench.envs import robots
from pwm_bench.envs.base import VecEnv
from pwm_bench.envs.physics import ArticulatedSim, ContactParams, Robot, quat_rotate
from pwm_bench.errors import UsageError, unknown_choice

if TYPE_CHECKING:
    from pwm_bench.envs.mass import MassModel


@dataclasses.dataclass
class WarpEnvConfig:
    """Knobs shared by the Warp rigid-body envs (``--set env.<field>=value``)."""

    episode_length: int = 1000
    """Time limit in control steps."""
    substeps: int = 16
    """Solver steps per control step of 1/60 s."""
    contact_ke: float = 2.0e4
    """Ground-contact normal stiffness [N/m]."""
    contact_kd: float = 1.0e3
    """Ground-contact damping per unit depth [N·s/m²]."""
    contact_kf: float = 1.0e3
    """Ground-contact friction slope [N·s/m]."""
    contact_mu: float = 0.9
    """Ground-contact friction coefficient."""
    stochastic_init: bool = True
    """Randomise the initial state (DiffRL ``stochastic_env``)."""
    early_termination: bool = True
    """End episodes when the robot falls (hopper, ant; the humanoid always terminates, as in DiffRL)."""
    graph_capture: bool = True
    """Capture the forward control step once in a Warp graph and replay it: a CUDA graph on GPUs,
    Warp's CPU graph on the CPU (no Python per kernel launch). Results are the same bit for bit."""
    sim_threads: int = neutral(0)
    """CPU threads the worlds are split across (ignored on CUDA). 0 picks: on the humanoid-class
    envs, whose kernels are long enough to run side by side, torch's thread count (a run's
    ``--threads``) with at least 32 worlds per thread; 1 elsewhere, where the Python side of the
    kernel launches dominates. Results do not depend on it."""

    def validate(self) -> None:
        if self.episode_length <= 0:
            raise UsageError(f"env.episode_length must be positive, got {self.episode_length}")
        if self.substeps <= 0:
            raise UsageError(f"env.substeps must be positive, got {self.substeps}")
        if self.sim_threads < 0:
            raise UsageError(f"env.sim_threads must be >= 0 (0: automatic), got {self.sim_threads}")
        for name in ("contact_ke", "contact_kd", "contact_kf", "contact_mu"):
            if getattr(self, name) < 0:
                raise UsageError(f"env.{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass
class HopperConfig(WarpEnvConfig):
    """Hopper knobs; defaults are DiffRL's (contact 2e4 / 1e3 / 1e3 / 0.9, 16 substeps)."""

    direction: float = 1.0
    """Sign of the rewarded velocity: 1 hops forward (DiffRL), -1 backward (a multi-task variant)."""

    def validate(self) -> None:
        super().validate()
        if self.direction not in (1.0, -1.0):
            raise UsageError(f"env.direction must be 1 or -1, got {self.direction}")


@dataclasses.dataclass
class AntConfig(WarpEnvConfig):
    """Ant knobs; defaults are DiffRL's (contact 4e4 / 1e4 / 3e3 / 0.75, 16 substeps)."""

    contact_ke: float = 4.0e4
    """Ground-contact normal stiffness [N/m]."""
    contact_kd: float = 1.0e4
    """Ground-contact damping per unit depth [N·s/m²]."""
    contact_kf: float = 3.0e3
    """Ground-contact friction slope [N·s/m]."""
    contact_mu: float = 0.75
    """Ground-contact friction coefficient."""
    direction_deg: float = 0.0
    """Direction to run in, degrees counter-clockwise from +x (DiffRL: 0). The progress term is the
    velocity along it and the heading target lies along it (multi-task variants)."""


@dataclasses.dataclass
class HumanoidConfig(WarpEnvConfig):
    """Humanoid knobs; defaults are DiffRL's (contact 2e4 / 5e3 / 1e3 / 0.75, 48 substeps)."""

    substeps: int = 48
    """Solver steps per control step of 1/60 s."""
    contact_kd: float = 5.0e3
    """Ground-contact damping per unit depth [N·s/m²]."""
    contact_mu: float = 0.75
    """Ground-contact friction coefficient."""


@dataclasses.dataclass
class DoublePendulumConfig(WarpEnvConfig):
    """Cart double pendulum knobs (no ground contact; 4 substeps, 240-step episodes)."""

    episode_length: int = 240
    """Time limit in control steps."""
    substeps: int = 4
    """Solver steps per control step of 1/60 s."""
    early_termination: bool = False
    """The double pendulum never terminates early."""


def _quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of xyzw quaternions."""
    ax, ay, az, aw = a.unbind(-1)
    bx, by, bz, bw = b.unbind(-1)
    return torch.stack(
        (
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ),
        dim=-1,
    )


class WarpArticulationEnv(VecEnv):
    """Base of the Warp rigid-body envs: state handling, stepping, resets and gradients.

    Subclasses define :meth:`robot`, :meth:`_initial_state`, :meth:`_observe`, :meth:`_reward` and
    :meth:`_fallen`. The state of world ``i`` is ``(q[i], qd[i], t[i], last_action[i])``; with
    ``differentiable=True`` ``q`` and ``qd`` carry the autograd graph until :meth:`detach`.
    """

    supports_gradients = True
    dt: float = 1.0 / 60.0
    """Control step [s]."""
    parallel_worlds: bool = False
    """Whether ``sim_threads=0`` splits the worlds across torch's threads (see :class:`WarpEnvConfig`)."""

    def __init__(
        self, name: str, obs_dim: int, num_envs: int, device: Any, differentiable: bool, cfg: WarpEnvConfig
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        robot = self.robot()
        contact = None
        if self.has_ground:
            contact = ContactParams(cfg.contact_ke, cfg.contact_kd, cfg.contact_kf, cfg.contact_mu)
        muscles, gain, bias = self.muscle_set()
        self.sim = ArticulatedSim(
            robot,
            num_envs,
            device,
            dt=self.dt,
            substeps=cfg.substeps,
            contact=contact,
            muscles=muscles,
            muscle_gain=gain,
            muscle_bias=bias,
            threads=cfg.sim_threads or (None if self.parallel_worlds else 1),
        )
        self.sim.graph_capture = cfg.graph_capture
        super().__init__(
            name=name,
            num_envs=num_envs,
            obs_dim=obs_dim,
            act_dim=self.sim.act_dim,
            device=device,
            max_episode_steps=cfg.episode_length,
            differentiable=differentiable,
        )
        self.nq, self.nqd = self.sim.nq, self.sim.nqd
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(0)
        self.q = self.sim.default_q().expand(num_envs, -1).clone()
        self.qd = torch.zeros(num_envs, self.nqd, device=self.device)
        self.t = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.last_action = torch.zeros(num_envs, self.act_dim, device=self.device)
        self._no_resets = False

    has_ground: bool = True

    def muscle_set(self) -> tuple[Any, float, float]:
        """``(MuscleSet or None, gain, bias)``: muscles driven by the actions (none: joint torques)."""
        return None, 1.0, 0.0

    # -- to implement ---------------------------------------------------------------------------

    @staticmethod
    def robot() -> Robot:
        raise NotImplementedError

    def _initial_state(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Initial ``(q (n, nq), qd (n, nqd))`` for ``n`` worlds, drawn from ``self._gen``."""
        raise NotImplementedError

    def _observe(self, q: torch.Tensor, qd: torch.Tensor, last_action: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _reward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _fallen(self, obs: torch.Tensor) -> torch.Tensor:
        """Boolean ``(n,)``: early-termination condition on the new observation."""
        return torch.zeros(obs.shape[0], dtype=torch.bool, device=obs.device)

    always_terminates: bool = False

    # -- helpers --------------------------------------------------------------------------------

    def _uniform(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        """Uniform samples in ``[-scale, scale]``."""
        return (2.0 * torch.rand(*shape, generator=self._gen, device=self.device) - 1.0) * scale

    # -- VecEnv ---------------------------------------------------------------------------------

    def _reset(self, seed: int | None) -> torch.Tensor:
        if seed is not None:
            self._gen.manual_seed(seed)
        self.q, self.qd = self._initial_state(self.num_envs)
        self.t.zero_()
        self.last_action = torch.zeros(self.num_envs, self.act_dim, device=self.device)
        return self._observe(self.q, self.qd, self.last_action)

    def _step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        grad = self.differentiable and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad):
            if not grad:
                actions = actions.detach()
            q, qd = self.sim.step(self.q, self.qd, actions)
            obs = self._observe(q, qd, actions)
            reward = self._reward(obs, actions)
            with torch.no_grad():
                invalid = ~(torch.isfinite(q).all(-1) & torch.isfinite(qd).all(-1)) | (q.abs() > 1.0e6).any(-1)
                terminated = invalid.clone()
                if self.cfg.early_termination or self.always_terminates:
                    terminated |= self._fallen(obs.detach())
                if not self._no_resets:
                    self.t += 1
                truncated = (self.t >= self.cfg.episode_length) & ~terminated
                done = terminated | truncated
            if bool(invalid.any()):
                keep = (~invalid).unsqueeze(-1)
                reward = torch.where(invalid, torch.zeros_like(reward), reward)
                obs = torch.where(keep, obs, torch.nan_to_num(obs.detach(), nan=0.0, posinf=0.0, neginf=0.0))
            final_obs = obs
            last_action = actions
            if bool(done.any()) and not self._no_resets:
                q0, qd0 = self._initial_state(int(done.sum()))
                keep = (~done).unsqueeze(-1)
                q_new = torch.zeros_like(q.detach())
                qd_new = torch.zeros_like(qd.detach())
                q_new[done] = q0
                qd_new[done] = qd0
                # torch.where keeps the graph of the worlds that go on (DiffRL resets row by row too)
                q = torch.where(keep, q, q_new)
                qd = torch.where(keep, qd, qd_new)
                last_action = torch.where(keep, actions, torch.zeros_like(actions))
                self.t.masked_fill_(done, 0)
                obs = torch.where(keep, obs, self._observe(q, qd, last_action))
            self.q, self.qd, self.last_action = q, qd, last_action
        info: dict[str, Any] = {"final_obs": final_obs, "_final_obs": done}
        return obs, reward, terminated, truncated, info

    def detach(self) -> None:
        """Cut the autograd graph at the current state without resetting any world."""
        self.q = self.q.detach()
        self.qd = self.qd.detach()
        self.last_action = self.last_action.detach()

    def close(self, **kwargs: Any) -> None:
        self.sim.close()
        super().close(**kwargs)

    def get_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of the full simulator state (for gradient checks and rollouts from a state)."""
        return {
            "q": self.q.detach().clone(),
            "qd": self.qd.detach().clone(),
            "t": self.t.clone(),
            "last_action": self.last_action.detach().clone(),
        }

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a state from :meth:`get_state`; ``q``/``qd`` may require grad to differentiate from it."""
        self.q = state["q"]
        self.qd = state["qd"]
        self.t = state["t"].clone()
        self.last_action = state["last_action"]

    # -- shared observation pieces --------------------------------------------------------------

    def _root_frame(self, q: torch.Tensor, qd: torch.Tensor) -> dict[str, torch.Tensor]:
        """Floating-base quantities: position, quaternion, origin velocity, angular velocity, up, heading."""
        pos = q[:, 0:3]
        quat = q[:, 3:7]
        v_com = qd[:, 0:3]
        omega = qd[:, 3:6]
        com = quat_rotate(quat, self._torso_com.expand(q.shape[0], 3))
        v_origin = v_com - torch.cross(omega, com, dim=-1)
        up = quat_rotate(quat, self._ez.expand(q.shape[0], 3))[:, 2]
        heading = quat_rotate(quat, self._ex.expand(q.shape[0], 3))
        to_target = self._target - pos
        to_target = torch.cat([to_target[:, :2], torch.zeros_like(to_target[:, 2:])], dim=-1)
        target_dir = to_target / to_target.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        heading_proj = (heading * target_dir).sum(-1)
        return {"pos": pos, "quat": quat, "v": v_origin, "omega": omega, "up": up, "heading": heading_proj}

    def _init_root_constants(self, target_x: float) -> None:
        """Torso COM, axes, run direction ``self._run_dir`` (unit, x-y) and the heading target."""
        dev = self.device
        self._torso_com = self.sim.body_com()[0].to(dev)
        self._ez = torch.tensor([0.0, 0.0, 1.0], device=dev)
        self._ex = torch.tensor([1.0, 0.0, 0.0], device=dev)
        start = self.sim.default_q()[:3].to(dev)
        angle = math.radians(float(getattr(self.cfg, "direction_deg", 0.0)))
        self._run_dir = torch.tensor([math.cos(angle), math.sin(angle)], device=dev)
        self._target = torch.tensor([target_x * math.cos(angle), target_x * math.sin(angle), 0.0], device=dev) + start

    def _random_tilt(self, n: int, max_angle: float) -> torch.Tensor:
        """Quaternions ``(n, 4)`` rotating by a uniform angle in ``[-max_angle, max_angle]`` about a random axis."""
        angle = self._uniform(n, scale=max_angle)
        axis = torch.rand(n, 3, generator=self._gen, device=self.device) - 0.5
        axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        s = torch.sin(0.5 * angle).unsqueeze(-1)
        return torch.cat([axis * s, torch.cos(0.5 * angle).unsqueeze(-1)], dim=-1)

    joint_init_noise: float = 0.2
    """Half-width [rad] of the uniform noise on the joint coordinates at a stochastic start."""

    def _floating_init(self, n: int, start_joints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DiffRL init: position ±0.1 m, tilt ±7.5°, joints ±``joint_init_noise``, velocities ±0.25."""
        q = self.sim.default_q().expand(n, -1).clone()
        q[:, 7:] = start_joints
        qd = torch.zeros(n, self.nqd, device=self.device)
        if self.cfg.stochastic_init:
            q[:, 0:3] += self._uniform(n, 3, scale=0.1)
            q[:, 3:7] = _quat_mul(self._random_tilt(n, math.pi / 24.0), q[:, 3:7])
            if self.joint_init_noise:
                q[:, 7:] += self._uniform(n, self.nq - 7, scale=self.joint_init_noise)
            qd = self._uniform(n, self.nqd, scale=0.25)
        return q, qd


class HopperEnv(WarpArticulationEnv):
    """DiffRL hopper: obs 11 ``[z, θ, q_thigh, q_leg, q_foot, vx, vz, ω, qd_thigh, qd_leg, qd_foot]``, act 3.

    ``z`` is the torso height relative to its start height 1.25 m. Actions are 200 N·m per unit.
    Reward: ``d·vx + height + angle - 0.1 Σa²`` (``d = cfg.direction``, 1 by default) with
    ``h = clip(z + 0.3, -1, 0.3)``, height ``-200 h²`` if ``h < 0`` else ``h``, angle ``1 - θ² / (π/6)²``.
    Terminates when ``z < -0.45``.
    """

    def __init__(
        self, num_envs: int, device: Any = "cpu", differentiable: bool = False, cfg: HopperConfig | None = None
    ) -> None:
        super().__init__("hopper", 11, num_envs, device, differentiable, cfg or HopperConfig())

    @staticmethod
    def robot() -> Robot:
        return robots.hopper()

    def _initial_state(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.zeros(n, self.nq, device=self.device)
        qd = torch.zeros(n, self.nqd, device=self.device)
        if self.cfg.stochastic_init:
            q += self._uniform(n, self.nq, scale=0.05)
            qd += self._uniform(n, self.nqd, scale=0.05)
        return q, qd

    def _observe(self, q: torch.Tensor, qd: torch.Tensor, last_action: torch.Tensor) -> torch.Tensor:
        return torch.cat([q[:, 1:], qd], dim=-1)

    def _reward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        h = torch.clamp(obs[:, 0] - (-0.45 + 0.15), -1.0, 0.3)
        height = torch.where(h < 0.0, -200.0 * h * h, h)
        angle = 1.0 - obs[:, 1].square() / (math.pi / 6.0) ** 2
        return self.cfg.direction * obs[:, 5] + height + angle - 0.1 * action.square().sum(-1)

    def _fallen(self, obs: torch.Tensor) -> torch.Tensor:
        return obs[:, 0] < -0.45


class FloatingBaseEnv(WarpArticulationEnv):
    """Ant and humanoid: a free-floating torso observed as DiffRL does.

    Observation: ``[z, quat(4), v(3), ω(3), q_joints, 0.1 qd_joints, up_z, heading, last action]``.
    """

    target_x: float = 10000.0
    """x of the heading target [m] (relative to the start position)."""

    def __init__(
        self,
        name: str,
        obs_dim: int,
        num_envs: int,
        device: Any,
        differentiable: bool,
        cfg: WarpEnvConfig,
        start_joints: torch.Tensor | None = None,
    ) -> None:
        super().__init__(name, obs_dim, num_envs, device, differentiable, cfg)
        self._init_root_constants(self.target_x)
        self._start_joints = (
            torch.zeros(self.nq - 7, device=self.device) if start_joints is None else start_joints.to(self.device)
        )

    def _initial_state(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._floating_init(n, self._start_joints)

    def _observe(self, q: torch.Tensor, qd: torch.Tensor, last_action: torch.Tensor) -> torch.Tensor:
        r = self._root_frame(q, qd)
        return torch.cat(
            [
                r["pos"][:, 2:3],
                r["quat"],
                r["v"],
                r["omega"],
                q[:, 7:],
                0.1 * qd[:, 6:],
                r["up"].unsqueeze(-1),
                r["heading"].unsqueeze(-1),
                last_action,
            ],
            dim=-1,
        )


class AntEnv(FloatingBaseEnv):
    """DiffRL ant: obs 37, act 8 (200 N·m per unit). Reward ``vx + 0.1 up + heading + (z - 0.27)``.

    With ``cfg.direction_deg`` the progress term is the velocity along that direction and the heading
    target lies along it (``vx`` and +x by default, as in DiffRL).

    Observation: ``[z, quat(4), v(3), ω(3), q_joints(8), 0.1 qd_joints(8), up_z, heading, last action(8)]``.
    Terminates when the torso is lower than 0.27 m.
    """

    def __init__(
        self, num_envs: int, device: Any = "cpu", differentiable: bool = False, cfg: AntConfig | None = None
    ) -> None:
        start = torch.tensor(robots.ANT_START_JOINTS)
        super().__init__("ant", 37, num_envs, device, differentiable, cfg or AntConfig(), start)

    @staticmethod
    def robot() -> Robot:
        return robots.ant()

    def _reward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        progress = obs[:, 5:7] @ self._run_dir  # velocity along the run direction (vx by default)
        return progress + 0.1 * obs[:, 27] + obs[:, 28] + (obs[:, 0] - 0.27)

    def _fallen(self, obs: torch.Tensor) -> torch.Tensor:
        return obs[:, 0] < 0.27


class HumanoidEnv(FloatingBaseEnv):
    """DiffRL humanoid: obs 76, act 21 (``0.35 · strength`` N·m per unit).

    Observation: ``[z, quat(4), v(3), ω(3), q_joints(21), 0.1 qd_joints(21), up_z, heading, last action(21)]``.
    Reward: ``vx + 0.1 up + heading + height - 0.002 Σa²`` with ``h = clip(z - 0.84, -1, 0.1)``, height
    ``-200 h²`` if ``h < 0`` else ``10 h``. Terminates (always, as in DiffRL) below 0.74 m.
    """

    parallel_worlds = True

    always_terminates = True
    target_x = 200.0

    def __init__(
        self, num_envs: int, device: Any = "cpu", differentiable: bool = False, cfg: HumanoidConfig | None = None
    ) -> None:
        super().__init__("humanoid", 76, num_envs, device, differentiable, cfg or HumanoidConfig())

    @staticmethod
    def robot() -> Robot:
        return robots.humanoid()

    def _reward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        h = torch.clamp(obs[:, 0] - (0.74 + 0.1), -1.0, 0.1)
        height = torch.where(h < 0.0, -200.0 * h * h, 10.0 * h)
        return obs[:, 5] + 0.1 * obs[:, 53] + obs[:, 54] + height - 0.002 * action.square().sum(-1)

    def _fallen(self, obs: torch.Tensor) -> torch.Tensor:
        return obs[:, 0] < 0.74


class DoublePendulumEnv(WarpArticulationEnv):
    """Cart double pendulum swing-up: obs 6 ``[x, θ1, θ2, ẋ, θ̇1, θ̇2]``, act 1 (1000 N per unit).

    The poles start hanging down (``θ1 = π``); ``θ = 0`` is upright. Reward (after dflex's
    CartPoleSwingUp): ``-(θ1² + θ2²) - 0.1 (θ̇1² + θ̇2²) - 0.05 x² - 0.1 ẋ²`` with angles wrapped to
    ``[-π, π]``. No ground, no early termination, 240-step episodes, 4 substeps. With
    ``stochastic_init`` the coordinates get ``π (U - 0.5)`` and velocities ``0.5 (U - 0.5)`` as in
    CartPoleSwingUp; the gradient-variance study turns it off.
    """

    has_ground = False

    def __init__(
        self, num_envs: int, device: Any = "cpu", differentiable: bool = False, cfg: DoublePendulumConfig | None = None
    ) -> None:
        super().__init__("double_pendulum", 6, num_envs, device, differentiable, cfg or DoublePendulumConfig())

    @staticmethod
    def robot() -> Robot:
        return robots.cart_double_pendulum()

    def _initial_state(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.zeros(n, self.nq, device=self.device)
        q[:, 1] = math.pi
        qd = torch.zeros(n, self.nqd, device=self.device)
        if self.cfg.stochastic_init:
            q += self._uniform(n, self.nq, scale=0.5 * math.pi)
            qd += self._uniform(n, self.nqd, scale=0.25)
        return q, qd

    def _observe(self, q: torch.Tensor, qd: torch.Tensor, last_action: torch.Tensor) -> torch.Tensor:
        return torch.cat([q, qd], dim=-1)

    def _reward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        th = torch.remainder(obs[:, 1:3] + math.pi, 2.0 * math.pi) - math.pi
        return -(
            th.square().sum(-1)
            + 0.1 * obs[:, 4:6].square().sum(-1)
            + 0.05 * obs[:, 0].square()
            + 0.1 * obs[:, 3].square()
        )


# --------------------------------------------------------------------------------------------------
# the SNU humanoid: MASS lower body driven by 152 muscles

MASS_ENV_VAR = "PWM_BENCH_MASS_DIR"
MASS_FILES = ("human.xml", "muscle284.xml")


@dataclasses.dataclass
class MuscleHumanoidConfig(WarpEnvConfig):
    """Muscle-humanoid knobs; defaults are DiffRL's SNU humanoid (contact 5e3 / 2e3 / 1e3 / 0.5, 48 substeps)."""

    substeps: int = 48
    """Solver steps per control step of 1/60 s."""
    contact_ke: float = 5.0e3
    """Ground-contact normal stiffness [N/m]."""
    contact_kd: float = 2.0e3
    """Ground-contact damping per unit depth [N·s/m²]."""
    contact_kf: float = 1.0e3
    """Ground-contact friction slope [N·s/m]."""
    contact_mu: float = 0.5
    """Ground-contact friction coefficient."""
    strength_scale: float = 0.36
    """Peak muscle tension as a fraction of f0 (DiffRL applies its 0.6 twice: 0.36)."""
    muscle_model: Literal["linear", "hill"] = "linear"
    """'linear': DiffRL's law, tension = activation · strength. 'hill': the tension is scaled by the
    active force-length curve and a passive force resists stretch past the optimal fibre length."""

    def validate(self) -> None:
        super().validate()
        if self.muscle_model not in ("linear", "hill"):
            raise unknown_choice("env.muscle_model", str(self.muscle_model), ["linear", "hill"])
        if self.strength_scale < 0:
            raise UsageError(f"env.strength_scale must be >= 0, got {self.strength_scale}")


@dataclasses.dataclass
class SNUHumanoidConfig(MuscleHumanoidConfig):
    """SNU humanoid knobs: the muscle humanoid's plus where the MASS files are."""

    mass_dir: str = ""
    """Folder with the MASS files human.xml and muscle284.xml (empty: $PWM_BENCH_MASS_DIR)."""


def mass_files(mass_dir: str = "") -> tuple[Path, Path]:
    """The MASS skeleton and muscle files in ``mass_dir`` or ``$PWM_BENCH_MASS_DIR``.

    Raises:
        UsageError: no folder given or a file is missing; the message says where the files come from.
    """
    folder = mass_dir or os.environ.get(MASS_ENV_VAR, "")
    where = (
        "snu_humanoid needs the MASS model files human.xml and muscle284.xml (Apache-2.0, "
        "github.com/lsw9021/MASS, folder data/); pass --set env.mass_dir=DIR or set "
        f"{MASS_ENV_VAR}=DIR"
    )
    if not folder:
        raise UsageError(where)
    paths = tuple(Path(folder) / f for f in MASS_FILES)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"{', '.join(missing)} not found; {where}")
    return paths[0], paths[1]


class MuscleHumanoidEnv(FloatingBaseEnv):
    """pwm-bench's muscle humanoid: DiffRL's 11-body lower body with the project's 152 muscles.

    The model is :func:`pwm_bench.envs.muscle_template.template_model` (no files needed); the
    observation, actions, reward, termination and start states are those of the SNU humanoid
    (:class:`SNUHumanoidEnv`).

    Observation (53): ``[z, quat(4), v(3), ω(3), joint q(22), 0.1 joint qd(18), up, heading]`` (no
    previous action). Actions in [-1, 1] become activations ``0.5 a + 0.5`` of tensions
    ``0.36 f0`` [N]. Reward ``vx + 0.1 up + heading - 0.001 Σ(0.5 a + 0.5)`` (DiffRL computes a height
    term but does not add it). Terminates when the pelvis is below 0.46 m. Start: the rest pose,
    position ±0.1 m, tilt ±7.5°, velocities ±0.25 (joint angles are not randomised).
    """

    parallel_worlds = True

    joint_init_noise = 0.0  # DiffRL does not randomise the SNU humanoid's joint angles

    def __init__(
        self,
        num_envs: int,
        device: Any = "cpu",
        differentiable: bool = False,
        cfg: MuscleHumanoidConfig | None = None,
        name: str = "muscle_humanoid",
    ) -> None:
        cfg = cfg or MuscleHumanoidConfig()
        self._mass = self._load_model(cfg)
        self.name = name  # robot() names the model after the env
        super().__init__(name, 53, num_envs, device, differentiable, cfg)
        self._start_joints = self.sim.default_q()[7:].clone()  # identity ball quaternions, zero hinges
        # MASS body frames are y-up and face +z: up and forward in the pelvis frame
        self._ez = torch.tensor([0.0, 1.0, 0.0], device=self.device)
        self._ex = torch.tensor([0.0, 0.0, 1.0], device=self.device)

    def _load_model(self, cfg: MuscleHumanoidConfig) -> MassModel:
        from pwm_bench.envs.muscle_template import template_model

        return template_model()

    @property
    def model(self) -> MassModel:
        """The skeleton and muscles (waypoints in joint frames); action ``i`` drives ``model.muscles[i]``."""
        return self._mass

    def robot(self) -> Robot:  # type: ignore[override]
        return robots.mass_skeleton(self._mass, name=self.name)

    def muscle_set(self) -> tuple[Any, float, float]:
        from pwm_bench.envs.muscles import HillParams, MuscleSet

        m = self._mass
        cfg: MuscleHumanoidConfig = self.cfg  # type: ignore[assignment]
        muscles = MuscleSet.from_lists(
            m.muscle_links(), [u.points for u in m.muscles], [cfg.strength_scale * u.f0 for u in m.muscles]
        )
        if cfg.muscle_model == "hill":
            muscles.hill = HillParams(
                rest_length=m.rest_lengths(),
                fibre_optimal=np.array([u.lm for u in m.muscles]),
                tendon_slack=np.array([u.lt for u in m.muscles]),
            )
        return muscles, 0.5, 0.5

    def _observe(self, q: torch.Tensor, qd: torch.Tensor, last_action: torch.Tensor) -> torch.Tensor:
        return super()._observe(q, qd, last_action)[:, :53]

    def _reward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return obs[:, 5] + 0.1 * obs[:, 51] + obs[:, 52] - 0.001 * (0.5 * action + 0.5).sum(-1)

    def _fallen(self, obs: torch.Tensor) -> torch.Tensor:
        return obs[:, 0] < 0.46


class SNUHumanoidEnv(MuscleHumanoidEnv):
    """DiffRL's SNU humanoid: the MASS lower body (11 bodies) driven by its 152 muscles.

    Built from the MASS files in ``cfg.mass_dir`` or ``$PWM_BENCH_MASS_DIR`` (see :func:`mass_files`);
    observation, actions, reward, termination and start states as in :class:`MuscleHumanoidEnv`.
    """

    def __init__(
        self, num_envs: int, device: Any = "cpu", differentiable: bool = False, cfg: SNUHumanoidConfig | None = None
    ) -> None:
        super().__init__(num_envs, device, differentiable, cfg or SNUHumanoidConfig(), name="snu_humanoid")

    def _load_model(self, cfg: MuscleHumanoidConfig) -> MassModel:
        from pwm_bench.envs.mass import load_mass

        return load_mass(*mass_files(getattr(cfg, "mass_dir", "")))
