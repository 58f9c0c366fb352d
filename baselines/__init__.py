"""Baseline algorithms: PPO (and, as they land, SHAC, SAC and TD-MPC2).

Each baseline is one module exposing ``ALGORITHM``; the registry in :mod:`pwm_bench.algos` loads
them lazily by name.
"""
