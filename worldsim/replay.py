"""Replays: a played session as JSON Lines, regenerated frame for frame.

The first line is a header: format and version, the bundle's name and weights hash, the scenario,
the seed, the engine settings and the start prompt. Then one line per generated block, with a hash
of its frames::

    {"block": 7, "action": "north", "prompt": "a green meadow, bright daylight, walking north",
     "cut": false, "frames": "3f2a9c0d41b7e855"}

Each line is written and flushed as its block is generated, so a crash loses nothing already
played, and a truncated last line is skipped when reading. Replaying sets each block's prompt
(a KV Flush when it changed) or cuts to it, exactly as the live session did; on the same device and
dtype the frames are bit-identical, and ``replay_blocks`` checks every block against its hash.
Version 1 files (no hashes) still replay, unchecked.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

import numpy as np

from worldsim.config import EngineConfig
from worldsim.image import ImageError, decode_png, encode_png

if TYPE_CHECKING:
    from worldsim.session import Block
    from worldsim.world import World

FORMAT = "worldsim-replay"
VERSION = 2  # 2: each block's frame hash
READABLE_VERSIONS = (1, 2)
MAX_SEED = 2**63  # seeds are torch generator seeds


class ReplayError(ValueError):
    """A replay file that cannot be replayed here; the message says why."""


class ReplayMismatch(ReplayError):
    """A regenerated block whose frames differ from the recording's."""


@dataclass(frozen=True)
class ReplayEvent:
    """What was applied before one block, and the hash of the frames it gave."""

    block: int
    action: str
    prompt: str
    cut: bool
    frames: str | None = None  # frames_digest of the block; None in version 1 files


def frames_digest(frames: np.ndarray) -> str:
    """A short SHA-256 of a block's frames (shape and bytes), as replays record it."""
    digest = hashlib.sha256(str(frames.shape).encode())
    digest.update(np.ascontiguousarray(frames).tobytes())
    return digest.hexdigest()[:16]


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


class SessionStart(Protocol):
    """What a replay's header records of a session as it started (a ``Session`` is one)."""

    seed: int
    config: EngineConfig
    start_image: np.ndarray | None

    @property
    def start_prompt(self) -> str:
        """The prompt the session started from."""
        ...


class ReplayWriter:
    """Writes a session's header and then one line per block, flushed at once."""

    def __init__(
        self,
        path: str | Path,
        world: World,
        session: SessionStart,
        scenario: str = "",
        batch: tuple[int, int] | None = None,
    ) -> None:
        """`batch`: (rollouts, row) when the session is one rollout of a ``worldsim.batch.BatchSession``."""
        import torch

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
                "start_prompt": session.start_prompt,
                "engine": session.config.to_dict(),
                "start_image": None if session.start_image is None else encode_png(session.start_image),
                "device": str(world.model.device),
                "threads": torch.get_num_threads(),  # CPU results depend on it, bit for bit
                "torch": torch.__version__,
                "dtype": str(world.model.dtype).removeprefix("torch."),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **({} if batch is None else {"batch": {"rollouts": batch[0], "row": batch[1]}}),
            }
        )

    def write(self, block: Block, action: str = "") -> None:
        """Record the block just generated, with the action that led to it."""
        self.write_event(
            ReplayEvent(block.index, action, block.prompt, block.cut, frames_digest(block.frames))
        )

    def write_event(self, event: ReplayEvent) -> None:
        """Record what ran before a block (the action, the prompt, whether it cut) and its frames' hash."""
        record = {"block": event.block, "action": event.action, "prompt": event.prompt, "cut": event.cut}
        self._write(record if event.frames is None else {**record, "frames": event.frames})

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
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ReplayError(f"{path} is not a replay: not a text (UTF-8) file") from None
    if not lines:
        raise ReplayError(f"{path} is empty")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as err:
        raise ReplayError(f"{path}: the header line is not JSON ({err})") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ReplayError(f"{path} is not a worldsim replay (its header has no format '{FORMAT}')")
    if header.get("version") not in READABLE_VERSIONS:
        raise ReplayError(f"{path}: unsupported replay version {header.get('version')!r}")
    _check_header(path, header)

    events: list[ReplayEvent] = []
    truncated = False
    for number, line in enumerate(lines[1:], start=2):
        try:
            event = _event(json.loads(line))
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
    if not events:
        raise ReplayError(f"{path} holds no blocks: the recording has a header and nothing else")
    return Replay(header, tuple(events), truncated)


