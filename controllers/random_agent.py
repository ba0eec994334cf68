"""A random agent: a uniformly drawn action every few blocks, reproducible from its seed."""

from __future__ import annotations

from typing import Any

import numpy as np

from worldsim.scenario import Scenario


class RandomController:
    """Picks uniformly among the non-noop actions every `change_every` blocks, noop in between."""

    def __init__(self, scenario: Scenario, seed: int = 0, change_every: int = 4) -> None:
        if change_every < 1:
            raise ValueError(f"change_every must be at least 1, not {change_every}")
        self.choices = [action.name for action in scenario.actions if action.kind != "noop"]
        if not self.choices:
            raise ValueError(f"the scenario {scenario.name!r} has no action other than noop")
        self.noop = scenario.noop
        self.change_every = change_every
        self.rng = np.random.default_rng(seed)
        self._count = 0

    def reset(self) -> None:
        """Start counting blocks again; the generator runs on, so each rollout differs yet repeats by seed."""
        self._count = 0

    def act(self, obs: np.ndarray | None = None, info: dict[str, Any] | None = None) -> str:
        """A fresh random action on every `change_every`-th block from the first, else noop."""
        block, self._count = self._count, self._count + 1
        if block % self.change_every:
            return self.noop
        return self.choices[int(self.rng.integers(len(self.choices)))]
