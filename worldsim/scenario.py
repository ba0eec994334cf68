"""Scenarios: the actions of a world as data.

A scenario names the actions a player or an agent can take. Keyboard play, the Gymnasium
environment's action space and replays all read the same file. A prompt is a template whose
slots hold the current texts::

    name = "a walk"
    template = "{scene}, {action}"
    release_action = "idle"            # applied when no key is held (default: the first noop)

    [start]                            # the slots' texts at the start
    scene = "a quiet street"
    action = "standing still"

    [scenes]                           # optional: names a cut action may use instead of text
    beach = "a sunny beach"

    [[actions]]                        # order = index in the discrete action space
    name = "forward"
    keys = ["up", "w"]                 # pygame key names
    kind = "prompt"                    # "noop", "prompt" (a KV Flush) or "cut" (a RoPE Cut)
    slot = "action"                    # which slot it replaces
    text = "walking forward"           # for a cut: the new scene, or a name in [scenes]
"""

from __future__ import annotations

import operator
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KINDS = ("noop", "prompt", "cut")


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Action:
    """One action of a scenario."""

    name: str
    kind: str  # noop | prompt | cut
    slot: str = ""
    text: str = ""
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scenario:
    """The actions of a world and how each changes the prompt."""

    name: str
    template: str
    start: dict[str, str]
    actions: tuple[Action, ...]
    scenes: dict[str, str] = field(default_factory=dict)
    release_action: str = "noop"
    source: str = ""

    def __post_init__(self) -> None:
        slots = {name for _, name, _, _ in string.Formatter().parse(self.template) if name}
        problems = []
        if slots != set(self.start):
            problems.append(
                f"[start] must give exactly the template's slots {sorted(slots)}, got {sorted(self.start)}"
            )
        names = [a.name for a in self.actions]
        if len(set(names)) != len(names):
            problems.append("action names must be unique")
        if not self.actions:
            problems.append("a scenario needs at least one action")
        for action in self.actions:
            if action.kind not in KINDS:
                problems.append(f"action {action.name!r}: kind must be one of {KINDS}, not {action.kind!r}")
            elif action.kind != "noop" and action.slot not in slots:
                problems.append(f"action {action.name!r}: slot {action.slot!r} is not in the template")
        if self.release_action not in names:
            problems.append(f"release_action {self.release_action!r} is not an action")
        if problems:
            where = f"{self.source}: " if self.source else ""
            raise ScenarioError(where + "; ".join(problems))

    @property
    def start_prompt(self) -> str:
        """The prompt a rollout starts from."""
        return self.template.format(**self.start)

    @property
    def noop(self) -> str:
        """The action that changes nothing: the first of kind noop, else the release action."""
        return next((a.name for a in self.actions if a.kind == "noop"), self.release_action)

    def index(self, name: str) -> int:
        """Position of an action in the discrete action space."""
        for i, action in enumerate(self.actions):
            if action.name == name:
                return i
        raise ScenarioError(f"unknown action {name!r}; {self._known()}")

    def action(self, key: Any) -> Action:
        """An action by index (an int, a numpy integer or a 0-d integer array) or by name."""
        if isinstance(key, str):
            return self.actions[self.index(key)]
        try:
            if isinstance(key, bool) or getattr(key, "dtype", None) is np.dtype(bool):
                raise TypeError
            number = operator.index(key)
        except TypeError:
            raise ScenarioError(
                f"invalid action {key!r}: expected an index or a name; {self._known()}"
            ) from None
        if not 0 <= number < len(self.actions):
            raise ScenarioError(
                f"action index {number} is out of range 0..{len(self.actions) - 1}; {self._known()}"
            )
        return self.actions[number]

    def _known(self) -> str:
        return "known: " + ", ".join(f"{i}={a.name}" for i, a in enumerate(self.actions))

    def prompt(self, slots: dict[str, str]) -> str:
        """The prompt for these slot texts."""
        return self.template.format(**slots)

    def keymap(self) -> dict[str, str]:
        """pygame key name -> action name."""
        return {key: action.name for action in self.actions for key in action.keys}


