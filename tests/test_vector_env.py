"""The native vector environment of worldsim/World-v0 and the ground-truth twin worldsim/Procedural-v0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

import envs  # noqa: F401  (registers the environments)
from envs.procedural_env import ProceduralEnv
from envs.vector_env import WorldVectorEnv
from envs.wrappers import RecordVectorReplays
from worldsim.replay import read_replay, replay_blocks

N = 3


def make_world_vector(**kwargs: Any) -> gymnasium.vector.VectorEnv:
    return gymnasium.make_vec(
        "envs:worldsim/World-v0", num_envs=N, vectorization_mode="vector_entry_point", threads=None, **kwargs
    )


def check_vector_env(env: VectorEnv, seed: int = 0) -> None:
    """What ``check_env`` checks of a single env, for a vector env: spaces, reset, step, seeding, info."""
    n = env.num_envs
    assert env.observation_space == batch_space(env.single_observation_space, n)
    assert env.action_space == batch_space(env.single_action_space, n)
    assert env.metadata.get("autoreset_mode") in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(env.action_space.sample())

    obs, info = env.reset(seed=seed)
    assert env.observation_space.contains(obs), "reset's observation is outside the observation space"
    check_vector_info(info, n)
    again, _ = env.reset(seed=seed)
    assert np.array_equal(obs, again), "the same seed must give the same first observations"

    env.action_space.seed(seed)
    for _ in range(2):
        obs, rewards, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
        assert rewards.shape == (n,) and np.issubdtype(rewards.dtype, np.floating)
        assert terminated.shape == truncated.shape == (n,)
        assert terminated.dtype == truncated.dtype == bool
        check_vector_info(info, n)


def check_vector_info(info: dict[str, Any], n: int) -> None:
    """Gymnasium's vector info: each key an array over the sub-environments (or such a dict) and a mask."""
    assert isinstance(info, dict)
    for key, value in info.items():
        if key.startswith("_"):
            continue
        mask = info[f"_{key}"]
        assert mask.shape == (n,) and mask.dtype == bool, key
        if isinstance(value, dict):
            check_vector_info(value, n)
        else:
            assert len(value) == n, key


def test_make_vec_gives_one_batched_env_that_passes_the_vector_checks() -> None:
    env = make_world_vector(reward="travel_east")
    assert isinstance(env.unwrapped, WorldVectorEnv)
    assert env.unwrapped.single_action_space == gymnasium.spaces.Discrete(12)
    check_vector_env(env)
    before = [p.prompt for p in env.unwrapped.prompts]
    for bad in ([10, 99, 0], [4.0, 4.0, 4.0]):  # nothing changes before every action is checked
        with pytest.raises(ValueError, match="sub-environment"):
            env.step(np.array(bad))
    assert [p.prompt for p in env.unwrapped.prompts] == before
    with pytest.raises(ValueError, match="vectorization_mode='sync'"):
        make_world_vector(text_actions=True)
    with pytest.raises(ValueError, match="expected 3 actions"):
        env.step(np.array([0, 0]))
    env.close()


def test_the_vector_checks_pass_a_sync_vector_env_of_the_twin() -> None:
    """The checker above holds for Gymnasium's own vector env, so it does not just fit ours."""
    env = gymnasium.make_vec("envs:worldsim/Procedural-v0", num_envs=N, vectorization_mode="sync")
    check_vector_env(env)
    env.close()


def test_each_sub_environment_is_the_single_environment_seeded_seed_plus_its_index() -> None:
    vector = make_world_vector()
    single = gymnasium.make("envs:worldsim/World-v0", threads=None)
    obs, _ = vector.reset(seed=40)
    one, _ = single.reset(seed=42)  # sub-environment 2 of seed 40
    frames = [(obs[2], one)]
    for action in ("east", "east", "night", "desert", "north"):
        index = single.unwrapped.scenario.index(action)
        obs, *_ = vector.step(np.array([0, 1, index]))
        one, *_ = single.step(index)
        frames.append((obs[2], one))
    for ours, theirs in frames:  # batched float rounding: see tests/test_batch.py
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2


def test_next_step_autoreset_starts_the_episode_over_on_the_step_after_it_ends() -> None:
    env = make_world_vector(max_episode_steps=2, reward="travel_east")
    env.reset(seed=0)
    east = np.full(N, 4)
    for step in (1, 2):
        _, rewards, terminated, truncated, info = env.step(east)
        assert list(info["episode_step"]) == [step] * N
        assert truncated.all() == (step == 2) and not terminated.any()
    _, rewards, terminated, truncated, info = env.step(east)  # the action is ignored: a reset
    assert list(info["block"]) == [0] * N and list(info["episode_step"]) == [0] * N
    assert list(info["action"]) == ["noop"] * N and not truncated.any()
    assert np.all(rewards == 0.0)
    assert list(env.unwrapped.episodes) == [1] * N


