import json
import os
import pickle

import pytest

from worldsim.schedule import (
    BlockEvent,
    BlockTiming,
    Schedule,
    ScheduleError,
    Shot,
    load_schedule,
    parse_schedule,
    schedule_from_data,
    schedule_from_prompt,
)

REFERENCE = "prompt A [10s] | prompt B [5s#] | prompt C [2.5s]"
REFERENCE_SHOTS = (
    Shot("prompt A", seconds=10.0),
    Shot("prompt B", seconds=5.0, cut=True),
    Shot("prompt C", seconds=2.5),
)


def error_for(text: str) -> ScheduleError:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(text)
    return info.value


# --------------------------------------------------------------------------------------------------
# Text syntax


def test_reference_example():
    schedule = parse_schedule(REFERENCE)
    assert schedule == Schedule(REFERENCE_SHOTS)
    assert [shot.cut for shot in schedule.shots] == [False, True, False]
    assert isinstance(schedule.shots[0].seconds, float)


def test_blocks_unit_and_open_ended_last_shot():
    schedule = parse_schedule("a cat [4b] | a dog [2b#] | a bird")
    assert schedule.shots == (
        Shot("a cat", blocks=4),
        Shot("a dog", blocks=2, cut=True),
        Shot("a bird"),
    )
    assert schedule.shots[-1].open_ended


def test_single_prompt_is_one_open_shot():
    assert parse_schedule("  a quiet forest at dawn  ") == Schedule((Shot("a quiet forest at dawn"),))
    assert parse_schedule("a quiet forest at dawn") == schedule_from_prompt("a quiet forest at dawn")


def test_single_shot_with_duration():
    assert parse_schedule("a [3s]").shots == (Shot("a", seconds=3.0),)


def test_whitespace_is_lenient():
    schedule = parse_schedule("  a  [ 10 s ]|b[5 s # ]  \n| \tc  ")
    assert schedule.shots == (Shot("a", seconds=10.0), Shot("b", seconds=5.0, cut=True), Shot("c"))


def test_decimal_forms():
    schedule = parse_schedule("a [.5s] | b [2.s] | c [+3s]")
    assert [shot.seconds for shot in schedule.shots] == [0.5, 2.0, 3.0]


def test_open_ended_last_shot_can_be_a_cut():
    schedule = parse_schedule("a [5s] | b [#]")
    assert schedule.shots[1] == Shot("b", cut=True)


def test_hash_outside_brackets_is_prompt_text():
    assert parse_schedule("shot #1 [2s] | shot #2").shots[0].prompt == "shot #1"


# --------------------------------------------------------------------------------------------------
# Text syntax errors


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("prompt A [x] | prompt B", 10, "expected a duration"),
        ("a []", 3, "expected a duration"),
        ("a [5s#] | b", 5, "first shot cannot be a cut"),
        ("a | b [5s]", 1, "needs a duration"),
        ("a [5s] | b | c", 10, "needs a duration"),
        ("a [5s] | b [#] | c", 12, "needs a duration"),
        ("[5s] | b", 0, "empty prompt"),
        ("a [5s] |  | c", 10, "shot 2 has an empty prompt"),
        ("a [5s] |", 8, "empty prompt"),
        ("a [5s] b | c", 7, "unexpected text after the duration"),
        ("a [5s] [3s]", 7, "only one duration"),
        ("a ] b [5s]", 2, "unexpected ']'"),
        ("a [5s]] | b", 6, "unexpected ']'"),
        ("a [5s", 2, "never closed"),
        ("a [5s | b [3s]", 2, "never closed"),
        ("a [5 [s]", 5, "unexpected '['"),
        ("a [1.2.3s]", 3, "invalid number"),
        ("a [5]", 4, "missing unit"),
        ("a [5m]", 4, "unknown unit 'm'"),
        ("a [5S]", 4, "unknown unit"),
        ("a [0s]", 3, "must be positive"),
        ("a [-2s]", 3, "must be positive"),
        ("a [0b]", 3, "must be positive"),
        ("a [2.5b]", 3, "whole number"),
        ("a [5s#x]", 6, "unexpected 'x'"),
        ("a [5s##]", 6, "unexpected '#'"),
        ("   ", 0, "empty"),
    ],
)
def test_text_errors(text: str, position: int, words: str):
    err = error_for(text)
    assert err.position == position
    assert words in err.message
    assert words in str(err)


