"""Scenario files and the replay format: parsing, errors, exact regeneration."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from tests.conftest import tiny_world
from worldsim.cli import main
from worldsim.config import EngineConfig
from worldsim.replay import (
    ReplayError,
    ReplayWriter,
    changed_settings,
    check_compatible,
    read_replay,
    replay_blocks,
)
from worldsim.scenario import PromptChange, PromptState, ScenarioError, load_scenario, scenario_from_data
from worldsim.video import read_video

SCENARIO = "envs/procedural/scenario.toml"


def digest(frames) -> str:
    return hashlib.sha256(frames.tobytes()).hexdigest()


def record(world, path, plan: dict[int, tuple[str, str, bool]], blocks: int) -> list[str]:
    """Play `blocks` blocks, applying plan[block] = (action, prompt, cut); return per-block hashes."""
    session = world.session("a meadow", seed=11)
    writer = ReplayWriter(path, world, session, scenario=SCENARIO)
    hashes = []
    for index in range(blocks):
        action, prompt, cut = plan.get(index, ("noop", session.prompt, False))
        if cut:
            session.cut(prompt)
        else:
            session.set_prompt(prompt)
        block = session.step()
        writer.write(block, action)
        hashes.append(digest(block.frames))
    writer.close()
    return hashes


PLAN = {2: ("night", "a meadow at night", False), 4: ("desert", "a desert", True)}


def test_replay_regenerates_the_same_frames(tmp_path) -> None:
    world = tiny_world()
    path = tmp_path / "run.jsonl"
    recorded = record(world, path, PLAN, 6)
    replay = read_replay(path)
    assert not replay.truncated and len(replay.events) == 6
    assert [e.action for e in replay.events][2] == "night" and replay.events[4].cut
    assert [digest(b.frames) for b in replay_blocks(replay, tiny_world())] == recorded


def test_a_version_1_replay_without_hashes_still_replays(tmp_path) -> None:
    world = tiny_world()
    path = tmp_path / "run.jsonl"
    recorded = record(world, path, PLAN, 3)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["version"] == 2 and all(len(line["frames"]) == 16 for line in lines[1:])
    lines[0]["version"] = 1
    for line in lines[1:]:
        del line["frames"]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    replay = read_replay(path)
    assert all(event.frames is None for event in replay.events)
    assert [digest(b.frames) for b in replay_blocks(replay, tiny_world())] == recorded


def test_truncated_last_line_is_tolerated_and_other_damage_is_not(tmp_path) -> None:
    world = tiny_world()
    path = tmp_path / "run.jsonl"
    recorded = record(world, path, PLAN, 4)
    text = path.read_text()
    path.write_text(text[: len(text) - 15])  # the recording died while writing its last line
    replay = read_replay(path)
    assert replay.truncated and len(replay.events) == 3
    assert [digest(b.frames) for b in replay_blocks(replay, world)] == recorded[:3]

    lines = text.splitlines()
    path.write_text("\n".join([lines[0], "{broken", *lines[2:]]) + "\n")
    with pytest.raises(ReplayError, match="line 2: not a replay event"):
        read_replay(path)
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    with pytest.raises(ReplayError, match="block 1 where block 0 was expected"):
        read_replay(path)
    path.write_text('{"format": "something else"}\n')
    with pytest.raises(ReplayError, match="is not a worldsim replay"):
        read_replay(path)
    with pytest.raises(ReplayError, match="no such replay file"):
        read_replay(tmp_path / "missing.jsonl")


def test_replay_with_other_weights_is_refused_and_other_settings_replay_as_recorded(tmp_path) -> None:
    path = tmp_path / "run.jsonl"
    recorded = record(tiny_world(), path, PLAN, 6)
    replay = read_replay(path)
    with pytest.raises(
        ReplayError, match=r"recorded with weights [0-9a-f]{12} \(test-tiny\), this model has"
    ):
        check_compatible(replay, tiny_world(seed=1))
    changed = tiny_world(EngineConfig(cut_delta=6, lead_in_blocks=2))  # the same weights, other settings
    assert changed_settings(replay, changed) == [
        "cut_delta 42 (the model's: 6)",
        "lead_in_blocks 0 (the model's: 2)",
    ]
    assert [digest(b.frames) for b in replay_blocks(replay, changed)] == recorded
    # a file from before lead-in blocks existed leaves the setting out: it replays with none
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    del header["engine"]["lead_in_blocks"]
    path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    assert [digest(b.frames) for b in replay_blocks(read_replay(path), changed)] == recorded


def test_replay_command_writes_the_video(tmp_path, tiny_bundle, capsys) -> None:
    import worldsim

    world = worldsim.load(tiny_bundle)
    path = tmp_path / "run.jsonl"
    record(world, path, PLAN, 3)
    header = json.loads(path.read_text().splitlines()[0])
    assert header["source"] == tiny_bundle and header["seed"] == 11
    out = tmp_path / "run.gif"
    assert main(["replay", str(path), "--out", str(out)]) == 0  # the model comes from the header
    assert read_video(out).shape[0] == 9 + 2 * 12
    assert main(["replay", str(tmp_path / "nope.jsonl"), "--out", str(out)]) == 2
    assert "no such replay file" in capsys.readouterr().err
    assert main(["replay", str(path), "--out", str(out), "--on-prompt-change", "recache"]) == 2
    assert "runs with the engine settings it recorded" in capsys.readouterr().err


def test_scenario_file_and_its_errors(tmp_path) -> None:
    scenario = load_scenario(SCENARIO)
    assert scenario.start_prompt == "a green meadow, bright daylight, standing still"
    state = PromptState(scenario)
    assert state.apply("north") == PromptChange(
        "north", "a green meadow, bright daylight, walking north", False
    )
    assert state.apply(scenario.action("tundra")) == PromptChange(
        "tundra", "a snowy tundra, bright daylight, walking north", True
    )
    assert state.apply(np.int64(0)) == PromptChange(
        "noop", "a snowy tundra, bright daylight, walking north", False
    )
    assert state.apply_text("a beach") == PromptChange("a beach", "a beach", False)
    assert state.apply("night").prompt == "a snowy tundra, at night, walking north"  # slots again
    assert state.apply_text("  ", cut=True) == PromptChange(
        "  ", "a snowy tundra, at night, walking north", True
    )
    state.reset()
    assert state.prompt == scenario.start_prompt
    assert scenario.keymap()["up"] == "north" and scenario.index("noop") == 0

    base = {
        "name": "x",
        "template": "{scene}",
        "start": {"scene": "a"},
        "actions": [{"name": "go", "slot": "scene"}],
    }
    assert scenario_from_data(base).start_prompt == "a"
    with pytest.raises(ScenarioError, match=r"exactly the template's slots"):
        scenario_from_data({**base, "start": {"place": "a"}})
    with pytest.raises(ScenarioError, match="kind must be one of"):
        scenario_from_data({**base, "actions": [{"name": "go", "kind": "jump", "slot": "scene"}]})
    with pytest.raises(ScenarioError, match="slot 'weather' is not in the template"):
        scenario_from_data({**base, "actions": [{"name": "go", "slot": "weather"}]})
    with pytest.raises(ScenarioError, match="unknown keys"):
        scenario_from_data({**base, "colour": 1})
    with pytest.raises(ScenarioError, match=r"unknown action 'fly'"):
        scenario.index("fly")
    with pytest.raises(ScenarioError, match="out of range"):
        scenario.action(99)
    for bad_key in (True, 1.5, None, np.array([1, 2])):
        with pytest.raises(ScenarioError, match="expected an index or a name"):
            scenario.action(bad_key)
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(ScenarioError, match=r"bad\.toml: not valid TOML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "none.toml")


def test_builtin_wan_scenario_loads_by_name() -> None:
    scenario = load_scenario("wan_walk")
    assert scenario.keymap()["up"] == "forward"
    change = PromptState(scenario).apply("to_beach")
    assert change.cut and change.prompt.startswith("A wide sandy beach")
