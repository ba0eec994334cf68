"""Controllers: keyboard hold and press semantics, the random agent, schedules and replays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from controllers import (
    Controller,
    KeyboardController,
    RandomController,
    ReplayController,
    ScriptedController,
)
from worldsim.replay import ReplayWriter
from worldsim.scenario import Scenario, load_scenario, scenario_from_data
from worldsim.session import Block

SCENARIO = Path(__file__).resolve().parent.parent / "envs" / "procedural" / "scenario.toml"


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return load_scenario(SCENARIO)


def acts(controller: Controller, n: int) -> list[str]:
    return [controller.act(None, {}) for _ in range(n)]


def test_every_controller_is_a_controller(scenario, tmp_path) -> None:
    for controller in (
        KeyboardController(scenario),
        RandomController(scenario, seed=0),
        ScriptedController([(0, "north")]),
    ):
        assert isinstance(controller, Controller)
    assert scenario.noop == "noop"


def test_keyboard_held_movement_repeats_and_release_applies_the_release_action(scenario) -> None:
    keyboard = KeyboardController(scenario)
    assert keyboard.act(None, {}) == "idle"  # nothing held: the scenario's release action
    keyboard.press("up")
    assert acts(keyboard, 3) == ["north"] * 3
    keyboard.release("up")
    assert acts(keyboard, 2) == ["idle", "idle"]
    keyboard.press("w")  # a second key of the same action
    assert keyboard.act(None, {}) == "north"


def test_keyboard_presses_fire_once(scenario) -> None:
    keyboard = KeyboardController(scenario)
    keyboard.press("x")
    assert acts(keyboard, 3) == ["desert", "idle", "idle"]
    keyboard.release("x")
    keyboard.press("up")
    keyboard.press("x")  # a cut while walking: the cut, then back to walking
    assert acts(keyboard, 3) == ["desert", "north", "north"]
    keyboard.press("1")
    keyboard.press("2")  # two presses before a block: both fire, in order
    assert acts(keyboard, 3) == ["day", "night", "north"]


def test_keyboard_latest_held_key_wins(scenario) -> None:
    keyboard = KeyboardController(scenario)
    keyboard.press("up")
    keyboard.press("right")
    assert acts(keyboard, 2) == ["east", "east"]
    keyboard.release("right")
    assert keyboard.act(None, {}) == "north"  # up is still held
    keyboard.press("left")
    keyboard.press("up")  # pressed again: now the latest
    assert keyboard.act(None, {}) == "north"
    keyboard.release("up")
    assert keyboard.act(None, {}) == "west"
    keyboard.release_all()
    assert keyboard.act(None, {}) == "idle"


def test_keyboard_tap_between_blocks_and_unknown_keys(scenario) -> None:
    keyboard = KeyboardController(scenario)
    keyboard.press("down")
    keyboard.release("down")  # released before the block: it still moves once
    assert acts(keyboard, 2) == ["south", "idle"]
    for key in ("f5", "left shift", "p"):
        keyboard.press(key)
        keyboard.release(key)
    keyboard.release("up")  # a release without a press
    assert keyboard.act(None, {}) == "idle"
    keyboard.press("UP")
    assert keyboard.act(None, {}) == "north"
    keyboard.press("z")
    keyboard.reset()
    assert keyboard.act(None, {}) == "idle"


def test_keyboard_bindings_and_held_actions(scenario) -> None:
    keyboard = KeyboardController(scenario)
    assert keyboard.held_actions == {"idle", "north", "south", "east", "west"}
    bindings = dict((name, keys) for keys, name in keyboard.bindings())
    assert bindings["north"] == ("up", "w") and bindings["desert"] == ("x",)
    assert "noop" not in bindings


def test_random_controller_is_deterministic_by_seed(scenario) -> None:
    first, again, other = (RandomController(scenario, seed=s, change_every=3) for s in (7, 7, 8))
    run = acts(first, 60)
    assert run == acts(again, 60)
    assert run != acts(other, 60)
    names = {a.name for a in scenario.actions if a.kind != "noop"}
    for block, name in enumerate(run):
        assert name in names if block % 3 == 0 else name == "noop"
    assert len(set(run[::3])) > 3  # it does explore
    first.reset()
    assert acts(first, 2)[1] == "noop"  # the schedule restarts at block 0


def test_random_controller_rejects_bad_settings(scenario) -> None:
    with pytest.raises(ValueError, match="change_every"):
        RandomController(scenario, seed=0, change_every=0)
    only_noop = scenario_from_data(
        {"name": "n", "template": "{a}", "start": {"a": "x"}, "actions": [{"name": "noop", "kind": "noop"}]}
    )
    with pytest.raises(ValueError, match="no action other than noop"):
        RandomController(only_noop, seed=0)
    every_block = RandomController(scenario, seed=1, change_every=1)
    assert "noop" not in acts(every_block, 20)


def test_scripted_controller(scenario) -> None:
    scripted = ScriptedController([(0, "north"), (3, "desert"), (4, "night")], scenario)
    assert acts(scripted, 6) == ["north", "noop", "noop", "desert", "night", "noop"]
    scripted.reset()
    assert acts(scripted, 1) == ["north"]
    assert acts(ScriptedController([(1, "anything")]), 2) == ["noop", "anything"]  # no scenario: no checks
    with pytest.raises(ValueError, match=r"unknown actions \['jump', 'swim'\]"):
        ScriptedController([(0, "jump"), (2, "swim"), (3, "north")], scenario)
    with pytest.raises(ValueError, match="twice"):
        ScriptedController([(1, "north"), (1, "south")])
    with pytest.raises(ValueError, match="start at 0"):
        ScriptedController([(-1, "north")])


def _block(index: int, prompt: str, cut: bool = False) -> Block:
    return Block(
        index=index,
        frames=np.zeros((1, 2, 2, 3), np.uint8),
        latents=torch.zeros(1),
        prompt=prompt,
        positions=(),
        flushed=cut,
        cut=cut,
        cache_frames=0,
    )


def test_replay_controller_plays_a_recording_then_noop(world, scenario, tmp_path) -> None:
    session = world.session(scenario.start_prompt, seed=3)
    path = tmp_path / "walk.jsonl"
    writer = ReplayWriter(path, world, session, scenario=str(SCENARIO))
    for index, (action, cut) in enumerate([("idle", False), ("north", False), ("", False), ("desert", True)]):
        writer.write(_block(index, f"prompt {index}", cut), action)
    writer.close()

    replay = ReplayController(path, scenario)
    assert acts(replay, 6) == ["idle", "north", "noop", "desert", "noop", "noop"]
    replay.reset()
    assert acts(replay, 2) == ["idle", "north"]
    assert ReplayController(path).actions == ["idle", "north", "noop", "desert"]

    renamed = scenario_from_data(
        {
            "name": "other",
            "template": "{a}",
            "start": {"a": "x"},
            "actions": [{"name": "noop", "kind": "noop"}, {"name": "idle", "slot": "a", "text": "y"}],
        }
    )
    with pytest.raises(ValueError, match=r"unknown actions \['desert', 'north'\]"):
        ReplayController(path, renamed)
    with pytest.raises(ValueError, match="no such replay"):
        ReplayController(tmp_path / "missing.jsonl")
