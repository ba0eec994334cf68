"""Play a world in a window: the keyboard steers, the model generates, frames show at the world's fps.

    python play.py --model tiny
    worldsim play --model path/to/bundle --record walk.jsonl

Two threads share the work. A generator thread owns the session: at each block boundary it waits
until fewer than two blocks are waiting to be shown, asks the controller for the next action (as late
as possible, so the action is fresh), applies it to the prompt, generates the block and queues it. The
main thread runs the window: it pumps events into the keyboard controller and, on each tick of a clock
running at the world's fps, shows the next frame, taking the next block off the queue when the current
one is used up. When generation is slower than real time the window keeps showing the last frame and
stays responsive.

Keys: the scenario's (listed in the window), P pause/resume, R record on/off, K or F12 screenshot,
Esc or Q quit. Window keys win over scenario keys bound to the same key.

A replay is regenerated from block 0, so turning recording on mid-session first writes every block
played so far: each recording is a complete replay of the session up to where it stopped.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from controllers import Controller, KeyboardController
from worldsim.cli import (
    CommandError,
    check_output,
    model_options,
    open_scenario,
    open_world,
    run_command,
    seed_number,
)
from worldsim.image import read_image
from worldsim.live import THREAD_PREFIX, Generated, LiveRollout, Recorder
from worldsim.scenario import Scenario, load_scenario

if TYPE_CHECKING:
    import pygame

    from worldsim.world import World

WINDOW_SIZE = 512  # the default --scale makes the video about this many pixels on its long side
PANEL_WIDTH = 300
PAD = 12
FONT_SIZE = 20

QUIT_KEYS = ("escape", "q")
PAUSE_KEYS = ("p",)
RECORD_KEYS = ("r",)
SCREENSHOT_KEYS = ("k", "f12")
WINDOW_KEYS = (*QUIT_KEYS, *PAUSE_KEYS, *RECORD_KEYS, *SCREENSHOT_KEYS)

BACKGROUND = (12, 12, 16)
PANEL = (28, 30, 38)
TEXT = (225, 225, 230)
DIM = (140, 146, 160)
ACCENT = (120, 200, 255)
CURRENT = (255, 214, 102)
RED = (235, 70, 60)
YELLOW = (250, 200, 60)

FrameCallback = Callable[["PlayState"], None]


@dataclass
class PlayState:
    """What the window shows, kept up to date each tick; an `on_frame` callback receives it."""

    displayed: int = 0  # frames shown so far
    block: int = -1  # index of the block on screen
    action: str = ""  # the action that led to the block on screen
    prompt: str = ""
    cache_frames: int = 0
    last_flush: int | None = None  # block index of the latest KV Flush (a cut is one too)
    last_cut: int | None = None
    shown_fps: float = 0.0
    generated_fps: float = 0.0  # generation speed while working, not throttled by the queue
    paused: bool = False
    stalled: bool = False  # the next block is not ready: the last frame stays up
    recording: Path | None = None
    recordings: list[Path] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)


@dataclass
class Options:
    """The window's settings from the command line."""

    scale: float
    frames: int | None
    screenshot_dir: Path
    screenshot_at: tuple[int, ...]


