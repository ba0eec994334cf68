"""A fixed schedule of actions by block index."""

from __future__ import annotations

from typing import Any

import numpy as np

from controllers.base import check_names
from worldsim.scenario import Scenario


class ScriptedController:
    """Plays the scheduled action at each listed block and noop at every other.

    The n-th call to ``act`` after ``reset`` (or construction) is block n.
    """

    def __init__(
        self, schedule: list[tuple[int, str]], scenario: Scenario | None = None, noop: str | None = None
    ) -> None:
        by_block: dict[int, str] = {}
        for block, name in schedule:
            if int(block) < 0:
                raise ValueError(f"block indices start at 0, not {block}")
            if int(block) in by_block:
                raise ValueError(f"block {block} is scheduled twice")
            by_block[int(block)] = str(name)
        if scenario is not None:
            check_names(list(by_block.values()), scenario, "the schedule")
        self.schedule = by_block
        self.noop = noop or (scenario.noop if scenario is not None else "noop")
        self._count = 0

    def reset(self) -> None:
        """Start the schedule again from block 0."""
        self._count = 0

    def act(self, obs: np.ndarray | None = None, info: dict[str, Any] | None = None) -> str:
        """The action scheduled for this block, or noop."""
        block, self._count = self._count, self._count + 1
        return self.schedule.get(block, self.noop)
