"""Prompt schedules: which prompt drives which stretch of a video rollout.

A schedule is an ordered list of shots. Each shot has a prompt, a length (in seconds or in generation
blocks; the last shot may instead be open-ended and last until the rollout stops) and a flag saying
whether the switch into it is a scene cut rather than a plain prompt change.

Text syntax::

    prompt A [10s] | prompt B [5s#] | prompt C [2.5s]

* ``|`` separates shots; each shot is its prompt followed by a bracketed duration at its end.
* A duration is a positive number followed by ``s`` for seconds (``[10s]``, ``[2.5s]``), or a positive
  whole number followed by ``b`` for generation blocks (``[4b]``). Spaces inside the brackets are allowed.
* A ``#`` after the unit (``[5s#]``) makes the switch into that shot a cut. The first shot cannot be one.
* The last shot may leave out its duration and then lasts until the end; ``[#]`` makes such a shot a
  cut. A lone prompt without brackets is a one-shot schedule.

Shot-list files carry the same information. JSON holds a list of shot objects or ``{"shots": [...]}``;
TOML holds ``[[shots]]`` tables. Each shot has ``prompt`` (string, required), ``seconds`` (number) or
``blocks`` (integer) -- optional for the last shot only -- and ``cut`` (boolean, default false). A
``.txt`` file holds the text syntax.

A video's length is counted in frames, so that the seconds asked for come out: a shot's end at ``t``
seconds (counted from the start of the video) lies at frame ``round(t * fps)``, and the next shot
begins with the block whose first frame is nearest to it (each shot at least one block long). The
rollout generates whole blocks, and the video is cut to the frames asked for. A length in blocks
counts whole blocks from where its shot begins.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BlockEvent",
    "BlockTiming",
    "Plan",
    "Schedule",
    "ScheduleError",
    "Shot",
    "load_schedule",
    "parse_schedule",
    "schedule_from_data",
    "schedule_from_prompt",
]

_FILE_SUFFIXES = (".json", ".toml", ".txt")
_SHOT_KEYS = ("prompt", "seconds", "blocks", "cut")
_NUMBER_CHARS = frozenset("0123456789.+-")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_UNIT_HINT = "use 's' for seconds or 'b' for blocks"
# Source lines longer than this are shown as a window around the error position.
_CONTEXT_WIDTH = 100


class ScheduleError(ValueError):
    """A schedule that cannot be parsed, validated or loaded."""

    def __init__(
        self,
        message: str,
        position: int | None = None,
        *,
        text: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # 0-based character offset into `text` (the schedule text or the file's contents), if known.
        self.position = position
        self.text = text
        self.path = path

    @property
    def line(self) -> int | None:
        """1-based line number of the error position, or None when there is none."""
        if self.position is None or self.text is None:
            return None
        return self.text.count("\n", 0, self._clamped_position()) + 1

    @property
    def column(self) -> int | None:
        """1-based column of the error position within its line, or None when there is none."""
        if self.position is None or self.text is None:
            return None
        pos = self._clamped_position()
        return pos - (self.text.rfind("\n", 0, pos) + 1) + 1

    def _clamped_position(self) -> int:
        assert self.position is not None and self.text is not None
        return min(max(self.position, 0), len(self.text))

    def __str__(self) -> str:
        head = f"{self.path}: {self.message}" if self.path else self.message
        if self.position is None or self.text is None:
            return head
        text = self.text
        pos = self._clamped_position()
        line_start = text.rfind("\n", 0, pos) + 1
        line_end = text.find("\n", pos)
        if line_end < 0:
            line_end = len(text)
        line = text[line_start:line_end].rstrip("\r")
        col = pos - line_start
        with_line = bool(self.path) or "\n" in text
        where = f"line {self.line}, column {col + 1}" if with_line else f"column {col + 1}"
        line, col = _clip_line(line, col)
        # Keep tabs in the padding so the caret lines up however the terminal expands them.
        pad = "".join("\t" if ch == "\t" else " " for ch in line[:col]) + " " * max(0, col - len(line))
        return f"{head} at {where}\n  {line}\n  {pad}^"


def _clip_line(line: str, col: int) -> tuple[str, int]:
    """Cut an over-long source line down to a window around `col`."""
    if len(line) <= _CONTEXT_WIDTH:
        return line, col
    start = max(0, min(col - _CONTEXT_WIDTH // 2, len(line) - _CONTEXT_WIDTH))
    end = start + _CONTEXT_WIDTH
    shown = line[start:end]
    col -= start
    if start > 0:
        shown = "..." + shown
        col += 3
    if end < len(line):
        shown += "..."
    return shown, col


def _seconds_problem(value: object) -> str | None:
    """Why `value` is not a valid length in seconds, or None if it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {type(value).__name__}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if value <= 0:
        return f"must be positive, got {value!r}"
    return None