class Window:
    """The pygame window: shows frames at the world's fps, with a panel of readouts and keys."""

    def __init__(
        self,
        pg: Any,
        world: World,
        scenario: Scenario,
        controller: Controller,
        producer: LiveRollout,
        recorder: Recorder,
        options: Options,
        on_frame: FrameCallback | None = None,
    ) -> None:
        self.pg = pg
        self.world = world
        self.scenario = scenario
        self.controller = controller
        self.keyboard = controller if isinstance(controller, KeyboardController) else None
        self.producer = producer
        self.recorder = recorder
        self.options = options
        self.on_frame = on_frame
        self.fps = world.config.fps
        self.state = PlayState(prompt=scenario.start_prompt)
        self.failure: BaseException | None = None

        self.video_size = (
            max(1, round(world.width * options.scale)),
            max(1, round(world.height * options.scale)),
        )
        self.font = pg.font.Font(None, FONT_SIZE)
        self.bold = pg.font.Font(None, FONT_SIZE + 4)
        self.bold.set_bold(True)
        self.line = self.font.get_linesize() + 2
        self.legend = self._legend()
        height = max(self.video_size[1], self._panel_height())
        self.screen = pg.display.set_mode((self.video_size[0] + PANEL_WIDTH, height))
        pg.display.set_caption(f"worldsim: {world.name}")

        self._frames: np.ndarray | None = None
        self._next = 0
        self._surface: pygame.Surface | None = None  # the frame on screen, scaled
        self._shown: deque[float] = deque(maxlen=max(8, int(self.fps * 2)))
        self._speed: deque[tuple[int, float]] = deque(maxlen=4)
        self._screenshot_wanted = False
        self._screenshots_done: set[int] = set()

    # --- the loop ---

    def run(self) -> int:
        """Show frames until quit or --frames; returns the exit status."""
        clock = self.pg.time.Clock()
        if self.recorder.first_path is not None:
            self._toggle_recording()
        self.producer.start()
        try:
            while True:
                if self.on_frame is not None:
                    self.on_frame(self.state)
                if not self._handle_events():
                    break
                if not self.state.paused:
                    self._advance()
                if self.failure is not None:
                    failure = self.failure
                    print(f"play: generation failed: {type(failure).__name__}: {failure}", file=sys.stderr)
                    return 1
                self._draw()
                self.pg.display.flip()
                self._take_screenshots()
                if self.options.frames is not None and self.state.displayed >= self.options.frames:
                    break
                clock.tick(self.fps)
        finally:
            self.producer.stop()
            path = self.recorder.stop()
            if path is not None:
                self.state.recording = None
                print(f"recorded {path}")
        return 0

    def _handle_events(self) -> bool:
        pg = self.pg
        for event in pg.event.get():
            if event.type == pg.QUIT:
                return False
            if event.type == pg.KEYDOWN:
                name = pg.key.name(event.key).lower()
                if name in QUIT_KEYS:
                    return False
                if name in PAUSE_KEYS:
                    self._toggle_pause()
                elif name in RECORD_KEYS:
                    self._toggle_recording()
                elif name in SCREENSHOT_KEYS:
                    self._screenshot_wanted = True
                elif self.keyboard is not None:
                    self.keyboard.press(name)
            elif event.type == pg.KEYUP and self.keyboard is not None:
                self.keyboard.release(pg.key.name(event.key).lower())
            elif event.type == pg.WINDOWFOCUSLOST and self.keyboard is not None:
                self.keyboard.release_all()  # the releases will go to another window
        return True

    def _advance(self) -> None:
        if self._frames is None or self._next >= len(self._frames):
            try:
                item = self.producer.blocks.get_nowait()
            except queue.Empty:
                self.state.stalled = self._frames is not None
                return
            if isinstance(item, BaseException):
                self.failure = item
                return
            self.producer.taken()
            self._start_block(item)
        assert self._frames is not None
        frame = self._frames[self._next]
        self._next += 1
        height, width = frame.shape[:2]
        image = self.pg.image.frombytes(frame.tobytes(), (width, height), "RGB")
        self._surface = self.pg.transform.scale(image, self.video_size)  # nearest neighbour
        now = time.perf_counter()
        self._shown.append(now)
        state = self.state
        state.displayed += 1
        state.stalled = False
        if len(self._shown) > 1 and now > self._shown[0]:
            state.shown_fps = (len(self._shown) - 1) / (now - self._shown[0])

    def _start_block(self, item: Generated) -> None:
        block = item.block
        self.recorder.add(block, item.action)
        self._frames, self._next = block.frames, 0
        self._speed.append((block.frames.shape[0], item.seconds))
        state = self.state
        state.block, state.action, state.prompt = block.index, item.action, block.prompt
        state.cache_frames = block.cache_frames
        if block.flushed:
            state.last_flush = block.index
        if block.cut:
            state.last_cut = block.index
        seconds = sum(s for _, s in self._speed)
        if seconds > 0:
            state.generated_fps = sum(n for n, _ in self._speed) / seconds

    def _toggle_pause(self) -> None:
        self.state.paused = not self.state.paused
        self.producer.pause(self.state.paused)

    def _toggle_recording(self) -> None:
        if self.recorder.writer is not None:
            print(f"recording stopped: {self.recorder.stop()}")
            self.state.recording = None
            return
        try:
            path = self.recorder.start()
        except OSError as err:
            print(f"play: cannot record: {err}", file=sys.stderr)
            return
        self.state.recording = path
        self.state.recordings.append(path)
        print(f"recording to {path}")

    def _take_screenshots(self) -> None:
        displayed = self.state.displayed
        due = displayed in self.options.screenshot_at and displayed not in self._screenshots_done
        if not (due or self._screenshot_wanted):
            return
        self._screenshot_wanted = False
        self._screenshots_done.add(displayed)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.options.screenshot_dir / f"worldsim-{stamp}-{displayed:06d}.png"
        try:
            self.pg.image.save(self.screen, str(path))
        except (OSError, self.pg.error) as err:
            print(f"play: cannot save a screenshot: {err}", file=sys.stderr)
            return
        self.state.screenshots.append(path)
        print(f"screenshot: {path}")

    # --- drawing ---

    def _legend(self) -> list[tuple[str, str, bool]]:
        """(keys, label, is an action) lines: the scenario's bindings, then the window's keys."""
        held = self.keyboard.held_actions if self.keyboard is not None else frozenset()
        lines = []
        for action in self.scenario.actions:
            keys = [k for k in action.keys if k.lower() not in WINDOW_KEYS]
            if keys:
                label = action.name + ("  (hold)" if action.name in held else "")
                lines.append((", ".join(keys), label, True))
        lines += [
            (", ".join(PAUSE_KEYS), "pause / resume", False),
            (", ".join(RECORD_KEYS), "record on / off", False),
            (", ".join(SCREENSHOT_KEYS), "screenshot", False),
            (", ".join(QUIT_KEYS), "quit", False),
        ]
        return lines

    def _panel_height(self) -> int:
        status_lines = 11  # title, action, three of prompt, block, fps, flush, cut, rec, paused
        return 2 * PAD + (status_lines + 2 + len(self.legend)) * self.line + PAD

    def _draw(self) -> None:
        pg, screen = self.pg, self.screen
        screen.fill(BACKGROUND)
        video_w, video_h = self.video_size
        top = (screen.get_height() - video_h) // 2
        if self._surface is not None:
            screen.blit(self._surface, (0, top))
        else:
            self._text("generating the first block...", PAD, top + PAD, DIM)
        panel = pg.Rect(video_w, 0, PANEL_WIDTH, screen.get_height())
        pg.draw.rect(screen, PANEL, panel)
        self._draw_status(video_w + PAD)

    def _draw_status(self, x: int) -> None:
        state = self.state
        width = PANEL_WIDTH - 2 * PAD
        y = PAD
        y = self._text(f"worldsim  {self.world.name}", x, y, TEXT, self.bold) + 4
        y = self._pair("action", state.action or "-", x, y, CURRENT)
        prompt = self._wrap(state.prompt, width - 70)
        for number, part in enumerate(prompt[:3]):
            y = self._pair("prompt" if number == 0 else "", part, x, y, TEXT)
        block = "-" if state.block < 0 else str(state.block)
        y = self._pair("block", f"{block}    cache {state.cache_frames} frames", x, y, TEXT)
        y = self._pair(
            "fps", f"shown {state.shown_fps:4.1f}   generated {state.generated_fps:5.1f}", x, y, TEXT
        )
        flush = "-" if state.last_flush is None else f"block {state.last_flush}"
        cut = "-" if state.last_cut is None else f"block {state.last_cut}"
        y = self._pair("flush", f"last at {flush}", x, y, TEXT)
        y = self._pair("cut", f"last at {cut}", x, y, TEXT)
        if state.recording is not None:
            self.pg.draw.circle(self.screen, RED, (x + 6, y + self.line // 2 - 1), 6)
            y = self._text(f"REC  {state.recording.name}", x + 18, y, RED)
        else:
            y = self._text("rec off", x, y, DIM)
        if state.paused:
            y = self._text("PAUSED", x, y, YELLOW, self.bold)
        elif state.stalled:
            y = self._text("waiting for the generator", x, y, YELLOW)
        else:
            y += self.line
        y += PAD // 2
        self.pg.draw.line(self.screen, DIM, (x, y), (x + width, y))
        y = self._text("keys", x, y + PAD // 2, DIM)
        for keys, label, is_action in self.legend:
            colour = CURRENT if is_action and label.split()[0] == state.action else TEXT
            self._text(keys, x, y, ACCENT)
            y = self._text(label, x + 90, y, colour)

    def _pair(self, label: str, value: str, x: int, y: int, colour: tuple[int, int, int]) -> int:
        self._text(label, x, y, DIM)
        return self._text(value, x + 70, y, colour)

    def _text(
        self, text: str, x: int, y: int, colour: tuple[int, int, int], font: pygame.font.Font | None = None
    ) -> int:
        """Draw one line of text; returns the y of the next line."""
        font = font or self.font
        self.screen.blit(font.render(text, True, colour), (x, y))
        return y + max(self.line, font.get_linesize())

    def _wrap(self, text: str, width: int) -> list[str]:
        lines: list[str] = []
        for word in text.split():
            if lines and self.font.size(lines[-1] + " " + word)[0] <= width:
                lines[-1] += " " + word
            else:
                lines.append(word)
        return lines or [""]


# --- command line ---


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the play options to a parser."""
    model_options(parser)
    parser.add_argument(
        "--scenario", type=Path, help="scenario file or built-in name (default: the bundle's)"
    )
    parser.add_argument("--seed", type=seed_number, default=0)
    parser.add_argument("--image", type=Path, metavar="FILE", help="start from this picture (PNG, JPEG, ...)")
    parser.add_argument(
        "--record", type=Path, metavar="FILE.jsonl", help="record a replay from the start (R toggles)"
    )
    parser.add_argument(
        "--scale",
        type=float,
        help=f"window scale factor (default: the video about {WINDOW_SIZE} px on its long side)",
    )
    parser.add_argument("--frames", type=int, metavar="N", help="quit after showing N frames")
    parser.add_argument(
        "--screenshot-dir", type=Path, default=Path("."), help="where screenshots go (default: .)"
    )
    parser.add_argument(
        "--screenshot-at",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="save a screenshot when frame N is shown (repeatable)",
    )


def register_cli(commands: argparse._SubParsersAction) -> None:
    """Add `worldsim play` to the command line."""
    parser = commands.add_parser("play", help="play a world in a window with the keyboard")
    add_options(parser)
    parser.set_defaults(run=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    status = run(args)
    _exit_if_busy(status)
    return status


def _exit_if_busy(status: int) -> None:
    """End the process at once if a thread of play is still working (a block being generated)."""
    if any(t.is_alive() and t.name.startswith(THREAD_PREFIX) for t in threading.enumerate()):
        # tearing the interpreter down under a daemon thread inside torch can abort the process;
        # the replay file is already closed and nothing else needs a clean shutdown
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def main(argv: Sequence[str] | None = None, on_frame: FrameCallback | None = None) -> int:
    """Run the play window; `on_frame` is called with the PlayState at the start of every tick."""
    parser = argparse.ArgumentParser(prog="play", description="Play a world in a window.")
    add_options(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # bundles are local folders; never reach a hub
    return run_command("play", lambda parsed: run(parsed, on_frame), args)


def run(args: argparse.Namespace, on_frame: FrameCallback | None = None) -> int:
    """Open the world and play it until the window is closed."""
    pg = _import_pygame()
    _check_args(args)
    if args.scenario is not None:
        load_scenario(args.scenario)  # a bad file fails before the model loads
    image = read_image(args.image) if args.image is not None else None
    world = open_world(args)
    scenario = open_scenario(args.scenario, world)
    shadowed = sorted({k for k in scenario.keymap() if k.lower() in WINDOW_KEYS})
    if shadowed:
        print(f"play: note: the window's own keys {shadowed} override the scenario's", file=sys.stderr)
    if args.record is None:
        # a replay header names the weights by hash: compute it off the UI thread now, so that pressing
        # R later never stalls the window (with --record it is computed before the window opens)
        threading.Thread(target=world.weights_hash, name=THREAD_PREFIX + "weights-hash", daemon=True).start()

    controller = KeyboardController(scenario)
    session = world.session(scenario.start_prompt, seed=args.seed, start_image=image)
    recorder = Recorder(world, session, scenario.source, args.record)
    producer = LiveRollout(session, scenario, controller)
    options = Options(
        scale=args.scale or WINDOW_SIZE / max(world.height, world.width),
        frames=args.frames,
        screenshot_dir=args.screenshot_dir,
        screenshot_at=tuple(args.screenshot_at),
    )

    pg.display.init()
    pg.font.init()
    try:
        window = Window(pg, world, scenario, controller, producer, recorder, options, on_frame)
        return window.run()
    finally:
        pg.quit()


def _import_pygame() -> Any:
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError as err:
        raise CommandError("play needs pygame (pip install pygame)") from err
    return pygame


def _check_args(args: argparse.Namespace) -> None:
    if args.scale is not None and args.scale <= 0:
        raise CommandError("--scale must be positive")
    if args.frames is not None and args.frames < 1:
        raise CommandError("--frames must be at least 1")
    if any(n < 1 for n in args.screenshot_at):
        raise CommandError("--screenshot-at counts shown frames from 1")
    if not args.screenshot_dir.is_dir():
        raise CommandError(f"--screenshot-dir {args.screenshot_dir} is not a folder")
    if args.record is not None:
        check_output(args.record, (".jsonl",), "--record")  # before the window opens


if __name__ == "__main__":
    code = main()
    _exit_if_busy(code)
    sys.exit(code)
