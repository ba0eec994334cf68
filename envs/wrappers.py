"""Wrappers for ``envs.world_env.WorldEnv``: behaviour on top of the environment, kept out of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

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
        super().__init__(env)
        if not isinstance(env.unwrapped, WorldEnv):
            raise TypeError(f"RecordReplay records a WorldEnv, not a {type(env.unwrapped).__name__}")
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
