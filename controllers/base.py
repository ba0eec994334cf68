"""The controller interface: whatever picks a scenario action at each block boundary.

A controller is asked once per generated block, just before the block is generated, for the name of
one of the scenario's actions. The keyboard, scripted schedules, replays and agents all look the same
to the play window and to the environment.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from worldsim.scenario import Scenario


@runtime_checkable
class Controller(Protocol):
    """Picks the action for each next block."""

    def reset(self) -> None:
        """Forget everything about the previous rollout."""

    def act(self, obs: np.ndarray | None, info: dict[str, Any]) -> str:
        """The name of the scenario action to apply before the next block."""


def check_names(names: list[str], scenario: Scenario, what: str) -> None:
    """Raise ValueError naming every entry of `names` that is not an action of `scenario`."""
    known = {action.name for action in scenario.actions}
    unknown = sorted({name for name in names if name not in known})
    if unknown:
        raise ValueError(
            f"{what} names unknown actions {unknown}; the scenario {scenario.name!r} has "
            + ", ".join(action.name for action in scenario.actions)
        )