@dataclass(frozen=True)
class PromptChange:
    """What one action asks of a session before its next block."""

    action: str  # the action's name, or the free text it came from
    prompt: str  # the prompt to follow (a KV Flush when it differs from the current one)
    cut: bool  # go to it with a RoPE Cut


class PromptState:
    """A scenario's prompt as actions change it: the one place actions become prompt changes and cuts.

    The environment, the play window, the browser page and replays all turn actions into what a
    session follows through it::

        state = PromptState(scenario)
        change = state.apply("north")                 # or an index, or an Action
        session.follow(change.prompt, change.cut)

    A free-text prompt (``apply_text``) replaces the whole prompt; the next scenario action builds
    the prompt from the template's slots again.
    """

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.slots: dict[str, str] = dict(scenario.start)
        self.prompt = scenario.start_prompt

    def reset(self) -> None:
        """Back to the scenario's start prompt."""
        self.slots = dict(self.scenario.start)
        self.prompt = self.scenario.start_prompt

    def apply(self, action: Action | int | str) -> PromptChange:
        """Apply a scenario action (by Action, index or name); ScenarioError if there is no such action."""
        if not isinstance(action, Action):
            action = self.scenario.action(action)
        if action.kind == "noop":
            return PromptChange(action.name, self.prompt, False)
        text = self.scenario.scenes.get(action.text, action.text) if action.kind == "cut" else action.text
        self.slots = {**self.slots, action.slot: text}
        self.prompt = self.scenario.prompt(self.slots)
        return PromptChange(action.name, self.prompt, action.kind == "cut")

    def apply_text(self, prompt: str, cut: bool = False) -> PromptChange:
        """Follow a free-text prompt (a blank one keeps the current prompt), with a RoPE Cut if `cut`."""
        self.prompt = prompt if prompt.strip() else self.prompt
        return PromptChange(prompt, self.prompt, cut)


BUILTIN_SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario TOML file, or a built-in one by name; every problem is a ScenarioError."""
    path = Path(path)
    if not path.is_file() and (BUILTIN_SCENARIOS / f"{path}.toml").is_file():
        path = BUILTIN_SCENARIOS / f"{path}.toml"
    if not path.is_file():
        builtin = sorted(p.stem for p in BUILTIN_SCENARIOS.glob("*.toml"))
        raise ScenarioError(f"no such scenario file: {path} (built-in scenarios: {', '.join(builtin)})")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ScenarioError(f"{path}: not valid TOML: {err}") from err
    return scenario_from_data(data, source=str(path))


def scenario_from_data(data: dict[str, Any], source: str = "") -> Scenario:
    """A scenario from decoded TOML/JSON data."""
    where = f"{source}: " if source else ""
    known = {"name", "template", "start", "actions", "scenes", "release_action"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ScenarioError(f"{where}unknown keys {unknown} (known: {sorted(known)})")
    for key, kind in (("name", str), ("template", str), ("start", dict), ("actions", list)):
        if not isinstance(data.get(key), kind):
            raise ScenarioError(f"{where}'{key}' is missing or not a {kind.__name__}")
    actions = []
    for number, entry in enumerate(data["actions"], start=1):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ScenarioError(f"{where}action {number} needs a 'name'")
        extra = sorted(set(entry) - {"name", "kind", "slot", "text", "keys"})
        if extra:
            raise ScenarioError(f"{where}action {entry['name']!r}: unknown keys {extra}")
        keys = entry.get("keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ScenarioError(f"{where}action {entry['name']!r}: 'keys' must be a list of key names")
        actions.append(
            Action(
                name=entry["name"],
                kind=str(entry.get("kind", "prompt")),
                slot=str(entry.get("slot", "")),
                text=str(entry.get("text", "")),
                keys=tuple(keys),
            )
        )
    return Scenario(
        name=data["name"],
        template=data["template"],
        start={str(k): str(v) for k, v in data["start"].items()},
        actions=tuple(actions),
        scenes={str(k): str(v) for k, v in data.get("scenes", {}).items()},
        # when no key is held: the scenario's choice, else its first noop, else its first action
        release_action=str(
            data.get("release_action")
            or next((a.name for a in actions if a.kind == "noop"), actions[0].name if actions else "noop")
        ),
        source=source,
    )
