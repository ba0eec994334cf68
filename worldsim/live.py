"""A live rollout: generation running ahead of playback in its own thread, and the session's record.

The play window and the browser page both stand on these two objects:

- ``LiveRollout`` owns the session on a daemon thread. At each block boundary it waits until fewer
  than ``ahead`` blocks wait to be shown, takes the next prompt change (a free-text prompt if one
  is pending, else the action source's action through ``PromptState``, as late as possible so the
  action is fresh), generates the block and queues it. Pausing stops it at the next boundary.
- ``Recorder`` keeps what a replay needs of every block played (not its pixels) and writes a replay
  file on request, from block 0: each recording is a complete replay of the session so far.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from worldsim.replay import ReplayEvent, ReplayWriter, SessionStart, frames_digest
from worldsim.scenario import PromptChange, PromptState, Scenario

if TYPE_CHECKING:  # the engine (torch) loads with the model, not with the front ends' command lines
    from worldsim.session import Block, Session
    from worldsim.world import World

AHEAD = 2  # blocks generated ahead of the one being shown
JOIN_SECONDS = 0.5  # how long stopping waits for the generator before leaving it to die with the process
THREAD_PREFIX = "worldsim-"  # names of the threads a live rollout starts


class ActionSource(Protocol):
    """Whatever picks the next block's action (a ``controllers.Controller``)."""

    def act(self, obs: np.ndarray | None, info: dict[str, Any]) -> str:
        """The name of the scenario action to apply before the next block."""
        ...


@dataclass(frozen=True)
class Generated:
    """A block fresh from the generator, with the action that led to it and the time it took."""

    block: Block
    action: str
    seconds: float
    inputs: int = 0  # the front end's input counter when the block's action was taken


class LiveRollout:
    """Owns a session on a daemon thread, generating at most `ahead` blocks beyond the one being shown."""

    def __init__(
        self, session: Session, scenario: Scenario, source: ActionSource, ahead: int = AHEAD
    ) -> None:
        self.session = session
        self.source = source
        self.inputs = 0  # a front end counts its input events here, so a block can name the last it saw
        self.blocks: queue.Queue[Generated | BaseException] = queue.Queue()
        self.stop_event = threading.Event()
        self.running = threading.Event()  # cleared while paused
        self.running.set()
        self._room = threading.Semaphore(ahead)  # released by the window as it takes each block
        self.prompts = PromptState(scenario)
        self._text: PromptChange | None = None  # a free-text prompt for the next block
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=THREAD_PREFIX + "generator", daemon=True)

    def start(self) -> None:
        """Start generating."""
        self.thread.start()

    def stop(self, timeout: float = JOIN_SECONDS) -> None:
        """Ask the thread to end and wait briefly; a block being generated is not waited for."""
        self.stop_event.set()
        self.running.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def taken(self) -> None:
        """The front end took a block off the queue: there is room for one more."""
        self._room.release()

    def follow_text(self, prompt: str, cut: bool = False) -> None:
        """Follow a free-text prompt from the next block on (a KV Flush), or cut to it (a RoPE Cut)."""
        with self._lock:
            self._text = PromptChange(prompt, prompt, cut)

    def pause(self, paused: bool) -> None:
        """Stop generating at the next block boundary, or go on."""
        if paused:
            self.running.clear()
        else:
            self.running.set()

    def _next_change(self, obs: np.ndarray | None) -> PromptChange:
        with self._lock:
            text, self._text = self._text, None
        if text is not None:
            return self.prompts.apply_text(text.prompt, text.cut)
        info = {"block": self.session.block_index, "prompt": self.session.prompt}
        return self.prompts.apply(self.source.act(obs, info))

    def _wait(self, wait: Callable[[float], bool]) -> bool:
        # short waits, so that a stop is noticed promptly
        while not self.stop_event.is_set():
            if wait(0.05):
                return not self.stop_event.is_set()
        return False

    def _run(self) -> None:
        obs: np.ndarray | None = None
        try:
            while True:
                if not self._wait(lambda t: self._room.acquire(timeout=t)):
                    return
                if not self._wait(self.running.wait):
                    return
                inputs = self.inputs
                change = self._next_change(obs)
                self.session.follow(change.prompt, change.cut)
                started = time.perf_counter()
                block = self.session.step()
                seconds = time.perf_counter() - started
                if self.stop_event.is_set():
                    return
                obs = block.frames[-1]
                self.blocks.put(Generated(block, change.action, seconds, inputs))
        except BaseException as err:  # the front end reports it; a silent dead thread would freeze play
            self.blocks.put(err)


class Recorder:
    """Every block played so far, and the replay file being written, if any."""

    def __init__(self, world: World, session: SessionStart, scenario: str, path: Path | None) -> None:
        self.world = world
        self.session = session  # read for how it started (seed, start prompt, settings, picture)
        self.scenario = scenario
        self.first_path = path
        self.writer: ReplayWriter | None = None
        self._played: list[ReplayEvent] = []  # what a replay keeps of each block, not its pixels
        self._count = 0

    def add(self, block: Block, action: str) -> None:
        """Note a block as played, and write it if recording."""
        event = ReplayEvent(block.index, action, block.prompt, block.cut, frames_digest(block.frames))
        self._played.append(event)
        if self.writer is not None:
            self.writer.write_event(event)

    def start(self) -> Path:
        """Open a new replay file and write the blocks played so far into it."""
        path = self._next_path()
        writer = ReplayWriter(path, self.world, self.session, scenario=self.scenario)
        for event in self._played:
            writer.write_event(event)
        self.writer = writer
        return path

    def stop(self) -> Path | None:
        """Close the replay file (everything in it is already on disk)."""
        if self.writer is None:
            return None
        path = self.writer.path
        self.writer.close()
        self.writer = None
        return path

    def events(self) -> list[ReplayEvent]:
        """Every block played so far, as a replay records it."""
        return list(self._played)

    def _next_path(self) -> Path:
        self._count += 1
        if self.first_path is None:
            return Path(f"worldsim-{time.strftime('%Y%m%d-%H%M%S')}-{self._count}.jsonl")
        if self._count == 1:
            return self.first_path
        # never overwrite an earlier recording of this session
        return self.first_path.with_name(f"{self.first_path.stem}-{self._count}{self.first_path.suffix}")
