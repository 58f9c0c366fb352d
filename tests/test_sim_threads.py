"""The Warp sim's speed paths: the body-block inertia matrix and worlds split across CPU threads.

Both must leave the physics as it was: the joint-space inertia equals ``J^T M J`` computed here
independently, and a sim whose worlds run on two threads gives the same numbers, bit for bit, as
one thread, forward and backward.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pwm_bench.envs import make_env
from pwm_bench.errors import UsageError

from .test_reliability import inproc


def _rollout(env, steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """States of ``steps`` random steps ``(steps, N, nq + nqd)``, then the gradient of a window of
    3 steps with respect to its actions ``(3, N, A)``."""
    env.reset(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    states = []
    with torch.no_grad():
        for _ in range(steps):
            env.step(torch.rand(env.num_envs, env.act_dim, generator=gen) * 2 - 1)
            states.append(torch.cat([env.q, env.qd], dim=1).clone())
    env.detach()
    acts = (torch.rand(3, env.num_envs, env.act_dim, generator=gen) * 2 - 1).requires_grad_(True)
    total = torch.zeros(())
    for t in range(3):
        obs, reward, *_ = env.step(acts[t])
        total = total + reward.sum() + obs.square().sum()
    total.backward()
    return torch.stack(states), acts.grad


def test_inertia_matrix_and_factor_are_the_dense_products() -> None:
    """H = J^T M J from the solver's own J and M (float64 here), and L L^T = H + diag(armature)."""
    env = make_env("humanoid", 3, "cpu")
    env.reset(seed=0)
    with torch.no_grad():
        env.step(torch.rand(3, env.act_dim, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    solver = env.sim._blocks[0].solver
    ((size, J),) = solver._J_by_size.items()
    J = J.numpy().astype(np.float64)
    M = solver._M_by_size[size].numpy().astype(np.float64)
    H = solver._H_by_size[size].numpy().astype(np.float64)
    L = solver._L_by_size[size].numpy().astype(np.float64)
    dofs = J.shape[2]
    armature = solver.joint_armature_effective.numpy().reshape(3, dofs).astype(np.float64)
    expected = np.einsum("wri,wrs,wsj->wij", J, M, J)
    assert np.abs(expected).max() > 1.0  # not a trivially empty matrix
    np.testing.assert_allclose(H, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    LLt = np.einsum("wik,wjk->wij", np.tril(L), np.tril(L))
    np.testing.assert_allclose(LLt, expected + np.stack([np.diag(a) for a in armature]), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", ["hopper", "muscle_humanoid"])
def test_graphs_and_threads_match_plain_stepping_bit_for_bit(name: str) -> None:
    """Launch by launch on one thread (the reference) against a replayed CPU graph on one thread and
    on two (where substep 0, with its tile kernel, stays out of the graph)."""
    plain = make_env(name, 16, "cpu", differentiable=True, sim_threads=1, graph_capture=False)
    one = make_env(name, 16, "cpu", differentiable=True, sim_threads=1)
    two = make_env(name, 16, "cpu", differentiable=True, sim_threads=2)
    assert (one.sim.threads, two.sim.threads) == (1, 2)
    # the first calls run plain and the blocks one after another; then graphs are captured and
    # replayed, and the blocks step side by side
    for _ in range(3):
        s0, g0 = _rollout(plain, 4)
        for env in (one, two):
            s, g = _rollout(env, 4)
            assert torch.equal(s, s0)
            assert torch.equal(g, g0) and g.abs().sum() > 0
    assert all(b._graph is not None for b in one.sim._blocks + two.sim._blocks)
    assert plain.sim._blocks[0]._graph is None
    for env in (plain, one, two):
        env.close()
    assert two.sim._pool is None


def test_sim_threads_default_and_validation() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert make_env("muscle_humanoid", 64, "cpu").sim.threads == 2  # humanoid-class: torch's threads
        assert make_env("muscle_humanoid", 63, "cpu").sim.threads == 1  # under 32 worlds per thread
        assert make_env("hopper", 256, "cpu").sim.threads == 1  # launch-bound: one thread
        assert make_env("hopper", 16, "cpu", sim_threads=2).sim.threads == 2  # asked for: as given
        assert make_env("hopper", 1, "cpu", sim_threads=2).sim.threads == 1  # at most one block per world
    finally:
        torch.set_num_threads(before)
    with pytest.raises(UsageError, match="sim_threads"):
        make_env("hopper", 2, "cpu", sim_threads=-1)


def test_bench_env_reports_its_threads() -> None:
    args = ("bench-env", "--env", "hopper", "--num-envs", "2", "--steps", "2", "--threads", "1")
    code, stdout, err = inproc(*args)
    assert code == 0, err
    assert "hopper x2 on cpu (1 torch threads, worlds on 1): forward" in stdout
    code, _, err = inproc(*args[:-1], "0")
    assert code == 2 and "--threads" in err
