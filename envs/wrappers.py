"""Wrappers for ``envs.world_env.WorldEnv`` and its vector environment: behaviour kept out of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from envs.vector_env import WorldVectorEnv
from envs.world_env import WorldEnv
from worldsim.replay import ReplayEvent, ReplayWriter, frames_digest


class RecordReplay(gymnasium.Wrapper):
    """Write a replay (``worldsim.replay``) of every episode, one line per block as it is played.

    ``path`` may hold ``"{episode}"``, replaced by the episode number (0 for the first reset);
    without it each reset starts the file again. Every line is flushed as its block is generated,
    so a crash loses nothing already played. ``worldsim replay FILE`` regenerates the frames.

        env = RecordReplay(gymnasium.make("envs:worldsim/World-v0"), "runs/episode-{episode}.jsonl")
    """

    def __init__(self, env: gymnasium.Env, path: str | Path) -> None:
        if not isinstance(env.unwrapped, WorldEnv):
            raise TypeError(f"RecordReplay records a WorldEnv, not a {type(env.unwrapped).__name__}")
        super().__init__(env)
        self.path = str(path)
        folder = Path(self.path).parent
        if not folder.is_dir():  # fail now, not at the first reset
            raise FileNotFoundError(f"cannot record to {self.path}: folder {folder} does not exist")
        self.episode = -1
        self.writer: ReplayWriter | None = None

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset the environment and start a new replay file with its first block."""
        obs, info = self.env.reset(**kwargs)
        self.episode += 1
        self._close_writer()
        world_env = self.env.unwrapped
        assert isinstance(world_env, WorldEnv) and world_env.session is not None
        scenario = str(Path(world_env.scenario.source).resolve())  # replayable from any folder
        self.writer = ReplayWriter(
            self.path.replace("{episode}", str(self.episode)), world_env.world, world_env.session, scenario
        )
        self._write(info)
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Step the environment and record the block."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._write(info)
        return obs, float(reward), terminated, truncated, info

    def close(self) -> None:
        """Close the replay file (everything in it is already on disk) and the environment."""
        self._close_writer()
        super().close()

    def _write(self, info: dict[str, Any]) -> None:
        if self.writer is not None:
            event = ReplayEvent(
                info["block"], info["action"], info["prompt"], info["cut"], frames_digest(info["frames"])
            )
            self.writer.write_event(event)

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class RecordVectorReplays(gymnasium.vector.VectorWrapper):
    """Write a replay of every episode of every sub-environment of a ``WorldVectorEnv``.

    ``path`` holds ``"{env}"`` (the sub-environment) and may hold ``"{episode}"`` (its episode
    number, from 0); without it each episode writes over the sub-environment's last file. Each
    line is flushed as its block is generated. The rollouts ran in a batch, whose float rounding
    differs from one session's, so the files carry no frame hashes (their header says so);
    ``worldsim replay FILE`` regenerates each episode with a single session.

        vec = RecordVectorReplays(gymnasium.make_vec("envs:worldsim/World-v0", num_envs=8,
                                  vectorization_mode="vector_entry_point"), "runs/env{env}-{episode}.jsonl")
    """

    def __init__(self, env: gymnasium.vector.VectorEnv, path: str | Path) -> None:
        if not isinstance(env.unwrapped, WorldVectorEnv):
            raise TypeError(
                f"RecordVectorReplays records a WorldVectorEnv, not a {type(env.unwrapped).__name__}"
            )
        super().__init__(env)
        self.path = str(path)
        if "{env}" not in self.path:
            raise ValueError(
                f"the replay path {self.path!r} must hold '{{env}}', one file per sub-environment"
            )
        folder = Path(self.path).parent
        if not folder.is_dir():
            raise FileNotFoundError(f"cannot record to {self.path}: folder {folder} does not exist")
        self.writers: list[ReplayWriter | None] = [None] * env.num_envs

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset and start a replay file for each sub-environment that was reset."""
        obs, info = self.env.reset(**kwargs)
        self._record(info, np.asarray(info["episode_step"]) == 0)
        return obs, info

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step and record every sub-environment's block; a sub-environment that reset starts a new file."""
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        self._record(info, np.asarray(info["episode_step"]) == 0)
        return obs, rewards, terminated, truncated, info

    def close(self, **kwargs: Any) -> None:
        """Close every replay file (all of it is already on disk) and the environment."""
        for i in range(len(self.writers)):
            self._close(i)
        super().close(**kwargs)

    def _record(self, info: dict[str, Any], started: np.ndarray) -> None:
        world_env = self.env.unwrapped
        assert isinstance(world_env, WorldVectorEnv) and world_env.batch is not None
        scenario = str(Path(world_env.scenario.source).resolve())
        final = info.get("final_info", {})
        for i in range(world_env.num_envs):
            ending = self.writers[i]
            if final and info["_final_info"][i] and ending is not None:
                # same-step autoreset: the ended episode's last block comes in final_info
                self._write(i, final, ending)
            if started[i]:
                self._close(i)
                path = self.path.replace("{env}", str(i)).replace("{episode}", str(world_env.episodes[i]))
                rollout = world_env.batch.rollouts[i]
                self.writers[i] = ReplayWriter(
                    path, world_env.world, rollout, scenario, batch=(world_env.num_envs, i)
                )
            writer = self.writers[i]
            if writer is not None and info["_block"][i]:
                self._write(i, info, writer)

    @staticmethod
    def _write(i: int, info: dict[str, Any], writer: ReplayWriter) -> None:
        event = ReplayEvent(
            int(info["block"][i]), str(info["action"][i]), str(info["prompt"][i]), bool(info["cut"][i]), None
        )
        writer.write_event(event)

    def _close(self, i: int) -> None:
        writer = self.writers[i]
        if writer is not None:
            writer.close()
            self.writers[i] = None
