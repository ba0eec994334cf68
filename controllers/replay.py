"""The actions of a recorded replay, played back block by block."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from controllers.base import check_names
from worldsim.replay import read_replay
from worldsim.scenario import Scenario


class ReplayController:
    """Gives the recorded action of each block in turn, then noop once the recording runs out."""

    def __init__(self, path: str | Path, scenario: Scenario | None = None, noop: str | None = None) -> None:
        self.replay = read_replay(path)
        self.noop = noop or (scenario.noop if scenario is not None else "noop")
        # a block recorded without an action changed nothing
        self.actions = [event.action or self.noop for event in self.replay.events]
        if scenario is not None:
            check_names(self.actions, scenario, f"the replay {path}")
        self._count = 0

    def reset(self) -> None:
        """Play the recording again from its first block."""
        self._count = 0

    def act(self, obs: np.ndarray | None = None, info: dict[str, Any] | None = None) -> str:
        """The recorded action of this block, or noop past the end."""
        block, self._count = self._count, self._count + 1
        return self.actions[block] if block < len(self.actions) else self.noop
