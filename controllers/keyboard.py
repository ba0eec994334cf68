"""Keyboard play: held movement keys and one-shot presses, by pygame key name.

The window passes key names (as ``pygame.key.name`` gives them) to ``press`` and ``release``; this
module never imports pygame, so it works with any front end that can name its keys.

Movement (actions of kind "prompt" on the "action" slot) is level-triggered: while a key is held its
action repeats at every block, the most recently pressed held key winning, and with none held the
scenario's ``release_action`` applies. A key pressed and released between two blocks still moves for
one block, so a quick tap is never lost. Everything else (light and weather changes, scene cuts) is
edge-triggered: each press fires once, at the next block, in the order pressed.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np

from worldsim.scenario import Scenario

MOVEMENT_SLOT = "action"


class KeyboardController:
    """Turns key presses and releases into one action per block (thread-safe)."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.keymap = {key.lower(): name for key, name in scenario.keymap().items()}
        self.held_actions = frozenset(
            a.name for a in scenario.actions if a.kind == "prompt" and a.slot == MOVEMENT_SLOT
        )
        # press/release come from the window's thread, act from the generator's
        self._lock = threading.Lock()
        self._held: list[str] = []  # held movement keys, oldest first
        self._tapped: str | None = None  # movement pressed since the last block, even if released since
        self._pressed: deque[str] = deque()  # one-shot actions waiting for their block

    def reset(self) -> None:
        """Release every key and drop pending presses."""
        with self._lock:
            self._held.clear()
            self._tapped = None
            self._pressed.clear()

    def press(self, key: str) -> None:
        """A key went down; keys the scenario does not bind are ignored."""
        key = key.lower()
        name = self.keymap.get(key)
        if name is None:
            return
        with self._lock:
            if name in self.held_actions:
                if key in self._held:
                    self._held.remove(key)
                self._held.append(key)
                self._tapped = name
            else:
                self._pressed.append(name)

    def queue(self, name: str) -> None:
        """An action by name (a button rather than a key), applied once, at the next block."""
        self.scenario.action(name)  # ScenarioError if there is no such action
        with self._lock:
            self._pressed.append(name)

    def release(self, key: str) -> None:
        """A key went up."""
        key = key.lower()
        with self._lock:
            if key in self._held:
                self._held.remove(key)

    def release_all(self) -> None:
        """Let go of every held key (the window lost focus and will not see their releases)."""
        with self._lock:
            self._held.clear()

    def act(self, obs: np.ndarray | None = None, info: dict[str, Any] | None = None) -> str:
        """The next block's action: a pending press, else the held movement, else the release action."""
        with self._lock:
            if self._pressed:
                return self._pressed.popleft()
            if self._held:
                name = self.keymap[self._held[-1]]
            elif self._tapped is not None:
                name = self._tapped
            else:
                name = self.scenario.release_action
            self._tapped = None
            return name

    def bindings(self) -> list[tuple[tuple[str, ...], str]]:
        """(keys, action name) of every action that has keys, in scenario order."""
        return [(action.keys, action.name) for action in self.scenario.actions if action.keys]
