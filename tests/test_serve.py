"""`worldsim serve` in a real browser (Debian's Chromium, driven by Selenium), and over raw WebSockets.

The server runs the tiny random bundle in a thread of this process; the page is driven as a player
would drive it, and what happened is read from both sides: the recorded replay on the server, the
HUD and screenshots in the page.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import serve
import worldsim
from worldsim.replay import read_replay
from worldsim.scenario import load_scenario
from worldsim.video import read_video

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


class Server:
    """A `worldsim serve` app on 127.0.0.1 (a free port) in a thread with its own event loop."""

    def __init__(self, bundle: str, token: str | None = None) -> None:
        from aiohttp import web

        world = worldsim.load(bundle)
        self.game = serve.Game(world, load_scenario(world.scenario), seed=3)
        self.runner = web.AppRunner(serve.create_app(self.game, token))
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = self.runner.addresses[0][1]
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert started.wait(30)
        self.url = f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def replay(self) -> list[dict]:
        """The events of the session so far, as the page's download gives them."""
        import urllib.request

        with urllib.request.urlopen(self.url + "recording.jsonl", timeout=10) as response:
            lines = response.read().decode().splitlines()
        return [json.loads(line) for line in lines[1:]]


@pytest.fixture
def server(tiny_bundle: str) -> Iterator[Server]:
    running = Server(tiny_bundle)
    yield running
    running.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no Chromium and ChromeDriver here (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,800"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 30.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def text(driver, element: str) -> str:
    return driver.find_element("id", element).text


def shot(driver) -> np.ndarray:
    import cv2

    png = driver.find_element("id", "screen").screenshot_as_png
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


def test_a_player_steers_the_world_from_the_page(server: Server, browser) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.get(server.url)
    frames = lambda: int(browser.find_element("id", "screen").get_attribute("data-frames") or 0)  # noqa: E731
    wait_for(lambda: frames() > 5, what="frames in the page")
    assert "you control" in text(browser, "control")
    first = shot(browser)
    assert first.std() > 1.0  # not a blank canvas

    # hold the key of "east" (right / d): the blocks after the press are generated under it
    browser.find_element("id", "screen").click()
    pressed_at = len(server.replay())
    ActionChains(browser).key_down(Keys.ARROW_RIGHT).perform()
    wait_for(lambda: any(e["action"] == "east" for e in server.replay()[pressed_at:]), what="an east block")
    ActionChains(browser).key_up(Keys.ARROW_RIGHT).perform()
    events = server.replay()
    east = next(i for i, e in enumerate(events) if i >= pressed_at and e["action"] == "east")
    assert east <= pressed_at + 3  # within the blocks already queued ahead, and the next
    assert events[east]["prompt"].endswith("walking east")
    wait_for(lambda: "walking east" in text(browser, "prompt"), what="the HUD's prompt")

    # a typed prompt is a KV Flush; the cut button a RoPE Cut to it
    box = browser.find_element("id", "prompt-text")
    box.send_keys("a snowy tundra, at night, standing still")
    browser.find_element("id", "send-cut").click()
    wait_for(
        lambda: any(e["cut"] and e["prompt"].startswith("a snowy tundra") for e in server.replay()),
        what="the cut",
    )
    wait_for(lambda: text(browser, "cut") != "-", what="the HUD's last cut")
    assert shot(browser).tobytes() != first.tobytes()
    assert text(browser, "latency") != "-" and "ms" in text(browser, "latency")
    assert float(text(browser, "shown")) > 0

    # a second page watches without control, and cannot steer
    browser.switch_to.new_window("tab")
    browser.get(server.url)
    wait_for(lambda: "watching: viewer" in text(browser, "control"), what="the second page's status")
    browser.close()
    browser.switch_to.window(browser.window_handles[0])


def test_bad_messages_get_errors_and_the_session_goes_on(server: Server) -> None:
    import aiohttp

    async def talk() -> list[str]:
        errors = []
        async with aiohttp.ClientSession() as session, session.ws_connect(server.url + "ws") as ws:
            watcher = await session.ws_connect(server.url + "ws")  # a second viewer, not in control
            for message in ("not json", json.dumps([1, 2]), json.dumps({"type": "fly"}),
                            json.dumps({"type": "action", "name": "teleport"}),
                            json.dumps({"type": "prompt", "text": "x" * 600, "cut": False}),
                            json.dumps({"type": "restart", "seed": -4})):  # fmt: skip
                await ws.send_str(message)
            await watcher.send_str(json.dumps({"type": "keydown", "key": "up"}))
            for _ in range(100):  # a flood
                await ws.send_str(json.dumps({"type": "blur"}))
            seen_status = False
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (len(errors) < 7 or not seen_status):
                message = await ws.receive(timeout=10)
                if message.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(message.data)
                    if data["type"] == "error":
                        errors.append(data["message"])
                    seen_status |= data["type"] == "status" and data["block"] >= 0
            watched = await watcher.receive_json(timeout=10)
            while watched["type"] != "error":
                watched = await watcher.receive_json(timeout=10)
            errors.append(watched["message"])
            await watcher.close()
        return errors

    errors = asyncio.run(talk())
    assert "not valid JSON" in errors and "a message is a JSON object with a 'type'" in errors
    assert "unknown message type 'fly'" in errors
    assert any(e.startswith("unknown action 'teleport'") for e in errors)
    assert any("at most 500" in e for e in errors) and any("restart needs 'seed'" in e for e in errors)
    assert any("too many messages" in e for e in errors)
    assert any("you are watching" in e for e in errors)
    blocks = len(server.replay())
    wait_for(lambda: len(server.replay()) > blocks, what="the session going on")


def test_a_token_guards_the_page_the_socket_and_the_downloads(tiny_bundle: str) -> None:
    import urllib.error
    import urllib.request

    running = Server(tiny_bundle, token="s3cret")
    try:
        for path in ("", "ws", "recording.jsonl", "clip.mp4", "scenario"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(running.url + path, timeout=10)
            assert info.value.code == 403
        with urllib.request.urlopen(running.url + "?token=s3cret", timeout=10) as response:
            assert b"<canvas" in response.read()
    finally:
        running.close()


def test_the_last_seconds_download_as_a_video(server: Server, tmp_path: Path) -> None:
    import urllib.request

    wait_for(lambda: len(server.game.clip) >= 32, what="two seconds shown")
    with urllib.request.urlopen(server.url + "clip.mp4?seconds=2", timeout=30) as response:
        (tmp_path / "clip.mp4").write_bytes(response.read())
    frames = read_video(tmp_path / "clip.mp4")
    assert frames.shape[0] == 32 and frames.shape[1:] == (32, 32, 3)


def test_ctrl_c_finishes_the_recording(tiny_bundle: str, tmp_path: Path) -> None:
    record = tmp_path / "served.jsonl"
    process = subprocess.Popen(
        [sys.executable, "serve.py", "--model", tiny_bundle, "--port", "0", "--record", str(record)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: record.is_file() and len(record.read_text().splitlines()) > 3, what="recorded blocks"
        )
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert f"recorded {record}" in out
    assert len(read_replay(record).events) >= 3 and not read_replay(record).truncated
