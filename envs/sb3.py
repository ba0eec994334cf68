"""The batched world as a stable-baselines3 ``VecEnv`` (``pip install -e ".[agents]"``).

stable-baselines3 steps its own ``VecEnv`` type, which resets a finished environment within the
same step and hands the last observation over in ``info["terminal_observation"]``. This adapter
takes a Gymnasium vector env made with same-step autoreset and speaks that protocol:

    from stable_baselines3 import PPO
    vector = gymnasium.make_vec("envs:worldsim/World-v0", num_envs=16,
                                vectorization_mode="vector_entry_point", autoreset_mode="SameStep",
                                reward="travel_east", max_episode_steps=64)
    PPO("CnnPolicy", SB3VecEnv(vector)).learn(10_000)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv

__all__ = ["SB3VecEnv"]


class SB3VecEnv(VecEnv):
    """A Gymnasium ``VectorEnv`` with same-step autoreset, seen as a stable-baselines3 ``VecEnv``."""

    def __init__(self, env: gymnasium.vector.VectorEnv) -> None:
        if env.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
            raise ValueError(
                "stable-baselines3 resets within the step: make the vector env with autoreset_mode='SameStep'"
            )
        self.env = env
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self._actions: np.ndarray | None = None
        self._seed: int | None = None

    def reset(self) -> np.ndarray:
        """Reset every environment (with the seed given to ``seed()``, if any)."""
        obs, _ = self.env.reset(seed=self._seed)
        self._seed = None
        self.reset_infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Remember the actions; ``step_wait`` steps."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Step every environment; a finished one is already reset, its last observation in its info."""
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async()")
        obs, rewards, terminated, truncated, info = self.env.step(self._actions)
        self._actions = None
        dones = np.logical_or(terminated, truncated)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = info["final_obs"][i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, rewards.astype(np.float32), dones, infos

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seed the next reset: environment i gets seed + i."""
        self._seed = seed
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    def close(self) -> None:
        """Close the vector env."""
        self.env.close()

    # The environments are rows of one vector env: attributes and methods are the vector env's,
    # shared by every row, so they are read or called once and the answer repeated per row.

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        """The vector env's attribute, once per environment asked for."""
        return [getattr(self.env.unwrapped, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        """Set an attribute of the vector env; it is shared, so only all environments at once."""
        if len(self._indices(indices)) != self.num_envs:
            raise ValueError(f"{attr_name!r} belongs to the whole vector env: set it for every environment")
        setattr(self.env.unwrapped, attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        """Call a method of the vector env once; its answer is repeated per environment asked for."""
        result = getattr(self.env.unwrapped, method_name)(*args, **kwargs)
        return [result] * len(self._indices(indices))

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Every environment's last frame (the vector env made with render_mode='rgb_array')."""
        frames = self.env.render()
        if frames is None:
            return [None] * self.num_envs
        return [frame if isinstance(frame, np.ndarray) else None for frame in frames]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        """The environments are rows of one vector env: none is wrapped on its own."""
        return [False] * len(self._indices(indices))

    def _indices(self, indices: Any) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        return [int(indices)] if isinstance(indices, (int, np.integer)) else [int(i) for i in indices]
