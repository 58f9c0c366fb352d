import dataclasses

import torch

from pwm_bench.algos import Algorithm
from pwm_bench.config import TrainConfig


@dataclasses.dataclass
class RandomConfig(TrainConfig):
    """Uniform-random actions (a floor for the other algorithms)."""

    total_steps: int = 20_000
    """Environment-step budget (all worlds together)."""
    steps_per_iteration: int = 32
    """Control steps per world between two reports to the run."""

    def preset_overrides(self, preset: str, env: str) -> dict:
        return {"total_steps": 2_048, "eval_every": 1_024, "eval_episodes": 2} if preset == "smoke" else {}


class RandomPolicy:
    def __init__(self, act_dim: int) -> None:
        self.act_dim = act_dim

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.rand(obs.shape[0], self.act_dim, device=obs.device) * 2 - 1


def train(env, cfg: RandomConfig, run) -> RandomPolicy:
    policy = RandomPolicy(env.act_dim)
    run.restore()  # on --resume: restores the RNG state (a learner also loads its networks here)
    obs, _ = env.reset(seed=run.env_seed)
    while not run.done:
        for _ in range(cfg.steps_per_iteration):
            obs, _reward, _terminated, _truncated, info = env.step(policy.act(obs, deterministic=False))
            run.add_env_steps(env.num_envs)
            run.record_episodes(info)
        run.log({"loss/actor": 0.0})
        run.end_iteration(policy, state_fn=dict)  # state_fn returns what a checkpoint must hold
    return policy


ALGORITHM = Algorithm(name="random", config=RandomConfig, train=train, description="uniform random actions")