def test_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_schedule("a [x] | b")


def test_caret_under_offending_character():
    err = error_for("prompt A [x] | prompt B")
    assert err.position == 10
    assert str(err) == (
        "expected a duration like [5s] at column 11\n  prompt A [x] | prompt B\n            ^"
    )
    assert (err.line, err.column) == (1, 11)


def test_caret_on_the_right_line_of_multiline_text():
    text = "a [5s]\n| b [3]\n| c"
    err = error_for(text)
    assert err.position == text.index("]", 8)
    assert (err.line, err.column) == (2, 7)
    lines = str(err).splitlines()
    assert lines[0].endswith("at line 2, column 7")
    assert lines[1] == "  | b [3]"
    assert lines[2] == "  " + " " * 6 + "^"


def test_caret_keeps_tabs_aligned():
    err = error_for("\ta [x]")
    assert str(err).splitlines()[2] == "  \t   ^"


def test_caret_window_for_long_lines():
    text = "x" * 300 + " [q]"
    err = error_for(text)
    assert err.position == 302
    _, line, caret = str(err).split("\n")
    assert len(line) < 120
    assert line[caret.index("^")] == "q"


def test_error_without_position_has_no_caret():
    err = ScheduleError("plain problem")
    assert err.position is None
    assert str(err) == "plain problem"
    assert err.line is None and err.column is None


def test_error_pickles():
    err = error_for("a [x]")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err)
    assert copy.position == err.position


# --------------------------------------------------------------------------------------------------
# Dataclass validation


def test_shot_and_schedule_validation():
    with pytest.raises(ScheduleError, match="non-empty prompt"):
        Shot("  ")
    with pytest.raises(ScheduleError, match="not both"):
        Shot("a", seconds=1.0, blocks=1)
    with pytest.raises(ScheduleError, match="'seconds' must be positive"):
        Shot("a", seconds=0)
    with pytest.raises(ScheduleError, match="'blocks' must be a whole number"):
        Shot("a", blocks=1.5)  # type: ignore[arg-type]
    with pytest.raises(ScheduleError, match="at least one shot"):
        Schedule(())
    with pytest.raises(ScheduleError, match="first shot cannot be a cut"):
        Schedule((Shot("a", cut=True),))
    with pytest.raises(ScheduleError, match="shot 1 has no duration"):
        Schedule((Shot("a"), Shot("b")))


def test_dataclasses_are_frozen_and_normalised():
    shot = Shot("a", seconds=10)
    assert shot.seconds == 10.0 and isinstance(shot.seconds, float)
    schedule = Schedule([shot])  # type: ignore[arg-type]
    assert isinstance(schedule.shots, tuple)
    with pytest.raises(AttributeError):
        shot.prompt = "b"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        schedule.shots = ()  # type: ignore[misc]


def test_schedule_from_prompt():
    assert schedule_from_prompt("  a red car  ").shots == (Shot("a red car"),)
    with pytest.raises(ScheduleError):
        schedule_from_prompt(" ")


# --------------------------------------------------------------------------------------------------
# Block arithmetic


WAN = BlockTiming(first=9, later=12, fps=16)  # 3-frame latent blocks: 9 video frames, then 12
TINY = BlockTiming(first=1, later=4, fps=16)  # 1-frame latent blocks: 1 video frame, then 4