def _check_header(path: Path, header: dict[str, Any]) -> None:
    """Refuse a header whose fields have the wrong types, naming the field."""
    missing = [k for k in ("bundle", "weights", "seed", "start_prompt", "engine") if k not in header]
    if missing:
        raise ReplayError(f"{path}: the header lacks {', '.join(missing)}")
    kinds = {"bundle": str, "weights": str, "start_prompt": str, "engine": dict}
    for key, kind in kinds.items():
        if not isinstance(header[key], kind):
            what = "an object" if kind is dict else "a string"
            raise ReplayError(f"{path}: the header's '{key}' must be {what}, not {header[key]!r}")
    seed = header["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ReplayError(
            f"{path}: the header's 'seed' must be a whole number from 0 to 2**63 - 1, not {seed!r}"
        )
    threads = header.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ReplayError(f"{path}: the header's 'threads' must be a positive whole number, not {threads!r}")
    try:
        EngineConfig.from_dict(header["engine"])
    except ValueError as err:
        raise ReplayError(f"{path}: the header's 'engine': {err}") from err
    for key in ("source", "scenario", "start_image"):
        if header.get(key) is not None and not isinstance(header[key], str):
            raise ReplayError(f"{path}: the header's '{key}' must be a string, not {header[key]!r}")
    batch = header.get("batch")
    if batch is not None and not (
        isinstance(batch, dict)
        and all(
            isinstance(batch.get(k), int) and not isinstance(batch.get(k), bool) for k in ("rollouts", "row")
        )
        and 0 <= batch["row"] < batch["rollouts"]
    ):
        raise ReplayError(
            f"{path}: the header's 'batch' must be an object with whole numbers 'rollouts' and 'row' "
            f"(row < rollouts), not {batch!r}"
        )
    if header.get("start_image") is not None:
        try:
            decode_png(header["start_image"])
        except ImageError as err:
            raise ReplayError(f"{path}: the header's 'start_image' is {err}") from err


def _event(record: Any) -> ReplayEvent:
    """One event line; TypeError or ValueError if it is not one."""
    if not isinstance(record, dict):
        raise TypeError("not an object")
    block, action, prompt, cut = record["block"], record["action"], record["prompt"], record["cut"]
    frames = record.get("frames")
    if isinstance(block, bool) or not isinstance(block, int):
        raise TypeError(f"'block' must be a whole number, not {block!r}")
    if not isinstance(action, str) or not isinstance(prompt, str) or not isinstance(cut, bool):
        raise TypeError("'action' and 'prompt' must be strings and 'cut' true or false")
    if frames is not None and not isinstance(frames, str):
        raise TypeError(f"'frames' must be a hash (a string), not {frames!r}")
    return ReplayEvent(block, action, prompt, cut, frames)


def check_compatible(replay: Replay, world: World, source: str = "replay") -> None:
    """Refuse a replay recorded with other weights, saying which."""
    if replay.header["weights"] != world.weights_hash():
        raise ReplayError(
            f"cannot replay {source}: it was recorded with weights {replay.header['weights'][:12]} "
            f"({replay.header['bundle']}), this model has {world.weights_hash()[:12]} ({world.name})"
        )


def changed_settings(replay: Replay, world: World) -> list[str]:
    """The engine settings the recording ran with that differ from the model's own (it replays with them)."""
    recorded = replay.engine.to_dict()  # settings the file leaves out take their defaults
    current = world.config.to_dict()
    return [
        f"{k} {recorded[k]!r} (the model's: {current[k]!r})"
        for k in sorted(recorded)
        if recorded[k] != current[k]
    ]


def replay_blocks(replay: Replay, world: World, verify: bool = True) -> Iterator[Block]:
    """Regenerate the recorded blocks in order, with the recorded engine settings; with `verify`, each
    block is checked against its recorded hash.

    A block that differs is a ReplayError naming it, the hash recorded and the hash made.
    """
    check_compatible(replay, world)
    image = replay.header.get("start_image")
    session = world.session(
        replay.header["start_prompt"],
        seed=replay.seed,
        config=replay.engine,  # the settings it was recorded with
        start_image=None if image is None else decode_png(image),
    )
    for event in replay.events:
        session.follow(event.prompt, event.cut)
        block = session.step()
        if verify and event.frames is not None:
            made = frames_digest(block.frames)
            if made != event.frames:
                import torch

                header = replay.header
                threads = header.get("threads", "?")
                where = f"{header.get('device', '?')} {header.get('dtype', '?')}, {threads} threads"
                here = (
                    f"{world.model.device} {str(world.model.dtype).removeprefix('torch.')}, "
                    f"{torch.get_num_threads()} threads"
                )
                raise ReplayMismatch(
                    f"block {event.block} differs from the recording: expected frames {event.frames}, "
                    f"got {made} (recorded on {where}, replayed on {here}; --no-verify regenerates anyway)"
                )
        yield block
