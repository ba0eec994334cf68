"""The play window end to end: headless with injected key events, quitting mid-block, and a real X server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pygame = pytest.importorskip("pygame")

import play  # noqa: E402
from worldsim.cli import main as worldsim_main  # noqa: E402
from worldsim.replay import ReplayError, read_replay  # noqa: E402
from worldsim.session import Session  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def headless(monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    yield
    # a generator left inside a block finishes it in the background; let it, before the next test
    # (and before the interpreter exits under it)
    for thread in threading.enumerate():
        if thread.name.startswith(play.THREAD_PREFIX):
            thread.join(30)


def key(code: int, up: bool = False) -> None:
    pygame.event.post(pygame.event.Event(pygame.KEYUP if up else pygame.KEYDOWN, key=code))


def test_play_records_keys_and_takes_screenshots(headless, tiny_bundle, tmp_path) -> None:
    record = tmp_path / "r.jsonl"
    seen: list[play.PlayState] = []
    pressed: list[int] = []

    def on_frame(state: play.PlayState) -> None:
        if state.displayed >= 1 and not pressed:
            key(pygame.K_UP)  # held for the rest of the session
            pressed.append(state.displayed)
        if state.displayed >= 20 and not state.screenshots:
            key(pygame.K_k)
        seen.append(state)

    argv = ["--model", tiny_bundle, "--frames", "40", "--record", str(record)]
    status = play.main([*argv, "--screenshot-dir", str(tmp_path)], on_frame=on_frame)

    assert status == 0
    state = seen[-1]
    assert state.displayed == 40 and state.block == 3
    assert state.recordings == [record] and state.recording is None  # closed at the end
    replay = read_replay(record)
    assert replay.header["bundle"] == "test-tiny" and replay.header["seed"] == 0
    assert replay.header["start_prompt"] == "a green meadow, bright daylight, standing still"
    assert replay.header["scenario"].endswith("scenario.toml") and not replay.truncated
    actions = [event.action for event in replay.events]
    assert len(actions) == 4 and actions[0] == "idle"  # up came after block 0 was on screen
    assert "north" in actions and actions[-1] == "north"
    assert replay.events[-1].prompt == "a green meadow, bright daylight, walking north"
    assert state.action == "north" and state.last_flush is not None and state.last_cut is None

    pngs = sorted(tmp_path.glob("worldsim-*.png"))
    assert len(pngs) == 1 and state.screenshots == pngs
    image = pygame.surfarray.array3d(pygame.image.load(str(pngs[0])))
    assert image.shape == (512 + play.PANEL_WIDTH, 512, 3)
    assert image.std() > 10


def test_pause_holds_playback_and_recording_can_start_mid_session(
    headless, tiny_bundle, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # recordings without --record are named in the current folder
    log: list[tuple[int, bool]] = []
    ticks = {"paused": 0}

    def on_frame(state: play.PlayState) -> None:
        log.append((state.displayed, state.paused))
        if state.displayed == 5 and not state.paused and ticks["paused"] == 0:
            key(pygame.K_p)
        elif state.paused:
            ticks["paused"] += 1
            if ticks["paused"] == 10:
                key(pygame.K_p)
        if state.displayed == 14 and state.recording is None and not state.recordings:
            key(pygame.K_r)  # block 1 is on screen: the recording must still start at block 0
        if state.displayed == 28 and state.recording is not None:
            key(pygame.K_r)

    assert play.main(["--model", tiny_bundle, "--frames", "40", "--seed", "5"], on_frame=on_frame) == 0
    paused = [shown for shown, is_paused in log if is_paused]
    assert len(paused) >= 10 and set(paused) == {5}  # no frame advanced while paused
    files = sorted(tmp_path.glob("worldsim-*.jsonl"))
    assert len(files) == 1
    replay = read_replay(files[0])
    assert replay.seed == 5
    assert [event.block for event in replay.events] == [0, 1, 2]  # stopped while block 2 was on screen


def test_quit_mid_block_returns_promptly(headless, tiny_bundle, tmp_path, monkeypatch) -> None:
    entered, release = threading.Event(), threading.Event()
    real_step = Session.step

    def slow_step(self, *args, **kwargs):
        entered.set()
        release.wait(60)  # a block that takes a minute
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Session, "step", slow_step)
    posted: list[float] = []

    def on_frame(state: play.PlayState) -> None:
        if not posted and entered.wait(10):
            pygame.event.post(pygame.event.Event(pygame.QUIT))
            posted.append(time.perf_counter())

    record = tmp_path / "quit.jsonl"
    try:
        status = play.main(["--model", tiny_bundle, "--record", str(record)], on_frame=on_frame)
        returned = time.perf_counter()
    finally:
        release.set()
    assert status == 0 and posted
    assert returned - posted[0] < 3.0
    lines = record.read_text().splitlines()  # the header is complete and the file closed
    assert len(lines) == 1 and json.loads(lines[0])["format"] == "worldsim-replay"
    with pytest.raises(ReplayError, match="holds no blocks"):
        read_replay(record)


def test_slow_generation_keeps_the_window_responsive(headless, tiny_bundle, monkeypatch) -> None:
    real_step = Session.step

    def slow_step(self, *args, **kwargs):
        if self.block_index > 0:
            time.sleep(1.2)  # slower than the 0.75 s a block lasts on screen
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Session, "step", slow_step)
    ticks: list[tuple[int, bool]] = []
    status = play.main(
        ["--model", tiny_bundle, "--frames", "22"],
        on_frame=lambda state: ticks.append((state.displayed, state.stalled)),
    )
    assert status == 0
    # after block 0's 9 frames the loop keeps ticking on the last frame while block 1 is generated
    waiting = [shown for shown, stalled in ticks if stalled]
    assert len(waiting) >= 5 and set(waiting) <= {9, 21}


def test_a_generation_failure_is_reported(headless, tiny_bundle, monkeypatch, capsys) -> None:
    def broken_step(self, *args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Session, "step", broken_step)
    assert play.main(["--model", tiny_bundle, "--frames", "5"]) == 1
    assert "generation failed: RuntimeError: out of memory" in capsys.readouterr().err


def test_play_errors(headless, tmp_path, capsys) -> None:
    assert play.main(["--model", str(tmp_path / "nope")]) == 2
    assert "no bundle named" in capsys.readouterr().err
    assert play.main(["--model", str(tmp_path), "--scale", "0"]) == 2
    assert "--scale must be positive" in capsys.readouterr().err
    assert play.main(["--record", str(tmp_path / "no" / "r.jsonl")]) == 2
    assert "--record does not exist" in capsys.readouterr().err


def test_worldsim_play_is_registered(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        worldsim_main(["play", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--screenshot-at" in out and "--record" in out


def _free_display() -> int:
    for number in range(90, 200):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            return number
    raise RuntimeError("no free X display number")


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed")
def test_play_in_a_real_x_server(tiny_bundle, tmp_path) -> None:
    number = _free_display()
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            assert server.poll() is None, "Xvfb exited at start"
            assert time.monotonic() < deadline, "Xvfb did not start"
            time.sleep(0.1)
        env = {
            **os.environ,
            "DISPLAY": f":{number}",
            "SDL_VIDEODRIVER": "x11",
            "SDL_AUDIODRIVER": "dummy",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        argv = ["--model", tiny_bundle, "--frames", "60", "--screenshot-dir", str(tmp_path)]
        result = subprocess.run(
            [sys.executable, "play.py", *argv, "--screenshot-at", "40"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
    assert result.returncode == 0, result.stderr
    pngs = list(tmp_path.glob("worldsim-*-000040.png"))
    assert len(pngs) == 1 and f"screenshot: {pngs[0]}" in result.stdout
    image = pygame.surfarray.array3d(pygame.image.load(str(pngs[0])))
    assert image.shape[:2] == (512 + play.PANEL_WIDTH, 512)
    assert image.std() > 20
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # the video's pixels and the anti-aliased text of the panel
    panel = image[512:]
    assert (panel == np.array(play.PANEL)).all(axis=-1).mean() > 0.5  # the panel is drawn...
    assert (panel != np.array(play.PANEL)).any(axis=-1).mean() > 0.02  # ...with text on it