def test_block_timing_arithmetic():
    assert [WAN.start_frame(k) for k in range(4)] == [0, 9, 21, 33]
    assert [WAN.nearest_block(f) for f in (0, 4, 5, 9, 15, 16, 160)] == [0, 0, 1, 1, 2, 2, 14]
    assert [WAN.blocks_for(f) for f in (0, 1, 9, 10, 21, 22, 160)] == [0, 1, 1, 2, 2, 3, 14]
    assert [TINY.blocks_for(f) for f in (1, 2, 5, 16, 48)] == [1, 2, 2, 5, 13]
    bad_timings = (
        dict(first=0, later=4, fps=16),
        dict(first=1, later=4.0, fps=16),
        dict(first=1, later=4, fps=0),
    )
    for bad in bad_timings:
        with pytest.raises(ValueError):
            BlockTiming(**bad)  # type: ignore[arg-type]


def test_plan_reference():
    plan = parse_schedule(REFERENCE).plan(WAN)
    # shot ends: 10 s = frame 160 (nearest block start: 165, block 14), 15 s = frame 240 (237, block 20)
    assert plan.events == (
        BlockEvent(block=0, prompt="prompt A", cut=False),
        BlockEvent(block=14, prompt="prompt B", cut=True),
        BlockEvent(block=20, prompt="prompt C", cut=False),
    )
    assert plan.frames == 280 and plan.blocks == 24  # 17.5 s; 24 blocks give 285 frames, cut to 280


def test_plan_makes_the_seconds_asked_for():
    three = parse_schedule("a [3s] | b [3s] | c [3s#]")
    for timing in (WAN, TINY):
        plan = three.plan(timing)
        assert plan.frames == 144  # 9 s at 16 fps, whatever the blocks
        assert timing.start_frame(plan.blocks - 1) < 144 <= timing.start_frame(plan.blocks)
    assert [e.block for e in three.plan(TINY).events] == [0, 13, 25]  # frames 49 and 97 for 48 and 96
    assert schedule_from_prompt("a").plan(TINY, total_seconds=1).frames == 16
    assert schedule_from_prompt("a").plan(WAN, total_seconds=1).frames == 16


def test_plan_mixed_units_and_open_end():
    schedule = parse_schedule("a [4b] | b [3s#] | c")
    plan = schedule.plan(WAN, total_seconds=10)
    # 4 blocks end at frame 45 (2.81 s); 3 s more end at 5.81 s = frame 93, nearest block 8 (frame 93)
    assert plan.events == (BlockEvent(0, "a", False), BlockEvent(4, "b", True), BlockEvent(8, "c", False))
    assert plan.frames == 160
    with pytest.raises(ScheduleError, match="length must be given"):
        schedule.plan(WAN)


def test_plan_gives_every_shot_a_block_and_drops_shots_past_the_end():
    schedule = parse_schedule("a [0.1s] | b [0.1s] | c [2s]")
    assert [e.block for e in schedule.plan(WAN).events] == [0, 1, 2]
    plan = parse_schedule(REFERENCE).plan(WAN, total_seconds=12)
    assert [e.block for e in plan.events] == [0, 14] and plan.frames == 192
    assert [e.block for e in parse_schedule(REFERENCE).plan(WAN, total_seconds=0.5).events] == [0]
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ScheduleError, match="positive number of seconds"):
            parse_schedule(REFERENCE).plan(WAN, total_seconds=bad)


# --------------------------------------------------------------------------------------------------
# Files

REFERENCE_JSON_SHOTS = [
    {"prompt": "prompt A", "seconds": 10},
    {"prompt": "prompt B", "seconds": 5, "cut": True},
    {"prompt": "prompt C", "seconds": 2.5},
]

REFERENCE_TOML = """\
[[shots]]
prompt = "prompt A"
seconds = 10

[[shots]]
prompt = "prompt B"
seconds = 5
cut = true

[[shots]]
prompt = "prompt C"
seconds = 2.5
"""


def test_json_list_matches_text(tmp_path):
    path = tmp_path / "shots.json"
    path.write_text(json.dumps(REFERENCE_JSON_SHOTS))
    assert load_schedule(path) == parse_schedule(REFERENCE)
    assert load_schedule(str(path)) == parse_schedule(REFERENCE)


def test_json_object_matches_text(tmp_path):
    path = tmp_path / "shots.json"
    path.write_text(json.dumps({"shots": REFERENCE_JSON_SHOTS}, indent=2))
    assert load_schedule(path) == parse_schedule(REFERENCE)


