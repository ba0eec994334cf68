"""Play a world in a browser: `worldsim serve`, for the GPU box with no display.

    worldsim serve                                  # the built-in world, http://127.0.0.1:8000
    worldsim serve --model wan_models/Wan2.1-T2V-1.3B --checkpoint self_forcing_dmd.pt \\
        --scenario wan_walk --device cuda --dtype bfloat16 --host 0.0.0.0 --token SECRET

One session runs on the model, exactly as in the window: a ``worldsim.live.LiveRollout`` generates up
to two blocks ahead in its own thread, the scenario's keymap goes through the same
``controllers.KeyboardController`` (held movement repeats, the release action), and a prompt typed
in the page is a KV Flush or a RoPE Cut. A playback task takes the blocks at the world's fps and
sends each frame, as JPEG (OpenCV), to every open page over its WebSocket; a page that cannot keep
up loses frames (counted and shown), never slowing the others or the generator. Many pages may
watch; one controls, and may hand control over. The page itself is plain HTML, CSS and JavaScript
shipped in ``worldsim/web``; nothing is fetched from the internet.

Messages from a page are JSON: ``keydown`` / ``keyup`` (``key``: a pygame key name), ``prompt``
(``text``, ``cut``), ``action`` (``name``: a scenario action, e.g. a cut button), ``pause``,
``record``, ``restart`` (``seed``), ``image`` (``data``: a data URL), ``take_control``,
``give_control`` (``to``: a viewer id), ``blur``. Anything else, malformed JSON, an unknown action,
a prompt over ``MAX_PROMPT`` characters or more than ``RATE`` messages a second is answered with an
``error`` message to that page, and logged; the session goes on.

aiohttp serves it: one mature asyncio library for the HTTP routes and the WebSockets together, with
no separate ASGI server to run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import queue
import secrets
import struct
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from controllers import KeyboardController
from worldsim.cli import (
    CommandError,
    model_options,
    open_scenario,
    open_world,
    run_command,
    seed_number,
)
from worldsim.live import Generated, LiveRollout, Recorder

if TYPE_CHECKING:
    from aiohttp import web

    from worldsim.scenario import Scenario
    from worldsim.world import World

STATIC = Path(__file__).resolve().parent / "worldsim" / "web"
MAX_PROMPT = 500  # characters of a typed prompt
MAX_MESSAGE = 8 * 2**20  # bytes of one message from a page (a picture fits)
RATE, BURST = 30.0, 60  # messages a second a page may send, and how many at once
SEND_QUEUE = 4  # frames waiting for a page; more, and the page loses frames
CLIP_SECONDS = 60  # the longest clip a page can download
WINDOW_KEYS = {"p": "pause", "r": "record"}  # the page's own keys, as the window's P and R
STATUS_SECONDS = 0.25  # how often each page's HUD is refreshed

log = logging.getLogger("worldsim.serve")


@dataclass
class Viewer:
    """One open page: its socket, its frames waiting to be sent, its allowance of messages."""

    id: int
    socket: web.WebSocketResponse
    frames: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(SEND_QUEUE))
    dropped: int = 0
    allowance: float = BURST
    checked: float = field(default_factory=time.monotonic)

    def allowed(self) -> bool:
        """Whether one more message fits the rate limit (a token bucket)."""
        now = time.monotonic()
        self.allowance = min(BURST, self.allowance + (now - self.checked) * RATE)
        self.checked = now
        if self.allowance < 1:
            return False
        self.allowance -= 1
        return True


@dataclass
class Run:
    """One session of a game: its keys, its generator, its record; starting over makes a new one."""

    keyboard: KeyboardController
    recorder: Recorder
    rollout: LiveRollout
    seed: int
    frames: np.ndarray | None = None  # the block being shown
    next_frame: int = 0
    block: Generated | None = None


class Game:
    """One live session of a world, its viewers, and the playback that paces its frames."""

    def __init__(
        self,
        world: World,
        scenario: Scenario,
        seed: int = 0,
        quality: int = 85,
        record: Path | None = None,
        image: np.ndarray | None = None,
    ) -> None:
        self.world, self.scenario, self.quality = world, scenario, quality
        self.fps = float(world.config.fps)
        self.viewers: dict[int, Viewer] = {}
        self.controller: int | None = None
        self.next_id = 1
        self.paused = False
        self.record_path = record
        self.clip: deque[bytes] = deque(maxlen=int(CLIP_SECONDS * self.fps))  # JPEG frames of the last minute
        self.shown: deque[float] = deque(maxlen=32)
        self.speed: deque[tuple[int, float]] = deque(maxlen=4)
        self.state: dict[str, Any] = {}
        self.failure: str = ""
        self.run = self._new_run(seed, image)
        if record is not None:
            self.toggle_record()
        self.run.rollout.start()

    # --- the session ---

    def _new_run(self, seed: int, image: np.ndarray | None) -> Run:
        keyboard = KeyboardController(self.scenario)
        session = self.world.session(self.scenario.start_prompt, seed=seed, start_image=image)
        recorder = Recorder(self.world, session, self.scenario.source, self.record_path)
        self.state = {"block": -1, "action": "", "prompt": self.scenario.start_prompt, "cache_frames": 0,
                      "last_flush": None, "last_cut": None, "generated_fps": 0.0}  # fmt: skip
        return Run(keyboard, recorder, LiveRollout(session, self.scenario, keyboard), seed)

    def start(self, seed: int, image: np.ndarray | None = None) -> None:
        """Start over with a fresh session, from a picture if given; a recording goes on in a new file."""
        old = self.run
        old.rollout.stop()
        recording = old.recorder.writer is not None
        old.recorder.stop()
        self.run = self._new_run(seed, image)
        if recording:
            self.toggle_record()
        self.run.rollout.pause(self.paused)
        self.run.rollout.start()

    @property
    def keyboard(self) -> KeyboardController:
        """The keys of the current session."""
        return self.run.keyboard

    def stop(self) -> None:
        """End generation and finish the recording (Ctrl-C, or the server closing)."""
        self.run.rollout.stop()
        path = self.run.recorder.stop()
        if path is not None:
            print(f"recorded {path}")

    def toggle_record(self) -> str:
        """Start or stop writing a replay file (from block 0, as the window does)."""
        recorder = self.run.recorder
        if recorder.writer is not None:
            return f"recording stopped: {recorder.stop()}"
        try:
            return f"recording to {recorder.start()}"
        except OSError as err:
            return f"cannot record: {err}"

    # --- playback ---

    def tick(self) -> bytes | None:
        """The next frame to show, as JPEG with its header, or None while waiting (or paused)."""
        from worldsim.image import encode_jpeg

        run = self.run
        if self.paused:
            return None
        if run.frames is None or run.next_frame >= len(run.frames):
            try:
                item = run.rollout.blocks.get_nowait()
            except queue.Empty:
                return None
            if isinstance(item, BaseException):
                self.failure = f"generation failed: {type(item).__name__}: {item}"
                log.error(self.failure)
                return None
            run.rollout.taken()
            self._take(item)
        assert run.frames is not None and run.block is not None
        frame = run.frames[run.next_frame]
        run.next_frame += 1
        self.shown.append(time.perf_counter())
        jpeg = encode_jpeg(frame, self.quality)
        self.clip.append(jpeg)
        header = {"block": run.block.block.index, "frame": run.next_frame - 1, "inputs": run.block.inputs}
        data = json.dumps(header).encode()
        return struct.pack(">I", len(data)) + data + jpeg

    def _take(self, item: Generated) -> None:
        block = item.block
        self.run.recorder.add(block, item.action)
        self.run.frames, self.run.next_frame, self.run.block = block.frames, 0, item
        self.speed.append((block.frames.shape[0], item.seconds))
        seconds = sum(s for _, s in self.speed)
        self.state |= {
            "block": block.index,
            "action": item.action,
            "prompt": block.prompt,
            "cache_frames": block.cache_frames,
            "generated_fps": sum(n for n, _ in self.speed) / seconds if seconds > 0 else 0.0,
        }
        if block.flushed:
            self.state["last_flush"] = block.index
        if block.cut:
            self.state["last_cut"] = block.index

    def status(self, viewer: Viewer) -> dict[str, Any]:
        """What one page's HUD shows."""
        shown = self.shown
        fps = (len(shown) - 1) / (shown[-1] - shown[0]) if len(shown) > 1 and shown[-1] > shown[0] else 0.0
        return {
            "type": "status",
            **self.state,
            "shown_fps": fps,
            "paused": self.paused,
            "recording": None if self.run.recorder.writer is None else self.run.recorder.writer.path.name,
            "you": viewer.id,
            "controller": self.controller,
            "viewers": sorted(self.viewers),
            "dropped": viewer.dropped,
            "seed": self.run.seed,
            "failure": self.failure,
        }

    # --- messages ---

    def handle(self, viewer: Viewer, message: dict[str, Any]) -> str | None:
        """Apply one message from a page; returns an error for it, or None."""
        kind = message.get("type")
        if kind in ("take_control", "give_control"):
            return self._control(viewer, message)
        if viewer.id != self.controller:
            return f"you are watching: viewer {self.controller} controls this session"
        rollout = self.run.rollout
        if kind in ("keydown", "keyup"):
            key = message.get("key")
            if not isinstance(key, str) or not 0 < len(key) <= 20:
                return "a key event needs 'key', a key name"
            key = key.lower()
            if kind == "keydown" and key in WINDOW_KEYS:
                return self.handle(viewer, {"type": WINDOW_KEYS[key]})
            rollout.inputs += 1
            if kind == "keydown":
                self.keyboard.press(key)
            else:
                self.keyboard.release(key)
            return None
        if kind == "blur":
            self.keyboard.release_all()
            return None
        if kind == "action":
            name = message.get("name")
            if not isinstance(name, str) or name not in {a.name for a in self.scenario.actions}:
                return f"unknown action {name!r}; known: {', '.join(a.name for a in self.scenario.actions)}"
            rollout.inputs += 1
            self.keyboard.queue(name)
            return None
        if kind == "prompt":
            text, cut = message.get("text"), message.get("cut", False)
            if not isinstance(text, str) or not text.strip() or not isinstance(cut, bool):
                return "a prompt needs 'text' (not empty) and 'cut' (true or false)"
            if len(text) > MAX_PROMPT:
                return f"the prompt is {len(text)} characters; at most {MAX_PROMPT}"
            rollout.inputs += 1
            rollout.follow_text(" ".join(text.split()), cut)
            return None
        if kind == "pause":
            self.paused = not self.paused
            rollout.pause(self.paused)
            return None
        if kind == "record":
            log.info(self.toggle_record())
            return None
        if kind == "restart":
            seed = message.get("seed", self.run.seed)
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
                return "restart needs 'seed', a whole number from 0 to 2**63 - 1"
            self.start(seed)
            return None
        if kind == "image":
            return self._start_from(message.get("data"))
        return f"unknown message type {kind!r}"

    def _start_from(self, data: Any) -> str | None:
        import cv2

        from worldsim.image import ImageError

        if not isinstance(data, str) or "," not in data:
            return "an image message needs 'data', a data URL of a picture"
        try:
            raw = base64.b64decode(data.split(",", 1)[1], validate=True)
        except ValueError:
            return "the picture is not valid base64"
        image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR) if raw else None
        if image is None:
            return "the picture cannot be read (PNG or JPEG)"
        try:
            self.start(self.run.seed, cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        except (ImageError, ValueError) as err:
            return str(err)
        return None

    def _control(self, viewer: Viewer, message: dict[str, Any]) -> str | None:
        if message["type"] == "take_control":
            if self.controller not in (None, viewer.id):
                return f"viewer {self.controller} controls this session; ask them to hand it over"
            self.controller = viewer.id
            return None
        if viewer.id != self.controller:
            return "only the viewer in control can hand it over"
        to = message.get("to")
        if to not in self.viewers:
            return f"no viewer {to!r} is watching"
        self.keyboard.release_all()
        self.controller = to
        return None

    def join(self, socket: web.WebSocketResponse) -> Viewer:
        """A page opened: a viewer, in control if nobody is."""
        viewer = Viewer(self.next_id, socket)
        self.next_id += 1
        self.viewers[viewer.id] = viewer
        if self.controller is None:
            self.controller = viewer.id
        return viewer

    def leave(self, viewer: Viewer) -> None:
        """A page closed: its frames are dropped; control passes to the longest-watching viewer."""
        self.viewers.pop(viewer.id, None)
        if self.controller == viewer.id:
            self.keyboard.release_all()
            self.controller = min(self.viewers) if self.viewers else None

    # --- downloads ---

    def replay_file(self) -> Path:
        """A replay of every block played so far, written to a temporary file."""
        from worldsim.replay import ReplayWriter

        path = Path(tempfile.mkdtemp(prefix="worldsim-")) / "session.jsonl"
        writer = ReplayWriter(path, self.world, self.run.recorder.session, scenario=self.scenario.source)
        for event in self.run.recorder.events():
            writer.write_event(event)
        writer.close()
        return path

    def clip_file(self, seconds: float) -> Path:
        """An MP4 of the last `seconds` seconds shown."""
        import cv2

        from worldsim.video import VideoWriter

        count = max(1, min(len(self.clip), round(seconds * self.fps)))
        frames = list(self.clip)[-count:]
        path = Path(tempfile.mkdtemp(prefix="worldsim-")) / "clip.mp4"
        with VideoWriter(path, self.fps) as writer:
            for jpeg in frames:
                bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                if bgr is not None:
                    writer.write(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[None])
        return path


# ---------------------------------------------------------------------------------------------
# The web application
# ---------------------------------------------------------------------------------------------


def create_app(game: Game, token: str | None = None) -> web.Application:
    """The routes: the page, its files, the WebSocket, and the downloads (each checks `token` if set)."""
    from aiohttp import WSMsgType, web

    def authorised(request: web.Request) -> None:
        if token is not None and not secrets.compare_digest(request.query.get("token", ""), token):
            raise web.HTTPForbidden(text="a valid ?token= is needed")

    async def page(request: web.Request) -> web.StreamResponse:
        authorised(request)
        return web.FileResponse(STATIC / "index.html")

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ("app.js", "style.css"):
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC / name)

    async def scenario(request: web.Request) -> web.Response:
        authorised(request)
        actions = [
            {"name": a.name, "kind": a.kind, "keys": list(a.keys), "text": a.text}
            for a in game.scenario.actions
        ]
        held = sorted(game.keyboard.held_actions)
        world = game.world
        info = {"name": world.name, "fps": game.fps, "width": world.width, "height": world.height,
                "actions": actions, "held": held, "window_keys": WINDOW_KEYS, "max_prompt": MAX_PROMPT,
                "clip_seconds": CLIP_SECONDS}  # fmt: skip
        return web.json_response(info)

    async def recording(request: web.Request) -> web.StreamResponse:
        authorised(request)
        path = game.replay_file()
        return web.FileResponse(path, headers={"Content-Disposition": f"attachment; filename={path.name}"})

    async def clip(request: web.Request) -> web.StreamResponse:
        authorised(request)
        try:
            seconds = float(request.query.get("seconds", "10"))
        except ValueError:
            raise web.HTTPBadRequest(text="seconds must be a number") from None
        if not game.clip or not 0 < seconds <= CLIP_SECONDS:
            raise web.HTTPBadRequest(text=f"seconds must be in (0, {CLIP_SECONDS}], after the first frame")
        path = await asyncio.get_running_loop().run_in_executor(None, game.clip_file, seconds)
        return web.FileResponse(path, headers={"Content-Disposition": f"attachment; filename={path.name}"})

    async def socket(request: web.Request) -> web.WebSocketResponse:
        authorised(request)
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=20)
        await ws.prepare(request)
        viewer = game.join(ws)
        sender = asyncio.create_task(send_frames(viewer))
        log.info("viewer %d joined from %s", viewer.id, request.remote)
        try:
            await ws.send_json(game.status(viewer))
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                error = receive(viewer, message.data)
                if error is not None:
                    log.warning("viewer %d: %s", viewer.id, error)
                    await ws.send_json({"type": "error", "message": error})
                elif viewer.id in game.viewers:
                    await ws.send_json({"type": "ack", "inputs": game.run.rollout.inputs})
        finally:
            sender.cancel()
            game.leave(viewer)
            log.info("viewer %d left", viewer.id)
        return ws

    def receive(viewer: Viewer, data: str) -> str | None:
        if not viewer.allowed():
            return f"too many messages: at most {RATE:g} a second"
        try:
            message = json.loads(data)
        except json.JSONDecodeError:
            return "not valid JSON"
        if not isinstance(message, dict):
            return "a message is a JSON object with a 'type'"
        return game.handle(viewer, message)

    async def send_frames(viewer: Viewer) -> None:
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
            while True:
                data = await viewer.frames.get()
                await viewer.socket.send_bytes(data)

    async def playback(app: web.Application) -> Any:
        async def run() -> None:
            period = 1.0 / game.fps
            next_time = last_status = time.perf_counter()
            while True:
                frame = game.tick()
                status_due = time.perf_counter() - last_status >= STATUS_SECONDS
                for viewer in list(game.viewers.values()):
                    if frame is not None:
                        try:
                            viewer.frames.put_nowait(frame)
                        except asyncio.QueueFull:
                            viewer.dropped += 1  # this page is slow: it loses a frame, nobody waits
                    if status_due and not viewer.socket.closed:
                        with contextlib.suppress(ConnectionResetError, RuntimeError):
                            await viewer.socket.send_json(game.status(viewer))
                if status_due:
                    last_status = time.perf_counter()
                next_time += period
                await asyncio.sleep(max(0.0, next_time - time.perf_counter()))
                if time.perf_counter() - next_time > 1.0:
                    next_time = time.perf_counter()  # after a stall, do not rush to catch up

        task = asyncio.create_task(run())
        yield
        task.cancel()
        game.stop()

    async def close_sockets(app: web.Application) -> None:
        # before the server waits for its handlers: an open page's handler runs until its socket closes
        for viewer in list(game.viewers.values()):
            await viewer.socket.close(message=b"the server is shutting down")

    app = web.Application(client_max_size=MAX_MESSAGE)
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/scenario", scenario)
    app.router.add_get("/ws", socket)
    app.router.add_get("/recording.jsonl", recording)
    app.router.add_get("/clip.mp4", clip)
    app.cleanup_ctx.append(playback)
    app.on_shutdown.append(close_sockets)
    return app


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def register_cli(commands: argparse._SubParsersAction) -> None:
    """Add `worldsim serve` to the command line."""
    parser = commands.add_parser("serve", help="play a world in a browser (for a GPU box with no display)")
    model_options(parser)
    parser.add_argument("--scenario", help="scenario file or built-in name (default: the bundle's)")
    parser.add_argument("--seed", type=seed_number, default=0)
    parser.add_argument("--image", type=Path, metavar="FILE", help="start from this picture")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument(
        "--token", help="a secret every page and download must carry; made up and printed for a public --host"
    )
    parser.add_argument(
        "--quality", type=int, default=85, help="JPEG quality of the frames, 1-100 (default: 85)"
    )
    parser.add_argument("--record", type=Path, metavar="FILE.jsonl", help="record a replay from the start")
    parser.set_defaults(run=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    from aiohttp import web

    from worldsim.cli import check_output
    from worldsim.image import read_image
    from worldsim.scenario import load_scenario

    if not 1 <= args.quality <= 100:
        raise CommandError("--quality must be from 1 to 100")
    if not 0 <= args.port < 65536:
        raise CommandError("--port must be from 0 to 65535")
    token = args.token
    if token is None and not _loopback(args.host):
        token = secrets.token_urlsafe(16)
    if args.record is not None:
        check_output(args.record, (".jsonl",), "--record")
    if args.scenario is not None:
        load_scenario(args.scenario)  # a bad file fails before the model loads
    image = read_image(args.image) if args.image is not None else None
    world = open_world(args)
    game = Game(world, open_scenario(args.scenario, world), args.seed, args.quality, args.record, image)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"worldsim serve: http://{shown}:{args.port}/" + (f"?token={token}" if token else ""), flush=True)
    web.run_app(create_app(game, token), host=args.host, port=args.port, print=None, handle_signals=True)
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Run the server from `python serve.py`."""
    parser = argparse.ArgumentParser(prog="serve", description="Play a world in a browser.")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(argv or [])])
    return run_command("serve", args.run, args)


if __name__ == "__main__":
    raise SystemExit(main(__import__("sys").argv[1:]))
