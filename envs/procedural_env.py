"""The procedural world itself as a Gymnasium environment: the ground-truth twin of ``worldsim/World-v0``.

    env = gymnasium.make("envs:worldsim/Procedural-v0", reward="travel_east", max_episode_steps=200)

Same action space, observation space, scenario and rewards as the world model's environment on
the built-in bundle, so a policy trained in the model can be evaluated in the world it imitates
(and the other way round). Each step plays as many frames as one of the model's blocks; the
prompt an action leaves in place is parsed back into (biome, light, move), a cut teleports to a
random place of the biome. Rendering is numpy only: thousands of steps a second.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from envs.procedural.rewards import RewardFn, motion_context, resolve_reward
from envs.procedural.world import SCENARIO_PATH, ProceduralWorld, WorldConfig, parse_prompt
from worldsim.scenario import PromptState, ScenarioError, load_scenario

__all__ = ["ProceduralEnv"]

# Where a reset may put the player, in world pixels either way from the origin.
START_RANGE = 10**6


class ProceduralEnv(gymnasium.Env):
    """The built-in procedural world, stepped a block of frames at a time by the scenario's actions.

    Arguments: ``scenario`` (a scenario file whose prompts parse with
    ``envs.procedural.world.parse_prompt``; the built-in one by default), ``reward`` (a name from
    ``envs.procedural.rewards.REWARDS`` or a callable ``(frames, info) -> float``), ``frames_per_step``
    (4, the built-in model's block), ``size`` (the view, 64 pixels) and ``render_mode``
    (``"rgb_array"``). Observations are the block's last frame, ``Box(0, 255, (size, size, 3), uint8)``;
    ``info`` has ``WorldEnv``'s keys (``frames``, ``previous_frames``, ``prompt``, ``block``,
    ``flushed``, ``cut``, ``action``) and ``state``, the world's true state (position, biome, light,
    seed).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 16}  # noqa: RUF012

    def __init__(
        self,
        scenario: str | Path | None = None,
        reward: str | RewardFn | None = None,
        frames_per_step: int = 4,
        size: int = 64,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; the procedural world renders 'rgb_array'")
        if not isinstance(frames_per_step, int) or frames_per_step < 1:
            raise ValueError(f"frames_per_step must be a positive whole number, not {frames_per_step!r}")
        self.reward_fn = resolve_reward(reward)
        self.scenario = load_scenario(scenario or SCENARIO_PATH)
        try:
            parse_prompt(self.scenario.start_prompt)
        except ValueError as err:
            raise ValueError(
                f"scenario {self.scenario.source} does not describe the procedural world: {err}"
            ) from None
        self.prompts = PromptState(self.scenario)
        self.config = WorldConfig(size=size)
        self.frames_per_step = frames_per_step
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = spaces.Discrete(len(self.scenario.actions))
        self.world: ProceduralWorld | None = None
        self.blocks = 0
        self.last_frames: np.ndarray | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """A random place of the start prompt's biome; the first observation is a walk arriving there."""
        super().reset(seed=seed)
        if options:
            raise ValueError(f"ProceduralEnv.reset takes no options, got {sorted(options)}")
        self.prompts.reset()
        biome, condition, move = parse_prompt(self.prompts.prompt)
        world_seed = int(self.np_random.integers(2**31))
        x, y = (int(v) for v in self.np_random.integers(-START_RANGE, START_RANGE, size=2))
        self.world = ProceduralWorld(self.config, seed=world_seed, biome=biome, condition=condition, x=x, y=y)
        self.blocks = 0
        frames = self.world.history(move, self.frames_per_step)
        return self._observe(frames, self.scenario.noop, flushed=False, cut=False)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply the action to the prompt, then play one block of frames of the move it names."""
        if self.world is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        before = self.prompts.prompt
        try:
            change = self.prompts.apply(action)
        except ScenarioError as err:
            raise ValueError(str(err)) from None
        biome, condition, move = parse_prompt(change.prompt)
        if change.cut or biome != self.world.state.biome:
            self.world.teleport(biome)
        if condition != self.world.state.condition:
            self.world.set_condition(condition)
        frames = self.world.rollout([move] * self.frames_per_step)
        previous = self.last_frames
        obs, info = self._observe(frames, change.action, change.cut or change.prompt != before, change.cut)
        info.update(motion_context(previous, change.cut))
        reward = float(self.reward_fn(frames, info)) if self.reward_fn is not None else 0.0
        return obs, reward, False, False, info

    def render(self) -> np.ndarray | None:
        """The last frame (rgb_array)."""
        if self.render_mode is None:
            gymnasium.logger.warn("render() was called without a render_mode; pass render_mode='rgb_array'")
            return None
        if self.last_frames is None:
            raise gymnasium.error.ResetNeeded("call reset() before render()")
        return self.last_frames[-1].copy()

    def _observe(
        self, frames: np.ndarray, action: str, flushed: bool, cut: bool
    ) -> tuple[np.ndarray, dict[str, Any]]:
        assert self.world is not None
        self.last_frames = frames
        info = {
            "frames": frames,
            "prompt": self.prompts.prompt,
            "block": self.blocks,
            "flushed": flushed,
            "cut": cut,
            "action": action,
            "state": asdict(self.world.state),
        }
        self.blocks += 1
        return frames[-1].copy(), info