def test_toml_matches_text(tmp_path):
    path = tmp_path / "shots.toml"
    path.write_text(REFERENCE_TOML)
    assert load_schedule(path) == parse_schedule(REFERENCE)


def test_blocks_and_open_end_in_files_match_text(tmp_path):
    text = "a [4b] | b [3s#] | c [#]"
    shots = [
        {"prompt": "a", "blocks": 4},
        {"prompt": "b", "seconds": 3, "cut": True},
        {"prompt": "c", "cut": True},
    ]
    json_path = tmp_path / "s.json"
    json_path.write_text(json.dumps(shots))
    toml_path = tmp_path / "s.toml"
    toml_path.write_text(
        '[[shots]]\nprompt = "a"\nblocks = 4\n\n[[shots]]\nprompt = "b"\nseconds = 3\ncut = true\n\n'
        '[[shots]]\nprompt = "c"\ncut = true\n'
    )
    assert load_schedule(json_path) == load_schedule(toml_path) == parse_schedule(text)


def test_txt_file_holds_text_syntax(tmp_path):
    path = tmp_path / "shots.txt"
    path.write_text("prompt A [10s]\n| prompt B [5s#]\n| prompt C [2.5s]\n")
    assert load_schedule(path) == parse_schedule(REFERENCE)


def test_txt_file_errors_name_the_file(tmp_path):
    path = tmp_path / "shots.txt"
    path.write_text("a [5s]\n| b [5q]\n")
    with pytest.raises(ScheduleError) as info:
        load_schedule(path)
    err = info.value
    assert err.path == str(path)
    assert err.position == 13
    assert str(err).startswith(f"{path}: unknown unit 'q'")
    assert "line 2, column 7" in str(err)
    assert str(err).splitlines()[-1] == "  " + " " * 6 + "^"


def test_load_schedule_treats_other_strings_as_text():
    assert load_schedule(REFERENCE) == parse_schedule(REFERENCE)
    assert load_schedule("a lighthouse in a storm") == schedule_from_prompt("a lighthouse in a storm")
    # Contains schedule syntax, so it is text even though it ends like a file name.
    assert load_schedule("a [2s] | reading notes.txt").shots[1].prompt == "reading notes.txt"


@pytest.mark.parametrize("name", ["missing.json", "missing.toml", "missing.txt"])
def test_missing_file(tmp_path, name):
    path = str(tmp_path / name)
    with pytest.raises(ScheduleError, match="no such schedule file: ") as info:
        load_schedule(path)
    assert path in str(info.value)


def test_missing_pathlike(tmp_path):
    with pytest.raises(ScheduleError, match="no such schedule file"):
        load_schedule(tmp_path / "nope.yaml")


def test_unsupported_pathlike_suffix(tmp_path):
    path = tmp_path / "shots.yaml"
    path.write_text("- prompt: a\n")
    with pytest.raises(ScheduleError, match="unsupported schedule file type"):
        load_schedule(path)


def test_directory_is_not_a_schedule_file(tmp_path):
    path = tmp_path / "dir.json"
    path.mkdir()
    with pytest.raises(ScheduleError, match="not a file"):
        load_schedule(path)


def test_json_syntax_error_reports_line_and_column(tmp_path):
    content = '[\n  {"prompt": "a", "seconds": 5}\n  {"prompt": "b"}\n]\n'
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(json.JSONDecodeError) as json_info:
        json.loads(content)
    with pytest.raises(ScheduleError) as info:
        load_schedule(path)
    err = info.value
    assert err.position == json_info.value.pos
    assert (err.line, err.column) == (json_info.value.lineno, json_info.value.colno)
    assert f"line {json_info.value.lineno}, column {json_info.value.colno}" in str(err)
    assert "invalid JSON" in str(err)
    assert str(err).startswith(str(path))


def test_toml_syntax_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[shots]]\nprompt = "a\n')
    with pytest.raises(ScheduleError, match="invalid TOML") as info:
        load_schedule(path)
    assert str(path) in str(info.value)


