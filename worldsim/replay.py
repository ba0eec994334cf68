"""Replays: a played session as JSON Lines, regenerated frame for frame (DESIGN section 6).

The first line is a header: format and version, the bundle's name and weights hash, the scenario,
the seed, the engine settings and the start prompt. Then one line per generated block::

    {"block": 7, "action": "north", "prompt": "a green meadow, bright daylight, walking north", "cut": false}

Each line is written and flushed as its block is generated, so a crash loses nothing already
played, and a truncated last line is skipped when reading. Replaying sets each block's prompt
(a KV Flush when it changed) or cuts to it, exactly as the live session did; on the same device and
dtype the frames are bit-identical.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from worldsim.config import EngineConfig

if TYPE_CHECKING:
    from worldsim.session import Block, Session
    from worldsim.world import World

FORMAT = "worldsim-replay"
VERSION = 1


class ReplayError(ValueError):
    """A replay file that cannot be replayed here; the message says why."""


@dataclass(frozen=True)
class ReplayEvent:
    """What was applied before one block."""

    block: int
    action: str
    prompt: str
    cut: bool


@dataclass(frozen=True)
class Replay:
    """A parsed replay file."""

    header: dict[str, Any]
    events: tuple[ReplayEvent, ...]
    truncated: bool  # the last line was cut short (the recording did not finish cleanly)

    @property
    def seed(self) -> int:
        """The session's seed."""
        return int(self.header["seed"])

    @property
    def engine(self) -> EngineConfig:
        """The engine settings of the recording."""
        return EngineConfig.from_dict(self.header["engine"])


class ReplayWriter:
    """Writes a session's header and then one line per block, flushed at once."""

    def __init__(self, path: str | Path, world: World, session: Session, scenario: str = "") -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"cannot record to {self.path}: folder {self.path.parent} does not exist")
        self._file: IO[str] | None = self.path.open("w")
        self._write(
            {
                "format": FORMAT,
                "version": VERSION,
                "bundle": world.name,
                "source": world.source,
                "weights": world.weights_hash(),
                "scenario": scenario,
                "seed": session.seed,
                "start_prompt": session.prompt,
                "engine": session.config.to_dict(),
                "device": str(world.model.device),
                "dtype": str(world.model.dtype).removeprefix("torch."),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )

    def write(self, block: Block, action: str = "") -> None:
        """Record the block just generated, with the action that led to it."""
        self.write_event(block.index, action, block.prompt, block.cut)

    def write_event(self, block: int, action: str, prompt: str, cut: bool) -> None:
        """Record what ran before block `block`: the action, the prompt it ran under, and whether it cut."""
        self._write({"block": block, "action": action, "prompt": prompt, "cut": cut})

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"replay {self.path} is closed")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file (everything is already on disk)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def read_replay(path: str | Path) -> Replay:
    """Parse a replay file; a cut-short last line is tolerated, anything else broken is an error."""
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"no such replay file: {path}")
    lines = path.read_text().splitlines()
    if not lines:
        raise ReplayError(f"{path} is empty")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as err:
        raise ReplayError(f"{path}: the header line is not JSON ({err})") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ReplayError(f"{path} is not a worldsim replay (its header has no format '{FORMAT}')")
    if header.get("version") != VERSION:
        raise ReplayError(f"{path}: unsupported replay version {header.get('version')!r}")
    missing = [k for k in ("bundle", "weights", "seed", "start_prompt", "engine") if k not in header]
    if missing:
        raise ReplayError(f"{path}: the header lacks {', '.join(missing)}")

    events: list[ReplayEvent] = []
    truncated = False
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
            event = ReplayEvent(
                int(record["block"]), str(record["action"]), str(record["prompt"]), bool(record["cut"])
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            if number == len(lines):  # the recording stopped mid-line: keep what came before
                truncated = True
                break
            raise ReplayError(f"{path}, line {number}: not a replay event ({err})") from err
        if event.block != len(events):
            raise ReplayError(
                f"{path}, line {number}: block {event.block} where block {len(events)} was expected"
            )
        events.append(event)
    return Replay(header, tuple(events), truncated)


def check_compatible(replay: Replay, world: World, source: str = "replay") -> None:
    """Refuse a replay recorded with other weights or other engine settings, saying which."""
    problems = []
    if replay.header["weights"] != world.weights_hash():
        problems.append(
            f"it was recorded with weights {replay.header['weights'][:12]} ({replay.header['bundle']}), "
            f"this model has {world.weights_hash()[:12]} ({world.name})"
        )
    recorded = replay.header["engine"]
    current = world.config.to_dict()
    changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if changed:
        problems.append(
            "engine settings differ: "
            + ", ".join(f"{k} recorded {recorded.get(k)!r} vs now {current.get(k)!r}" for k in changed)
        )
    if problems:
        raise ReplayError(f"cannot replay {source}: " + "; ".join(problems))


def replay_blocks(replay: Replay, world: World) -> Iterator[Block]:
    """Regenerate the recorded blocks in order."""
    check_compatible(replay, world)
    session = world.session(replay.header["start_prompt"], seed=replay.seed)
    for event in replay.events:
        session.follow(event.prompt, event.cut)
        yield session.step()