def _blocks_problem(value: object) -> str | None:
    """Why `value` is not a valid length in blocks, or None if it is."""
    if isinstance(value, float):
        return f"must be a whole number of blocks, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, got {type(value).__name__}"
    if value <= 0:
        return f"must be positive, got {value!r}"
    return None


@dataclass(frozen=True)
class Shot:
    """One prompt held for a stretch of the rollout."""

    prompt: str
    # Exactly one of seconds/blocks is set, or both are None for a last shot that lasts until the end.
    seconds: float | None = None
    blocks: int | None = None
    # Whether the switch into this shot is a scene cut (always False for the first shot).
    cut: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ScheduleError("a shot needs a non-empty prompt")
        if self.seconds is not None and self.blocks is not None:
            raise ScheduleError("a shot takes either 'seconds' or 'blocks', not both")
        if self.seconds is not None:
            problem = _seconds_problem(self.seconds)
            if problem:
                raise ScheduleError(f"'seconds' {problem}")
            object.__setattr__(self, "seconds", float(self.seconds))
        if self.blocks is not None:
            problem = _blocks_problem(self.blocks)
            if problem:
                raise ScheduleError(f"'blocks' {problem}")
        if not isinstance(self.cut, bool):
            raise ScheduleError(f"'cut' must be a bool, got {type(self.cut).__name__}")

    @property
    def open_ended(self) -> bool:
        """True when the shot has no length and lasts until the end of the rollout."""
        return self.seconds is None and self.blocks is None


@dataclass(frozen=True)
class BlockEvent:
    """A shot's start, expressed as a generation block index."""

    block: int
    prompt: str
    cut: bool