def test_same_step_autoreset_returns_the_first_observation_and_the_final_one_in_info() -> None:
    env = make_world_vector(max_episode_steps=2, autoreset_mode="SameStep")
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    env.reset(seed=0)
    env.step(np.full(N, 4))
    obs, _, _, truncated, info = env.step(np.full(N, 4))
    assert truncated.all()
    assert info["_final_obs"].all() and info["final_obs"][0].shape == obs[0].shape
    assert list(info["final_info"]["block"]) == [2] * N
    assert list(info["block"]) == [0] * N  # obs is the new episode's first block
    _, _, _, truncated, info = env.step(np.full(N, 4))
    assert not truncated.any() and list(info["block"]) == [1] * N


def test_each_sub_environment_records_its_own_replays(tmp_path: Path) -> None:
    env = RecordVectorReplays(make_world_vector(max_episode_steps=2), tmp_path / "env{env}-{episode}.jsonl")
    env.reset(seed=3)
    for _ in range(4):
        env.step(np.array([4, 10, 7]))
    env.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"env{i}-{e}.jsonl" for i in range(N) for e in range(2)]
    replay = read_replay(tmp_path / "env1-0.jsonl")
    assert [e.block for e in replay.events] == [0, 1, 2]
    assert [e.action for e in replay.events] == ["noop", "desert", "desert"]
    assert replay.header["batch"] == {"rollouts": N, "row": 1}
    world = env.unwrapped.world
    assert len(list(replay_blocks(replay, world))) == 3  # a single session regenerates it
    with pytest.raises(ValueError, match="must hold"):
        RecordVectorReplays(make_world_vector(), tmp_path / "all.jsonl")


def test_the_twin_is_a_gymnasium_env_with_the_model_env_spaces() -> None:
    twin = gymnasium.make("envs:worldsim/Procedural-v0", reward="travel_east")
    check_env(twin.unwrapped)
    model = gymnasium.make("envs:worldsim/World-v0", threads=None)
    assert twin.observation_space == model.observation_space
    assert twin.action_space == model.action_space
    assert twin.unwrapped.scenario.actions == model.unwrapped.scenario.actions


def test_the_twin_follows_actions_with_the_built_in_rewards() -> None:
    twin = ProceduralEnv(reward="travel_east")
    _, info = twin.reset(seed=1)
    assert info["state"]["biome"] == "meadow" and info["prompt"].endswith("standing still")
    start_x = info["state"]["x"]
    _, reward, *_, info = twin.step(twin.scenario.index("east"))
    assert info["state"]["x"] == start_x + 4 * 2 and 0.3 < reward < 1.0  # starting off: half the pairs move
    _, reward, *_, info = twin.step(twin.scenario.index("east"))
    assert reward == pytest.approx(1.0, abs=0.05)
    _, _, _, _, info = twin.step(twin.scenario.index("desert"))
    assert info["cut"] and info["state"]["biome"] == "desert"
    assert ProceduralEnv(reward="reach_desert").reward_fn(info["frames"], info) == 1.0
    _, _, _, _, info = twin.step(twin.scenario.index("night"))
    assert info["state"]["condition"] == "night" and info["flushed"] and not info["cut"]
    again = ProceduralEnv()
    first, _ = again.reset(seed=1)
    assert np.array_equal(first, ProceduralEnv().reset(seed=1)[0])
    with pytest.raises(ValueError, match="out of range"):
        twin.step(99)


@pytest.mark.slow
def test_stable_baselines3_ppo_learns_on_the_batched_world(tmp_path: Path) -> None:
    """A short PPO run of stable-baselines3 (the [agents] extra) on the vector env, through envs.sb3."""
    sb3 = pytest.importorskip("stable_baselines3", reason="stable-baselines3 is the [agents] extra")
    from envs.sb3 import SB3VecEnv

    vector = make_world_vector(max_episode_steps=4, autoreset_mode="SameStep", reward="travel_east")
    env = SB3VecEnv(vector)
    model = sb3.PPO("CnnPolicy", env, n_steps=8, batch_size=12, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=48)
    assert model.num_timesteps >= 48
    obs = env.reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (N,) and all(0 <= a < 12 for a in actions)
    model.save(tmp_path / "ppo")
    with pytest.raises(ValueError, match="SameStep"):
        SB3VecEnv(make_world_vector())