def write_json(tmp_path, data) -> str:
    path = tmp_path / "shots.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    ("shots", "words"),
    [
        ([{"prompt": "a", "seconds": 5}, {"prompt": "b", "secs": 5}], "shot 2: unknown key 'secs'"),
        ([{"seconds": 5}, {"prompt": "b"}], "shot 1: missing required key 'prompt'"),
        ([{"prompt": 3}], "shot 1: 'prompt' must be a string"),
        ([{"prompt": "  "}], "shot 1: 'prompt' is empty"),
        ([{"prompt": "a", "seconds": "5"}], "shot 1: 'seconds' must be a number"),
        ([{"prompt": "a", "seconds": True}], "shot 1: 'seconds' must be a number"),
        ([{"prompt": "a", "seconds": 0}], "shot 1: 'seconds' must be positive"),
        ([{"prompt": "a", "seconds": None}], "shot 1: 'seconds' must be a number"),
        ([{"prompt": "a", "blocks": 2.5}], "shot 1: 'blocks' must be a whole number"),
        ([{"prompt": "a", "blocks": "2"}], "shot 1: 'blocks' must be an integer"),
        ([{"prompt": "a", "blocks": -1}], "shot 1: 'blocks' must be positive"),
        ([{"prompt": "a", "seconds": 1, "blocks": 1}], "shot 1: give either 'seconds' or 'blocks'"),
        ([{"prompt": "a", "seconds": 1, "cut": "yes"}], "shot 1: 'cut' must be true or false"),
        ([{"prompt": "a", "seconds": 1, "cut": True}], "shot 1: 'cut': the first shot cannot be a cut"),
        ([{"prompt": "a"}, {"prompt": "b"}], "shot 1: missing 'seconds' or 'blocks'"),
        ([{"prompt": "a", "seconds": 1}, "b"], "shot 2: expected a table"),
        ([], "no shots"),
        ({"shot": []}, "unknown top-level key 'shot'"),
        ({}, "no 'shots' found"),
        ({"shots": {"prompt": "a"}}, "must be a list"),
        ("a [5s]", "must be a list"),
    ],
)
def test_json_shot_errors_name_file_shot_and_key(tmp_path, shots, words):
    path = write_json(tmp_path, shots)
    with pytest.raises(ScheduleError) as info:
        load_schedule(path)
    err = info.value
    assert words in str(err)
    assert str(err).startswith(f"{path}: ")
    assert err.path == path
    assert err.position is None


def test_toml_shot_errors_name_file_shot_and_key(tmp_path):
    path = tmp_path / "shots.toml"
    path.write_text('[[shots]]\nprompt = "a"\nseconds = 2\n\n[[shots]]\nprompt = "b"\nduration = 3\n')
    with pytest.raises(ScheduleError, match="shot 2: unknown key 'duration'") as info:
        load_schedule(path)
    assert str(info.value).startswith(f"{path}: ")


def test_schedule_from_data_without_a_file():
    assert schedule_from_data({"shots": REFERENCE_JSON_SHOTS}) == parse_schedule(REFERENCE)
    with pytest.raises(ScheduleError) as info:
        schedule_from_data([{"prompt": "a", "seconds": -3}])
    assert info.value.path is None
    assert str(info.value) == "shot 1: 'seconds' must be positive, got -3"


def test_load_schedule_accepts_fspath_objects(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(REFERENCE_TOML)

    class Wrapped(os.PathLike):
        def __fspath__(self) -> str:
            return str(path)

    assert load_schedule(Wrapped()) == parse_schedule(REFERENCE)


def test_plan_never_loses_a_shot_or_makes_an_empty_video():
    plan = parse_schedule("A [5s] | B [0.3s]").plan(BlockTiming(1, 12, 16))
    assert [e.block for e in plan.events] == [0, 8]
    assert BlockTiming(1, 12, 16).start_frame(8) < plan.frames  # B shows at least one frame
    assert parse_schedule("A [0.01s]").plan(WAN).frames == 1
