"""The Gymnasium environment over a world model, on the tiny random model, and its reward functions."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs.procedural.rewards import REWARDS
from envs.procedural.world import ProceduralWorld
from envs.world_env import WorldEnv
from envs.wrappers import RecordReplay
from tests.conftest import HEIGHT, WIDTH
from worldsim.bundle import load
from worldsim.replay import read_replay, replay_blocks

ROOT = Path(__file__).resolve().parent.parent


def digest(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


@pytest.fixture
def env(tiny_bundle: str):
    env = WorldEnv(model=tiny_bundle)
    yield env
    env.close()


def test_passes_the_gymnasium_env_checker(tiny_bundle: str) -> None:
    env = WorldEnv(model=tiny_bundle)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)
    assert not caught, [str(w.message) for w in caught]

    rendering = WorldEnv(model=tiny_bundle, render_mode="rgb_array")
    obs, _ = rendering.reset(seed=0)
    frame = rendering.render()
    assert frame.shape == (HEIGHT, WIDTH, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, obs)
    assert rendering.metadata["render_fps"] == 16
    env.close()
    rendering.close()


def test_text_mode_passes_the_gymnasium_env_checker(tiny_bundle: str) -> None:
    env = WorldEnv(model=tiny_bundle, text_actions=True)
    check_env(env, skip_render_check=True)
    env.close()


def test_make_needs_no_prior_import(tiny_bundle: str) -> None:
    code = (
        "import sys, gymnasium\n"
        "assert 'envs' not in sys.modules\n"
        "env = gymnasium.make('envs:worldsim/World-v0', model=sys.argv[1], max_episode_steps=2)\n"
        "obs, info = env.reset(seed=0)\n"
        "obs, reward, terminated, truncated, info = env.step(0)\n"
        "obs, reward, terminated, truncated, info = env.step(1)\n"
        "assert truncated and not terminated\n"
        "print(obs.shape, obs.dtype, env.unwrapped.world.name)\n"
        "env.close()\n"
        "import envs\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, tiny_bundle],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"({HEIGHT}, {WIDTH}, 3) uint8 test-tiny" in result.stdout


def test_importing_envs_registers_without_loading_torch() -> None:
    code = (
        "import sys, envs, gymnasium\n"
        "assert 'torch' not in sys.modules\n"
        "print(gymnasium.spec('worldsim/World-v0').entry_point)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "envs.world_env:WorldEnv"


def test_worlds_are_loaded_once_and_shared(tiny_bundle: str) -> None:
    a, b = WorldEnv(model=tiny_bundle), WorldEnv(model=str(Path(tiny_bundle) / "."))
    assert a.world is b.world
    shared = WorldEnv(world=a.world, scenario=str(ROOT / "envs" / "procedural" / "scenario.toml"))
    assert shared.world is a.world


def test_seeded_resets_repeat_exactly(env: WorldEnv) -> None:
    actions = [env.scenario.index("east"), env.scenario.index("night"), env.scenario.index("desert")]

    def episode(seed: int) -> list[str]:
        obs, info = env.reset(seed=seed)
        hashes = [digest(obs), digest(info["frames"])]
        for action in actions:
            obs, _, _, _, info = env.step(action)
            hashes += [digest(obs), digest(info["frames"])]
        return hashes

    first = episode(5)
    assert episode(5) == first
    other = episode(6)
    assert other[0] != first[0]
    assert all(a != b for a, b in zip(first, other, strict=True))


def test_spaces_and_info(env: WorldEnv) -> None:
    assert isinstance(env.action_space, gymnasium.spaces.Discrete)
    assert env.action_space.n == len(env.scenario.actions) == 12
    assert env.observation_space.shape == (HEIGHT, WIDTH, 3)
    assert env.observation_space.dtype == np.uint8

    obs, info = env.reset(seed=0)
    assert obs in env.observation_space
    keys = {"frames", "prompt", "block", "cache_frames", "flushed", "cut", "action"}
    assert set(info) == keys  # and "previous_frames" from the second block on
    assert info["frames"].dtype == np.uint8 and info["frames"].shape[1:] == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(info["frames"][-1], obs)
    assert info["prompt"] == "a green meadow, bright daylight, standing still"
    assert info["block"] == 0 and info["action"] == "noop"
    assert not info["flushed"] and not info["cut"]
    frames = info["frames"]
    _, _, _, _, info = env.step("east")  # motion is read from the block before's last frames on
    np.testing.assert_array_equal(info["previous_frames"], frames[-4:])
    _, _, _, _, info = env.step("desert")
    assert info["cut"] and "previous_frames" not in info  # not across a cut


def test_actions_change_the_prompt(env: WorldEnv) -> None:
    _, start = env.reset(seed=0)
    east = env.scenario.index("east")

    _, reward, terminated, truncated, info = env.step(east)
    assert info["flushed"] and not info["cut"]
    assert info["prompt"] == "a green meadow, bright daylight, walking east" != start["prompt"]
    assert (info["block"], info["action"], reward, terminated, truncated) == (1, "east", 0.0, False, False)

    _, _, _, _, info = env.step(east)
    assert not info["flushed"] and info["prompt"] == "a green meadow, bright daylight, walking east"

    _, _, _, _, info = env.step(np.int64(env.scenario.index("desert")))
    assert info["cut"] and info["flushed"]
    assert info["prompt"] == "a sandy desert, bright daylight, walking east"
    assert env.prompts.slots["scene"] == "a sandy desert"

    _, _, _, _, info = env.step(0)
    assert not info["flushed"] and not info["cut"] and info["action"] == "noop"
    assert info["prompt"] == "a sandy desert, bright daylight, walking east"

    _, _, _, _, info = env.step("night")  # by name
    assert info["prompt"] == "a sandy desert, at night, walking east" and info["flushed"]
    assert info["block"] == 5


def test_make_truncates_with_a_time_limit_and_the_world_never_terminates(tiny_bundle: str) -> None:
    env = gymnasium.make("envs:worldsim/World-v0", model=tiny_bundle, max_episode_steps=3)
    env.reset(seed=0)
    ends = [env.step(0)[2:4] for _ in range(3)]
    assert ends == [(False, False), (False, False), (False, True)]
    env.reset(seed=0)
    assert env.step(0)[2:4] == (False, False)
    assert gymnasium.make("envs:worldsim/World-v0", model=tiny_bundle).spec.max_episode_steps == 1000

    endless = WorldEnv(model=tiny_bundle)
    endless.reset(seed=0)
    assert all(endless.step(0)[2:4] == (False, False) for _ in range(4))


def test_text_actions(tiny_bundle: str) -> None:
    env = WorldEnv(model=tiny_bundle, text_actions=True)
    assert isinstance(env.action_space, gymnasium.spaces.Text)
    assert env.scenario.start_prompt in env.action_space
    env.reset(seed=0)

    _, _, _, _, info = env.step("a snowy tundra, at night, walking north")
    assert info["prompt"] == "a snowy tundra, at night, walking north"
    assert info["flushed"] and not info["cut"] and info["action"] == "a snowy tundra, at night, walking north"

    _, _, _, _, info = env.step("#a sandy desert, in thick fog, standing still")
    assert info["cut"] and info["prompt"] == "a sandy desert, in thick fog, standing still"

    _, _, _, _, info = env.step("#")
    assert info["cut"] and info["prompt"] == "a sandy desert, in thick fog, standing still"

    for bad in ("", "x" * 257, "caf\u00e9", 3):
        with pytest.raises(ValueError, match="invalid text action"):
            env.step(bad)


def test_runs_in_a_vector_env(tiny_bundle: str) -> None:
    envs = gymnasium.vector.SyncVectorEnv([lambda: WorldEnv(model=tiny_bundle) for _ in range(2)])
    obs, info = envs.reset(seed=[1, 2])
    assert obs.shape == (2, HEIGHT, WIDTH, 3) and obs.dtype == np.uint8
    assert not np.array_equal(obs[0], obs[1])
    for actions in ([4, 5], [0, 9]):
        obs, rewards, terminated, truncated, info = envs.step(np.array(actions))
        assert obs.shape == (2, HEIGHT, WIDTH, 3)
        assert rewards.shape == (2,) and not terminated.any() and not truncated.any()
    assert list(info["action"]) == ["noop", "meadow"]
    envs.close()


def test_recorded_episodes_replay_bit_identically(tiny_bundle: str, tmp_path: Path) -> None:
    env = RecordReplay(WorldEnv(model=tiny_bundle), tmp_path / "episode-{episode}.jsonl")
    _, info = env.reset(seed=11)
    hashes = [digest(info["frames"])]
    for name in ("east", "desert", "night", "noop"):
        _, _, _, _, info = env.step(env.unwrapped.scenario.index(name))
        hashes.append(digest(info["frames"]))
    env.reset(seed=12)
    env.close()
    env.close()

    replay = read_replay(tmp_path / "episode-0.jsonl")
    assert replay.header["scenario"] == str(Path(tiny_bundle).resolve() / "scenario.toml")
    assert not replay.truncated
    assert [e.action for e in replay.events] == ["noop", "east", "desert", "night", "noop"]
    assert [e.cut for e in replay.events] == [False, False, True, False, False]
    fresh = load(tiny_bundle)
    assert [digest(block.frames) for block in replay_blocks(replay, fresh)] == hashes
    assert len(read_replay(tmp_path / "episode-1.jsonl").events) == 1


def test_record_without_episode_overwrites(tiny_bundle: str, tmp_path: Path) -> None:
    path = tmp_path / "play.jsonl"
    env = RecordReplay(WorldEnv(model=tiny_bundle), path)
    env.reset(seed=0)
    env.step(0)
    env.reset(seed=1)
    lines = path.read_text().splitlines()
    env.close()
    assert len(lines) == 2 and read_replay(path).seed == env.unwrapped.session.seed
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RecordReplay(WorldEnv(model=tiny_bundle), tmp_path / "missing" / "play.jsonl")
    with pytest.raises(TypeError, match="records a WorldEnv"):
        RecordReplay(gymnasium.make("CartPole-v1"), path)


def test_travel_rewards_on_ground_truth() -> None:
    east = ProceduralWorld(seed=3).rollout(["east"] * 12)
    assert REWARDS["travel_east"](east, {}) == pytest.approx(1.0, abs=0.1)
    assert REWARDS["travel_west"](east, {}) == pytest.approx(-1.0, abs=0.1)
    assert REWARDS["travel_north"](east, {}) == pytest.approx(0.0, abs=0.1)
    north = ProceduralWorld(seed=4, biome="tundra").rollout(["north"] * 12)
    assert REWARDS["travel_north"](north, {}) == pytest.approx(1.0, abs=0.1)
    assert REWARDS["travel_south"](north, {}) == pytest.approx(-1.0, abs=0.1)
    idle = ProceduralWorld(seed=5).rollout(["idle"] * 12)
    assert REWARDS["travel_east"](idle, {}) == 0.0
    assert REWARDS["travel_east"](east[:1], {}) == 0.0


def test_reach_rewards_on_ground_truth() -> None:
    desert = ProceduralWorld(seed=3, biome="desert").rollout(["east"] * 12)
    assert REWARDS["reach_desert"](desert, {}) == 1.0
    assert REWARDS["reach_meadow"](desert, {}) == 0.0
    assert REWARDS["reach_tundra"](desert, {}) == 0.0


def test_env_rewards(tiny_bundle: str) -> None:
    env = WorldEnv(model=tiny_bundle, reward="travel_east")
    env.reset(seed=0)
    _, reward, _, _, info = env.step(env.scenario.index("east"))
    assert isinstance(reward, float) and np.isfinite(reward)
    assert reward == REWARDS["travel_east"](info["frames"], info)

    seen = []
    custom = WorldEnv(model=tiny_bundle, reward=lambda frames, info: seen.append(info["block"]) or 2.5)
    custom.reset(seed=0)
    assert custom.step(0)[1] == 2.5 and seen == [1]

    with pytest.raises(ValueError, match="travel_east"):
        WorldEnv(model=tiny_bundle, reward="travel_up")


def test_invalid_actions(env: WorldEnv) -> None:
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(0)
    env.reset(seed=0)
    for bad in (12, -1, "jump", 1.5, True, None):
        with pytest.raises(ValueError, match=r"known: 0=noop, .*, 11=tundra"):
            env.step(bad)
    assert env.step(11)[4]["block"] == 1  # a refused action generates nothing


def test_bad_arguments(tiny_bundle: str) -> None:
    with pytest.raises(ValueError, match="render_mode"):
        WorldEnv(model=tiny_bundle, render_mode="ansi")
    with pytest.raises(ValueError, match="dtype"):
        WorldEnv(model=tiny_bundle, dtype="float33")
    bare = load(tiny_bundle)
    bare.scenario = None
    with pytest.raises(ValueError, match="no scenario"):
        WorldEnv(world=bare)


def test_human_render(tiny_bundle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pygame = pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    env = WorldEnv(model=tiny_bundle, render_mode="human")
    env.reset(seed=0)
    window = pygame.display.get_surface()
    assert window is not None and window.get_size() == (WIDTH * 16, HEIGHT * 16)
    assert env.render() is None
    env.step(0)
    env.close()
    assert not pygame.display.get_init()
    env.close()
