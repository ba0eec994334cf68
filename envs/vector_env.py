"""N worlds in one batched rollout: the native vector environment of ``worldsim/World-v0``.

    envs = gymnasium.make_vec("envs:worldsim/World-v0", num_envs=32, vectorization_mode="vector_entry_point",
                              reward="travel_east", max_episode_steps=200)
    obs, info = envs.reset(seed=0)                     # obs (32, H, W, 3) uint8
    obs, rewards, terminated, truncated, info = envs.step(envs.action_space.sample())

Every step generates one block for every sub-environment with one model call per denoising step
(``worldsim.batch.BatchSession``), instead of N calls. Each sub-environment is the single
``WorldEnv``: the same spaces, scenario, actions, rewards and info keys, and ``reset(seed=s)``
seeds sub-environment i as ``WorldEnv.reset(seed=s + i)`` would, so its rollout is the one a
single environment makes (up to the float rounding of batched kernels).

Episodes end by ``max_episode_steps`` (truncation; the world never terminates). Autoreset is
Gymnasium's default next-step mode: the step after an episode ends resets that sub-environment,
ignores its action and returns its first observation with reward 0; ``autoreset_mode="SameStep"``
resets it within the step instead (``final_obs`` and ``final_info`` in ``info``).

Registered as ``World-v0``'s vector entry point, this is what ``gymnasium.make_vec`` builds unless
asked for another mode; text actions and a window need ``vectorization_mode="sync"`` (N single
environments, one block at a time each).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.procedural.rewards import RewardFn, resolve_reward
from envs.world_env import block_info, frame_space, open_world, render_fps
from worldsim.batch import BatchSession
from worldsim.scenario import PromptState, ScenarioError
from worldsim.session import Block
from worldsim.world import World

__all__ = ["WorldVectorEnv"]


class WorldVectorEnv(VectorEnv):
    """``num_envs`` copies of ``WorldEnv`` stepped as one batch of rollouts on one loaded world.

    Arguments are ``WorldEnv``'s (``model``, ``scenario``, ``device``, ``dtype``, ``threads``,
    ``reward``, ``world``), with ``num_envs``, ``max_episode_steps`` (1000 by default, as
    registered) and ``render_mode`` (``"rgb_array"``: ``render()`` returns a tuple of every
    sub-environment's last frame, as ``SyncVectorEnv`` does). Actions are the scenario's action
    indices, one per sub-environment.

    ``info`` holds, per key of ``WorldEnv``'s info, an array over the sub-environments (``frames``
    is (N, T, H, W, 3) uint8) and the ``_key`` mask Gymnasium's vector info convention asks for,
    plus ``episode_step``. To record each sub-environment's episodes as replays, wrap it in
    ``envs.wrappers.RecordVectorReplays``.
    """

    metadata: dict[str, Any] = {  # noqa: RUF012
        "render_modes": ["rgb_array"],
        "render_fps": 16,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        model: str = "tiny",
        scenario: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | str | None = "auto",
        reward: str | RewardFn | None = None,
        max_episode_steps: int | None = 1000,
        render_mode: str | None = None,
        world: World | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        text_actions: bool = False,
    ) -> None:
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError:
            known = ", ".join(repr(m.value) for m in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP))
            raise ValueError(f"unknown autoreset_mode {autoreset_mode!r}; known: {known}") from None
        if self.autoreset_mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(
                f"autoreset_mode {self.autoreset_mode.value!r} is not supported; use NextStep or SameStep"
            )
        if not _whole(num_envs) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive whole number, not {num_envs!r}")
        if max_episode_steps is not None and (not _whole(max_episode_steps) or max_episode_steps < 1):
            raise ValueError(
                f"max_episode_steps must be a positive whole number or None, not {max_episode_steps!r}"
            )
        if text_actions:
            raise ValueError(
                "the batched vector env takes the scenario's actions, not text; for text actions use "
                "gymnasium.make_vec(..., vectorization_mode='sync')"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"the batched vector env renders 'rgb_array' only, not {render_mode!r}; for a window use "
                "gymnasium.make_vec(..., vectorization_mode='sync')"
            )
        self.reward_fn = resolve_reward(reward)
        self.world, self.scenario = open_world(model, scenario, device, dtype, threads, world)
        self.num_envs = int(num_envs)
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.metadata = {
            **self.metadata,
            "render_fps": render_fps(self.world),
            "autoreset_mode": self.autoreset_mode,
        }
        self.single_observation_space = frame_space(self.world)
        self.single_action_space = spaces.Discrete(len(self.scenario.actions))
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

        self.prompts = [PromptState(self.scenario) for _ in range(num_envs)]
        self.batch: BatchSession | None = None
        self.episode_steps = np.zeros(num_envs, np.int64)
        self.episodes = np.full(num_envs, -1, np.int64)  # episode number of each sub-environment
        self.autoreset = np.zeros(num_envs, bool)  # the next step resets these
        self._rngs = [seeding.np_random()[0] for _ in range(num_envs)]
        self.last_blocks: list[Block] = []

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-environment and generate their first blocks.

        `seed`: an int seeds sub-environment i with seed + i; a list gives one seed (or None) each.
        Sub-environments reset on their own through autoreset, so there is no partial reset.
        """
        if options:
            raise ValueError(f"WorldVectorEnv.reset takes no options, got {sorted(options)}")
        for i, one_seed in enumerate(self._seeds(seed)):
            if one_seed is not None:
                self._rngs[i] = seeding.np_random(one_seed)[0]
        session_seeds = [self._start_episode(i) for i in range(self.num_envs)]
        self.batch = BatchSession(self.world, [p.prompt for p in self.prompts], session_seeds)
        blocks = self.batch.step()
        self.last_blocks = blocks
        infos = [self._info(i, block, self.scenario.noop, None) for i, block in enumerate(blocks)]
        return np.stack([block.frames[-1] for block in blocks]), self._vector_info(infos)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Apply each sub-environment's action (or reset it, if its episode ended); a block each."""
        if self.batch is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"expected {self.num_envs} actions, got an array of shape {actions.shape}")
        resetting = self.autoreset.copy()  # next-step autoreset: these start over now
        chosen = []
        for i, action in enumerate(actions):  # every action checked before anything changes
            try:
                chosen.append(self.scenario.action(action))
            except ScenarioError as err:
                raise ValueError(f"sub-environment {i}: {err}") from None
        names = []
        for i, action in enumerate(chosen):
            if resetting[i]:
                self._restart(i)
                names.append(self.scenario.noop)
                continue
            change = self.prompts[i].apply(action)
            self.batch.follow(i, change.prompt, change.cut)
            names.append(change.action)
        blocks = self.batch.step()
        self.episode_steps[~resetting] += 1
        infos = [
            self._info(i, block, name, None if resetting[i] else self.last_blocks[i])
            for i, (block, name) in enumerate(zip(blocks, names, strict=True))
        ]
        rewards = np.zeros(self.num_envs, np.float64)
        if self.reward_fn is not None:
            for i, block in enumerate(blocks):
                if not resetting[i]:
                    rewards[i] = float(self.reward_fn(block.frames, infos[i]))
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        if self.max_episode_steps is not None:
            truncated = (self.episode_steps >= self.max_episode_steps) & ~resetting
        done = terminated | truncated
        if self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
            # The ended episodes start over in this step: their first blocks, the others standing still.
            ended = [int(i) for i in np.flatnonzero(done)]
            for i in ended:
                self._restart(i)
            for i, block in zip(ended, self.batch.step(ended), strict=True):
                final_obs, final_info = blocks[i].frames[-1].copy(), infos[i]
                blocks[i] = block
                infos[i] = {
                    **self._info(i, block, self.scenario.noop, None),
                    "final_obs": final_obs,
                    "final_info": final_info,
                }
        else:
            self.autoreset = done
        self.last_blocks = blocks
        observations = np.stack([block.frames[-1] for block in blocks])
        return observations, rewards, terminated, truncated, self._vector_info(infos)

    def render(self) -> tuple[np.ndarray, ...] | None:
        """Every sub-environment's last frame, (H, W, 3) uint8 each, with render_mode "rgb_array"."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() was called without a render_mode; pass render_mode='rgb_array'")
            return None
        if not self.last_blocks:
            raise gymnasium.error.ResetNeeded("call reset() before render()")
        return tuple(block.frames[-1].copy() for block in self.last_blocks)

    # ------------------------------------------------------------------------------------------------

    def _seeds(self, seed: int | list[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            return [int(seed) + i for i in range(self.num_envs)]
        if isinstance(seed, (list, tuple)) and len(seed) == self.num_envs:
            return list(seed)
        raise ValueError(f"seed must be an int, None or a list of {self.num_envs} seeds, not {seed!r}")

    def _restart(self, i: int) -> None:
        """Sub-environment i starts a new episode at the next block, from the scenario's start prompt."""
        assert self.batch is not None
        session_seed = self._start_episode(i)
        self.batch.restart(i, self.prompts[i].prompt, session_seed)

    def _start_episode(self, i: int) -> int:
        """Begin sub-environment i's next episode; returns its session's seed, drawn as WorldEnv draws it."""
        self.prompts[i].reset()
        self.episode_steps[i] = 0
        self.episodes[i] += 1
        self.autoreset[i] = False
        return int(self._rngs[i].integers(2**31))

    def _info(self, i: int, block: Block, action: str, previous: Block | None) -> dict[str, Any]:
        """Sub-environment i's info for a block after `previous`: WorldEnv's, and its step in the episode."""
        return {**block_info(block, action, previous), "episode_step": int(self.episode_steps[i])}

    def _vector_info(self, infos: list[dict[str, Any]]) -> dict[str, Any]:
        """Gymnasium's vector info (``VectorEnv._add_info``): per key an array over the sub-environments
        and a ``_key`` mask; ``frames`` is an object array when blocks differ in length (a rollout's
        very first block is shorter on models without lead-in blocks)."""
        ragged = len({info["frames"].shape for info in infos}) > 1
        merged: dict[str, Any] = {}
        for i, info in enumerate(infos):
            merged = self._add_info(merged, {k: v for k, v in info.items() if k != "frames" or not ragged}, i)
        if ragged:
            frames = np.empty(self.num_envs, dtype=object)
            for i, info in enumerate(infos):
                frames[i] = info["frames"]
            merged["frames"], merged["_frames"] = frames, np.ones(self.num_envs, bool)
        return merged


def _whole(value: Any) -> bool:
    """A whole number (a numpy integer too), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
