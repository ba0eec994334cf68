"""Reward functions for ``WorldEnv``, computed from the built-in world's probes.

A reward function takes one block's frames ``(T, H, W, 3)`` uint8 and the step's info dict and returns a
float. They read the frames only, so they score any model that draws the procedural world, the tiny
world model as much as the ground truth:

* ``travel_<direction>``: how fast the camera moved that way over the block, in units of the world's
  walking speed per frame (:func:`envs.procedural.probes.camera_motion`, each frame against the one
  ``MOTION_LAG`` before it, which for the block's first frames is in the block before: the
  environments pass its last frames as ``info["previous_frames"]``, none after a cut). Walking that
  way scores about 1.0, the opposite way about -1.0, across or standing still about 0.0. A block of
  a video model decoded from one latent frame moves little within itself; its motion shows against
  the block before, as the eval reads it.
* ``reach_<biome>``: 1.0 when the block shows that biome (:func:`envs.procedural.probes.biome_of`), else 0.0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from envs.procedural.probes import MOTION_LAG, biome_of, camera_motion, with_lead_in
from envs.procedural.world import BIOMES, MOVES, WorldConfig

__all__ = ["REWARDS", "RewardFn", "motion_context", "reach", "resolve_reward", "travel"]

RewardFn = Callable[[np.ndarray, dict[str, Any]], float]

# Pixels per frame the ground-truth world walks; a reward of 1.0 means moving this fast.
WORLD_SPEED = WorldConfig().speed


def motion_context(previous: np.ndarray | None, cut: bool) -> dict[str, np.ndarray]:
    """The info entry a block's motion is read through: ``previous_frames``, the last ``MOTION_LAG``
    frames of the block before; none at an episode's start (`previous` None) and none across a cut."""
    return {} if previous is None or cut else {"previous_frames": previous[-MOTION_LAG:]}


def travel(direction: str, frames: np.ndarray, info: dict[str, Any] | None = None) -> float:
    """Camera motion towards `direction` over the frames (after ``info["previous_frames"]``, if any),
    per frame and in units of walking speed."""
    previous = None if info is None else info.get("previous_frames")
    return float(np.dot(camera_motion(with_lead_in(previous, frames)), MOVES[direction])) / WORLD_SPEED


def reach(biome: str, frames: np.ndarray, info: dict[str, Any] | None = None) -> float:
    """1.0 when the frames show `biome`, else 0.0."""
    return 1.0 if biome_of(frames) == biome else 0.0


REWARDS: dict[str, RewardFn] = {
    **{
        f"travel_{direction}": functools.partial(travel, direction)
        for direction in ("east", "west", "north", "south")
    },
    **{f"reach_{biome}": functools.partial(reach, biome) for biome in BIOMES},
}


def resolve_reward(reward: str | RewardFn | None) -> RewardFn | None:
    """A reward function from a name in REWARDS, a callable, or None for no reward."""
    if reward is None or callable(reward):
        return reward
    if isinstance(reward, str) and reward in REWARDS:
        return REWARDS[reward]
    raise ValueError(f"unknown reward {reward!r}; known: {', '.join(REWARDS)} (or pass a callable)")
