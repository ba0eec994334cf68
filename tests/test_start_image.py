"""Starting a rollout from a picture: fitted, encoded as the global sink, followed, recorded and replayed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from envs.procedural.probes import classify
from envs.procedural.world import ProceduralWorld, prompt_for
from envs.world_env import WorldEnv
from envs.wrappers import RecordReplay
from tests.conftest import HEIGHT, WIDTH, tiny_world
from worldsim.config import EngineConfig
from worldsim.image import ImageError, fit_image, read_image
from worldsim.replay import read_replay, replay_blocks


def picture(height: int = 90, width: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_fit_scales_to_cover_and_cuts_the_middle() -> None:
    wide = np.zeros((50, 200, 3), np.uint8)
    wide[:, 75:125] = 255  # a white middle band
    fitted = fit_image(wide, 32, 32)
    assert fitted.shape == (32, 32, 3) and fitted.dtype == np.uint8
    assert fitted.mean() > 200  # the middle of the picture, not a squeezed whole
    assert fit_image(np.full((8, 8), 0.5), 16, 16).shape == (16, 16, 3)  # grey floats in [0, 1]
    with pytest.raises(ImageError, match="must be"):
        fit_image(np.zeros((4, 4, 2)), 8, 8)


def test_a_session_from_a_picture_starts_after_it_with_it_as_the_sink() -> None:
    world = tiny_world(EngineConfig(lead_in_blocks=2))  # a picture replaces the lead-in
    image = picture()
    session = world.session("a meadow", seed=2, start_image=image)
    first = session.step()
    assert first.frames.shape == (12, HEIGHT, WIDTH, 3)  # the picture's own frame was the first
    assert first.positions == (0, 1, 2, 3)  # the picture at 0, the block after it
    assert session.cache.held[0] == [0, 2, 3] and session.latent_frames == 4  # the picture stays as the sink
    assert world.block_video_frames(image=True) == (12, 12)
    again = world.session("a meadow", seed=2, start_image=image).step()
    assert np.array_equal(first.frames, again.frames)
    other = world.session("a meadow", seed=2, start_image=picture(seed=1)).step()
    plain = world.session("a meadow", seed=2).step()
    assert not np.array_equal(first.frames, other.frames) and plain.frames.shape[0] == 12


def test_a_picture_is_recorded_and_replayed_exactly(tiny_bundle: str, tmp_path) -> None:
    env = RecordReplay(WorldEnv(model=tiny_bundle), tmp_path / "run.jsonl")
    path = tmp_path / "start.png"
    cv2.imwrite(str(path), picture(70, 50))
    _, info = env.reset(seed=3, options={"image": str(path)})
    frames = [info["frames"]]
    for action in ("east", "night"):
        frames.append(env.step(action)[4]["frames"])
    env.close()
    replay = read_replay(tmp_path / "run.jsonl")
    stored = replay.header["start_image"]
    assert isinstance(stored, str) and len(stored) > 100
    replayed = [block.frames for block in replay_blocks(replay, env.unwrapped.world)]
    assert all(np.array_equal(a, b) for a, b in zip(frames, replayed, strict=True))
    with pytest.raises(ValueError, match="option 'image' only"):
        env.unwrapped.reset(options={"picture": path})


def test_an_unreadable_picture_is_refused(tmp_path) -> None:
    bad = tmp_path / "not-a-picture.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ImageError, match="not an image file OpenCV can decode"):
        read_image(bad)
    with pytest.raises(ImageError, match="no such image file"):
        read_image(tmp_path / "missing.png")
    from worldsim.cli import main

    assert main(["generate", "--prompt", "a", "--image", str(bad), "--out", str(tmp_path / "v.mp4")]) == 2


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of the blurred brightness of two frames: how much they show the same place."""
    grey = [
        cv2.GaussianBlur(f.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]), (0, 0), 1.5)
        for f in (a, b)
    ]
    x, y = (g - g.mean() for g in grey)
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


@pytest.mark.parametrize(("biome", "condition"), [("tundra", "day"), ("desert", "night")])
def test_the_built_in_world_started_from_a_real_frame_shows_that_place(biome: str, condition: str) -> None:
    import worldsim

    world = worldsim.load("tiny")
    for seed in (3, 4):
        start = ProceduralWorld(seed=seed, biome=biome, condition=condition).render()
        elsewhere = [ProceduralWorld(seed=s, biome=biome, condition=condition).render() for s in (20, 21, 22)]
        session = world.session(prompt_for(biome, condition, "idle"), seed=0, start_image=start)
        frames = np.concatenate([session.step().frames for _ in range(3)])
        assert classify(frames[:4]) == (biome, condition) and classify(frames[-4:]) == (biome, condition)
        here = correlation(frames[0], start)
        assert here > 0.3 and here > max(correlation(frames[0], other) for other in elsewhere) + 0.2
