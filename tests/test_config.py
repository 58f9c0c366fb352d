"""Config presets and type-checked overrides."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from pwm_bench.baselines.ppo import PPOConfig
from pwm_bench.config import (
    TrainConfig,
    apply_overrides,
    coerce,
    field_docs,
    from_dict,
    parse_set_options,
    to_dict,
)
from pwm_bench.errors import UsageError


@dataclasses.dataclass
class Inner:
    width: int = 64
    act: Literal["tanh", "elu"] = "tanh"


@dataclasses.dataclass
class Outer(TrainConfig):
    lr: float = 1e-3
    """Learning rate."""
    hidden: tuple[int, ...] = (64, 64)
    clip: float | None = None
    flag: bool = False
    net: Inner = dataclasses.field(default_factory=Inner)


@pytest.mark.parametrize(
    ("value", "tp", "expected"),
    [
        ("1e-3", float, 1e-3),
        ("3", float, 3.0),
        ("1e6", int, 1_000_000),
        ("1_000", int, 1000),
        ("true", bool, True),
        ("no", bool, False),
        ("[128, 64]", tuple[int, ...], (128, 64)),
        ("32,32", tuple[int, ...], (32, 32)),
        ([8, 8], tuple[int, ...], (8, 8)),
        ("none", float | None, None),
        ("0.5", float | None, 0.5),
        ("elu", Literal["tanh", "elu"], "elu"),
    ],
)
def test_coerce_accepts(value: object, tp: object, expected: object) -> None:
    assert coerce(value, tp) == expected


@pytest.mark.parametrize(
    ("value", "tp"),
    [("abc", float), ("2.5", int), ("maybe", bool), ("relu", Literal["tanh", "elu"]), ("[1, x]", tuple[int, ...])],
)
def test_coerce_rejects(value: object, tp: object) -> None:
    with pytest.raises(ValueError):
        coerce(value, tp)


def test_nested_overrides_are_typed() -> None:
    cfg = apply_overrides(Outer(), {"lr": "5e-4", "net.width": "128", "hidden": "[32,32,32]", "clip": "0.2"})
    assert cfg.lr == 5e-4 and cfg.net.width == 128 and cfg.hidden == (32, 32, 32) and cfg.clip == 0.2
    assert Outer().net.width == 64  # the original is untouched


def test_unknown_key_suggests_closest() -> None:
    with pytest.raises(UsageError, match=r"unknown config key 'net.widht'; did you mean 'net.width'\?"):
        apply_overrides(Outer(), {"net.widht": "3"})
    with pytest.raises(UsageError, match=r"did you mean 'lr'\?.*valid: .*total_steps"):
        apply_overrides(Outer(), {"lrr": "3"})


def test_bad_value_names_the_type() -> None:
    with pytest.raises(UsageError, match=r"'net.act': expected one of 'tanh', 'elu', got 'relu'"):
        apply_overrides(Outer(), {"net.act": "relu"})
    with pytest.raises(UsageError, match="expected float"):
        apply_overrides(Outer(), {"lr": "fast"})


def test_set_option_parsing() -> None:
    assert parse_set_options(["a=1", "b.c = x=y"]) == {"a": "1", "b.c": "x=y"}
    with pytest.raises(UsageError, match="key=value"):
        parse_set_options(["novalue"])


def test_dict_round_trip() -> None:
    cfg = apply_overrides(Outer(), {"hidden": "[7]", "net.act": "elu", "flag": "true"})
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_presets_differ_and_validate() -> None:
    smoke = PPOConfig.from_preset("smoke", "pointmass")
    cpu = PPOConfig.from_preset("cpu", "gym:Pendulum-v1")
    paper = PPOConfig.from_preset("paper", "ant")
    assert smoke.total_steps < cpu.total_steps < paper.total_steps
    # rl_games PPO on Ant: 2048 actors x 32 steps x 5000 epochs, minibatch 16384, MLP [128, 64, 32]
    assert (paper.num_envs, paper.rollout_steps, paper.minibatch_size) == (2048, 32, 16384)
    assert paper.total_steps == 2048 * 32 * 5000 and paper.hidden == (128, 64, 32)
    for cfg in (smoke, cpu, paper):
        cfg.validate()
    with pytest.raises(UsageError, match="unknown preset 'fast'"):
        PPOConfig.from_preset("fast", "pointmass")


def test_validate_rejects_inconsistent_batch() -> None:
    cfg = apply_overrides(PPOConfig(), {"num_envs": "2", "rollout_steps": "8", "minibatch_size": "64"})
    with pytest.raises(UsageError, match="minibatch_size 64 exceeds"):
        cfg.validate()


def test_field_docs_read_from_source() -> None:
    docs = field_docs(PPOConfig)
    assert docs["gae_lambda"] == "GAE λ."
    assert "budget" in docs["total_steps"]