@dataclass(frozen=True)
class BlockTiming:
    """How many video frames a rollout's blocks give: the first block `first`, every later one `later`."""

    first: int
    later: int
    fps: float

    def __post_init__(self) -> None:
        for name in ("first", "later"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive whole number of frames, got {value!r}")
        if not math.isfinite(self.fps) or self.fps <= 0:
            raise ValueError(f"fps must be a positive finite number, got {self.fps}")

    def start_frame(self, block: int) -> int:
        """The first video frame of block `block`."""
        return 0 if block == 0 else self.first + (block - 1) * self.later

    def nearest_block(self, frame: int) -> int:
        """The block whose first frame is nearest to `frame` (the later one on a tie)."""
        if 2 * frame < self.first:
            return 0
        return max(1, 1 + math.floor((frame - self.first) / self.later + 0.5))

    def blocks_for(self, frames: int) -> int:
        """The fewest blocks that give at least `frames` frames."""
        return 0 if frames <= 0 else 1 + max(0, math.ceil((frames - self.first) / self.later))


@dataclass(frozen=True)
class Plan:
    """Where each shot starts, and how long the video is."""

    events: tuple[BlockEvent, ...]  # one per shot that starts before the end, in order
    frames: int  # video frames in all
    blocks: int  # blocks to generate (the last one may be cut short)


@dataclass(frozen=True)
class Schedule:
    """An ordered, non-empty list of shots; only the last one may be open-ended."""

    shots: tuple[Shot, ...]

    def __post_init__(self) -> None:
        shots = tuple(self.shots)
        object.__setattr__(self, "shots", shots)
        if not shots:
            raise ScheduleError("a schedule needs at least one shot")
        for index, shot in enumerate(shots, 1):
            if not isinstance(shot, Shot):
                raise TypeError(f"shot {index} is a {type(shot).__name__}, not a Shot")
            if index == 1 and shot.cut:
                raise ScheduleError("the first shot cannot be a cut")
            if index < len(shots) and shot.open_ended:
                raise ScheduleError(f"shot {index} has no duration; only the last shot may leave it out")

    @property
    def open_ended(self) -> bool:
        """True when the last shot has no length: the video's length must come from elsewhere."""
        return self.shots[-1].open_ended

    def plan(self, timing: BlockTiming, total_seconds: float | None = None) -> Plan:
        """The block each shot starts at and the video's length in frames.

        The length is `total_seconds` when given (shots starting at or after it drop out), else the
        shots' own; an open-ended last shot needs `total_seconds`.
        """
        if total_seconds is None and self.open_ended:
            raise ScheduleError("the last shot has no duration, so the video's length must be given")
        if total_seconds is not None and (not math.isfinite(total_seconds) or total_seconds <= 0):
            raise ScheduleError(
                f"the video's length must be a positive number of seconds, got {total_seconds}"
            )
        limit = None if total_seconds is None else max(1, round(total_seconds * timing.fps))
        events, block, seconds = [], 0, 0.0
        end_frame = 0
        for shot in self.shots:
            if limit is not None and timing.start_frame(block) >= limit:
                break
            events.append(BlockEvent(block=block, prompt=shot.prompt, cut=shot.cut))
            if shot.open_ended:
                break
            if shot.seconds is not None:
                seconds += shot.seconds
                end_frame = round(seconds * timing.fps)
                block = max(block + 1, timing.nearest_block(end_frame))
            else:
                assert shot.blocks is not None
                block += shot.blocks
                end_frame = timing.start_frame(block)
                seconds = end_frame / timing.fps
        # every shot that starts shows at least one frame, and a video has at least one
        frames = limit if limit is not None else max(end_frame, timing.start_frame(events[-1].block) + 1)
        return Plan(tuple(events), frames, timing.blocks_for(frames))


# --------------------------------------------------------------------------------------------------
# Text syntax


def _skip_space(text: str, i: int, end: int) -> int:
    """Index of the first non-whitespace character in text[i:end], or `end`."""
    while i < end and text[i].isspace():
        i += 1
    return i


def parse_schedule(text: str) -> Schedule:
    """Parse the text syntax ``prompt A [10s] | prompt B [5s#] | prompt C`` into a Schedule."""
    if not isinstance(text, str):
        raise TypeError(f"schedule text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ScheduleError("the schedule is empty", 0, text=text)
    bars = [i for i, ch in enumerate(text) if ch == "|"]
    starts = [0, *(b + 1 for b in bars)]
    ends = [*bars, len(text)]
    count = len(starts)
    shots = [
        _parse_shot(text, start, end, index, index == count)
        for index, (start, end) in enumerate(zip(starts, ends, strict=True), 1)
    ]
    return Schedule(tuple(shots))


def _parse_shot(text: str, start: int, end: int, index: int, is_last: bool) -> Shot:
    """Parse the shot occupying text[start:end] (between two '|' or the text's ends)."""

    def fail(message: str, position: int) -> ScheduleError:
        return ScheduleError(message, position, text=text)

    open_pos = text.find("[", start, end)
    stray = text.find("]", start, end if open_pos < 0 else open_pos)
    if stray >= 0:
        raise fail("unexpected ']' with no matching '['", stray)
    prompt = text[start : end if open_pos < 0 else open_pos].strip()
    if not prompt:
        raise fail(f"shot {index} has an empty prompt", _skip_space(text, start, end))
    missing_duration = (
        f"shot {index} needs a duration like [5s] at its end; only the last shot may leave it out"
    )
    if open_pos < 0:
        if not is_last:
            raise fail(missing_duration, start + len(text[start:end].rstrip()))
        return Shot(prompt)

    close_pos = text.find("]", open_pos + 1, end)
    nested = text.find("[", open_pos + 1, end if close_pos < 0 else close_pos)
    if nested >= 0:
        raise fail("unexpected '[' inside a duration", nested)
    if close_pos < 0:
        raise fail("'[' is never closed; expected a duration like [5s]", open_pos)
    after = _skip_space(text, close_pos + 1, end)
    if after < end:
        if text[after] == "[":
            raise fail("a shot can have only one duration", after)
        if text[after] == "]":
            raise fail("unexpected ']' with no matching '['", after)
        raise fail("unexpected text after the duration; the duration must end the shot (missing '|'?)", after)

    seconds, blocks, cut_pos = _parse_duration(text, open_pos + 1, close_pos)
    if cut_pos is not None and index == 1:
        raise fail("the first shot cannot be a cut", cut_pos)
    if seconds is None and blocks is None and not is_last:
        raise fail(missing_duration, open_pos + 1)
    return Shot(prompt, seconds=seconds, blocks=blocks, cut=cut_pos is not None)


def _parse_duration(text: str, lo: int, hi: int) -> tuple[float | None, int | None, int | None]:
    """Parse the inside of a duration's brackets, text[lo:hi].

    Returns (seconds, blocks, position of the cut marker or None).
    """

    def fail(message: str, position: int) -> ScheduleError:
        return ScheduleError(message, position, text=text)

    i = _skip_space(text, lo, hi)
    if i < hi and text[i] == "#" and _skip_space(text, i + 1, hi) == hi:
        return None, None, i  # "[#]": an open-ended shot entered with a cut

    j = i
    while j < hi and text[j] in _NUMBER_CHARS:
        j += 1
    if j == i:
        raise fail("expected a duration like [5s]", i)
    number = text[i:j]
    if not _NUMBER_RE.fullmatch(number):
        raise fail(f"invalid number {number!r} in duration", i)

    unit_pos = _skip_space(text, j, hi)
    k = unit_pos
    while k < hi and text[k].isalpha():
        k += 1
    unit = text[unit_pos:k]
    if not unit:
        raise fail(f"missing unit after {number!r}: {_UNIT_HINT}", unit_pos)
    if unit not in ("s", "b"):
        raise fail(f"unknown unit {unit!r}: {_UNIT_HINT}", unit_pos)

    value = float(number)
    if not math.isfinite(value):
        raise fail(f"duration {number}{unit} is too large", i)
    if value <= 0:
        raise fail(f"duration must be positive, got {number}{unit}", i)
    seconds: float | None = None
    blocks: int | None = None
    if unit == "b":
        if "." in number:
            raise fail(f"a block count must be a whole number, got {number}b", i)
        blocks = int(number)
    else:
        seconds = value

    m = _skip_space(text, k, hi)
    cut_pos: int | None = None
    if m < hi and text[m] == "#":
        cut_pos = m
        m = _skip_space(text, m + 1, hi)
    if m < hi:
        raise fail(f"unexpected {text[m]!r} in duration; expected something like [5s] or [5s#]", m)
    return seconds, blocks, cut_pos


# --------------------------------------------------------------------------------------------------
# Shot-list data and files


def schedule_from_data(data: Any) -> Schedule:
    """Build a Schedule from decoded JSON/TOML data: a list of shots or a mapping with a ``shots`` list."""
    if isinstance(data, Mapping):
        for key in data:
            if key != "shots":
                raise ScheduleError(f"unknown top-level key {key!r}: expected only 'shots'")
        if "shots" not in data:
            raise ScheduleError("no 'shots' found: expected a list of shots (in TOML, [[shots]] tables)")
        items = data["shots"]
    else:
        items = data
    if not isinstance(items, (list, tuple)):
        raise ScheduleError(f"the shots must be a list, got {type(items).__name__}")
    if not items:
        raise ScheduleError("the schedule has no shots")
    count = len(items)
    shots = [_shot_from_data(item, index, index == count) for index, item in enumerate(items, 1)]
    return Schedule(tuple(shots))


def _shot_from_data(item: object, index: int, is_last: bool) -> Shot:
    """Validate one decoded shot table; errors name the shot (1-based) and the key."""
    where = f"shot {index}"
    if not isinstance(item, Mapping):
        raise ScheduleError(f"{where}: expected a table with a 'prompt', got {type(item).__name__}")
    for key in item:
        if key not in _SHOT_KEYS:
            raise ScheduleError(f"{where}: unknown key {key!r} (allowed: {', '.join(_SHOT_KEYS)})")
    if "prompt" not in item:
        raise ScheduleError(f"{where}: missing required key 'prompt'")
    prompt = item["prompt"]
    if not isinstance(prompt, str):
        raise ScheduleError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
    prompt = prompt.strip()
    if not prompt:
        raise ScheduleError(f"{where}: 'prompt' is empty")

    if "seconds" in item and "blocks" in item:
        raise ScheduleError(f"{where}: give either 'seconds' or 'blocks', not both")
    seconds: float | None = None
    blocks: int | None = None
    if "seconds" in item:
        problem = _seconds_problem(item["seconds"])
        if problem:
            raise ScheduleError(f"{where}: 'seconds' {problem}")
        seconds = float(item["seconds"])
    if "blocks" in item:
        problem = _blocks_problem(item["blocks"])
        if problem:
            raise ScheduleError(f"{where}: 'blocks' {problem}")
        blocks = item["blocks"]

    cut = item.get("cut", False)
    if not isinstance(cut, bool):
        raise ScheduleError(f"{where}: 'cut' must be true or false, got {type(cut).__name__}")
    if cut and index == 1:
        raise ScheduleError(f"{where}: 'cut': the first shot cannot be a cut")
    if seconds is None and blocks is None and not is_last:
        raise ScheduleError(
            f"{where}: missing 'seconds' or 'blocks' (only the last shot may leave out its duration)"
        )
    return Shot(prompt, seconds=seconds, blocks=blocks, cut=cut)


def _looks_like_path(source: str) -> bool:
    """Whether a string names a schedule file rather than holding schedule text."""
    return source.lower().endswith(_FILE_SUFFIXES) and not any(ch in source for ch in "|[]\n")


def load_schedule(source: str | os.PathLike[str]) -> Schedule:
    """Load a schedule from a .json/.toml/.txt file, or parse `source` as text syntax if it names none."""
    if isinstance(source, os.PathLike):
        return _load_file(os.fsdecode(source))
    if not isinstance(source, str):
        raise TypeError(f"schedule source must be a str or path, got {type(source).__name__}")
    if _looks_like_path(source):
        return _load_file(source)
    return parse_schedule(source)


def _load_file(path: str) -> Schedule:
    """Read a schedule file; every error it raises names the file."""
    file = Path(path)
    if not file.exists():
        raise ScheduleError(f"no such schedule file: {path}")
    if not file.is_file():
        raise ScheduleError(f"schedule path is not a file: {path}")
    suffix = file.suffix.lower()
    if suffix not in _FILE_SUFFIXES:
        raise ScheduleError(f"unsupported schedule file type {file.suffix!r}: expected .json, .toml or .txt")
    try:
        content = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeError) as exc:
        raise ScheduleError(f"cannot read schedule file {path}: {exc}") from exc
    try:
        if suffix == ".txt":
            return parse_schedule(content)
        data = _decode_json(content) if suffix == ".json" else _decode_toml(content)
        return schedule_from_data(data)
    except ScheduleError as err:
        if err.path is None:
            err.path = path
        raise


def _decode_json(content: str) -> Any:
    try:
        return json.loads(content)
    except json.JSONDecodeError as exc:
        raise ScheduleError(f"invalid JSON: {exc.msg}", exc.pos, text=content) from None


def _decode_toml(content: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ScheduleError("reading TOML schedules needs Python 3.11+ or the 'tomli' package") from None
    try:
        return tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        position = getattr(exc, "pos", None)
        if isinstance(position, int):
            raise ScheduleError(f"invalid TOML: {getattr(exc, 'msg', exc)}", position, text=content) from None
        raise ScheduleError(f"invalid TOML: {exc}") from None


def schedule_from_prompt(prompt: str) -> Schedule:
    """A schedule of one open-ended shot holding `prompt` for the whole rollout."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ScheduleError("the prompt is empty")
    return Schedule((Shot(prompt.strip()),))
