"""The procedural ground-truth world, its prompts, the scenario file and the probes that measure frames."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

from envs.procedural.probes import (
    biome_of,
    color_features,
    condition_of,
    frame_quality,
    motion_direction,
    phase_correlation,
    reference_frames,
)
from envs.procedural.world import (
    ACTION_TEXT,
    ACTIONS,
    BIOME_TEXT,
    BIOMES,
    CONDITION_TEXT,
    CONDITIONS,
    MOVES,
    PROMPT_TEMPLATE,
    SCENARIO_PATH,
    ProceduralWorld,
    WorldConfig,
    WorldState,
    apply_condition,
    parse_prompt,
    prompt_for,
    sprite_box,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

CONFIG = WorldConfig()
SPEED = CONFIG.speed


def box_blur(frames: np.ndarray, radius: int = 1) -> np.ndarray:
    acc = np.zeros(frames.shape, np.float32)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            acc += np.roll(frames.astype(np.float32), (dy, dx), axis=(-3, -2))
    return (acc / (2 * radius + 1) ** 2).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# The world


def test_render_shape_and_state():
    world = ProceduralWorld(CONFIG, seed=3, biome="desert", condition="fog", x=10, y=-7)
    frame = world.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert world.state == WorldState(10, -7, "desert", "fog", 3)
    frames = world.rollout(["north", "east", "east", "idle"])
    assert frames.shape == (4, 64, 64, 3) and frames.dtype == np.uint8
    assert world.state == WorldState(10 + 2 * SPEED, -7 - SPEED, "desert", "fog", 3)
    np.testing.assert_array_equal(frames[-1], world.render())


def test_same_seed_same_frames_and_different_seed_differs():
    actions = ["north"] * 5 + ["east"] * 7 + ["idle", "south", "west"]
    first = ProceduralWorld(CONFIG, seed=11, biome="tundra").rollout(actions)
    again = ProceduralWorld(CONFIG, seed=11, biome="tundra").rollout(actions)
    other = ProceduralWorld(CONFIG, seed=12, biome="tundra").rollout(actions)
    np.testing.assert_array_equal(first, again)
    assert np.mean(first != other) > 0.3


def test_teleport_is_deterministic_by_seed():
    a, b = ProceduralWorld(CONFIG, seed=5), ProceduralWorld(CONFIG, seed=5)
    for biome in ("desert", "tundra", "meadow"):
        a.teleport(biome)
        b.teleport(biome)
        assert a.state == b.state and a.state.biome == biome
        np.testing.assert_array_equal(a.render(), b.render())
    a.teleport("desert", x=40, y=-3)
    assert (a.state.x, a.state.y, a.state.biome) == (40, -3, "desert")


def test_revisiting_a_place_shows_the_same_pixels():
    world = ProceduralWorld(CONFIG, seed=2, biome="meadow", x=-1000, y=333)
    start = world.render()
    world.rollout(["east"] * 25 + ["north"] * 40 + ["west"] * 25 + ["south"] * 40)
    assert world.state.x == -1000 and world.state.y == 333
    np.testing.assert_array_equal(world.render(), start)
    # Leaving the biome and coming back to the same coordinates also restores the place.
    world.teleport("desert")
    world.teleport("meadow", x=-1000, y=333)
    np.testing.assert_array_equal(world.render(), start)


@pytest.mark.parametrize("action", ["north", "south", "east", "west"])
@pytest.mark.parametrize("frames", [1, 5])
def test_walking_shifts_content_by_exactly_speed_pixels(action, frames):
    world = ProceduralWorld(CONFIG, seed=9, biome="desert", x=77, y=-130)
    before = world.render()
    after = world.rollout([action] * frames)[-1]
    dx, dy = MOVES[action]
    shift_x, shift_y = dx * SPEED * frames, dy * SPEED * frames
    # The camera moved by (shift_x, shift_y), so after[y, x] shows what before[y + shift_y, x + shift_x] did.
    size = CONFIG.size
    rows = np.arange(max(0, -shift_y), min(size, size - shift_y))
    cols = np.arange(max(0, -shift_x), min(size, size - shift_x))
    top, left, bottom, right = sprite_box(size)
    keep_rows = rows[
        ((rows < top) | (rows >= bottom)) & ((rows + shift_y < top) | (rows + shift_y >= bottom))
    ]
    keep_cols = cols[
        ((cols < left) | (cols >= right)) & ((cols + shift_x < left) | (cols + shift_x >= right))
    ]
    assert len(keep_rows) > 40 and len(keep_cols) > 40
    np.testing.assert_array_equal(
        after[np.ix_(keep_rows, keep_cols)], before[np.ix_(keep_rows + shift_y, keep_cols + shift_x)]
    )
    assert not np.array_equal(after, before)


@pytest.mark.parametrize("action", ["east", "idle"])
def test_history_is_the_walk_that_arrives_here_and_moves_nothing(action):
    world = ProceduralWorld(CONFIG, seed=4, biome="tundra", condition="fog", x=310, y=-52)
    dx, dy = MOVES[action]
    past = world.history(action, 6)
    assert past.shape == (6, CONFIG.size, CONFIG.size, 3)
    assert world.state == WorldState(310, -52, "tundra", "fog", 4)
    np.testing.assert_array_equal(past[-1], world.render())
    # the same walk played forward from where it starts shows the same frames
    walker = ProceduralWorld(CONFIG, seed=4, biome="tundra", condition="fog")
    walker.teleport("tundra", x=310 - 5 * dx * SPEED, y=-52 - 5 * dy * SPEED)
    np.testing.assert_array_equal(np.stack([walker.render(), *walker.rollout([action] * 5)]), past)


def test_idle_does_not_move_and_player_is_centred():
    world = ProceduralWorld(CONFIG, seed=1, biome="tundra")
    frames = world.rollout(["idle"] * 3)
    assert (frames == frames[0]).all()
    moved = world.rollout(["east"] * 8)
    top, left, bottom, right = sprite_box(CONFIG.size)
    # The sprite's outline and body stay put while the ground under it moves.
    sprite = moved[:, top:bottom, left:right]
    assert (sprite[:, 1:5, 1:5] == sprite[0, 1:5, 1:5]).all()
    assert sprite[0, 3, 2, 0] > 150 and sprite[0, 3, 2, 2] < 80  # red body


def test_conditions_are_the_documented_affine():
    for biome in BIOMES:
        world = ProceduralWorld(CONFIG, seed=4, biome=biome, x=50, y=50)
        day = world.render()
        for condition in CONDITIONS:
            world.set_condition(condition)
            np.testing.assert_array_equal(world.render(), apply_condition(day, condition))
        world.set_condition("day")
    day = reference_frames("meadow", "day", 20, seed=3).astype(np.float64)
    night = reference_frames("meadow", "night", 20, seed=3).astype(np.float64)
    fog = reference_frames("meadow", "fog", 20, seed=3).astype(np.float64)
    brightness = night.mean() / day.mean()
    assert 0.3 < brightness < 0.5
    assert night[..., 2].mean() > night[..., 0].mean()  # blue tint
    assert 0.3 < fog.std(axis=(1, 2)).mean() / day.std(axis=(1, 2)).mean() < 0.7  # lower contrast
    assert night.std(axis=(1, 2)).mean() > 5  # still textured


def test_objects_cover_about_a_fifth_of_tiles():
    world = ProceduralWorld(CONFIG, seed=8)
    tx, ty = np.meshgrid(np.arange(-100, 100), np.arange(-100, 100))
    for biome in BIOMES:
        variants = world.tile_variants(tx, ty, biome)
        assert 0.15 < float(np.mean(variants >= 6)) < 0.25
        assert len(np.unique(variants)) == 10


def test_unknown_names_raise_and_list_the_valid_ones():
    with pytest.raises(ValueError, match="meadow, desert, tundra"):
        ProceduralWorld(CONFIG, biome="jungle")
    with pytest.raises(ValueError, match="day, night, fog"):
        ProceduralWorld(CONFIG, condition="rain")
    world = ProceduralWorld(CONFIG)
    with pytest.raises(ValueError, match="idle, north, south, east, west"):
        world.step("jump")
    with pytest.raises(ValueError, match="day, night, fog"):
        world.set_condition("dusk")
    with pytest.raises(ValueError, match="meadow, desert, tundra"):
        world.teleport("ocean")
    with pytest.raises(ValueError, match="day, night, fog"):
        apply_condition(world.render(), "storm")


# ---------------------------------------------------------------------------------------------------------
# Prompts and the scenario file


def test_prompt_round_trip():
    assert prompt_for("meadow", "day", "north") == "a green meadow, bright daylight, walking north"
    for biome in BIOMES:
        for condition in CONDITIONS:
            for action in ACTIONS:
                prompt = prompt_for(biome, condition, action)
                assert parse_prompt(prompt) == (biome, condition, action)
    assert parse_prompt("  A Snowy Tundra ,at night,  standing still ") == ("tundra", "night", "idle")


@pytest.mark.parametrize(
    "prompt",
    ["a red fox in the snow", "a green meadow, at noon, walking north", "a green meadow, at night", ""],
)
def test_parse_prompt_rejects_foreign_prompts(prompt):
    with pytest.raises(ValueError):
        parse_prompt(prompt)


def test_prompt_for_rejects_unknown_names():
    with pytest.raises(ValueError, match="meadow, desert, tundra"):
        prompt_for("jungle", "day", "idle")
    with pytest.raises(ValueError, match="idle, north"):
        prompt_for("meadow", "day", "run")


def test_scenario_file_names_every_world_action():
    with SCENARIO_PATH.open("rb") as handle:
        data = tomllib.load(handle)
    assert data["name"] == "procedural world"
    assert data["template"] == PROMPT_TEMPLATE
    assert data["template"].format(**data["start"]) == prompt_for("meadow", "day", "idle")
    assert data["scenes"] == dict(BIOME_TEXT)
    actions = data["actions"]
    for action in actions:
        assert set(action) >= {"name", "keys", "kind", "text", "slot"}, action
        assert action["kind"] in ("noop", "prompt", "cut")
        assert action["slot"] in ("action", "condition", "scene")
        assert isinstance(action["keys"], list) and all(isinstance(k, str) for k in action["keys"])
    by_name = {action["name"]: action for action in actions}
    assert len(by_name) == len(actions)
    assert set(by_name) == {"noop", *ACTIONS, *CONDITIONS, *BIOMES}
    assert by_name["noop"]["kind"] == "noop"
    for name in ACTIONS:
        assert (by_name[name]["kind"], by_name[name]["slot"], by_name[name]["text"]) == (
            "prompt",
            "action",
            ACTION_TEXT[name],
        )
    for name in CONDITIONS:
        assert (by_name[name]["slot"], by_name[name]["text"]) == ("condition", CONDITION_TEXT[name])
    for name in BIOMES:
        assert (by_name[name]["kind"], by_name[name]["slot"], by_name[name]["text"]) == ("cut", "scene", name)
    assert set(by_name["north"]["keys"]) == {"up", "w"} and by_name["idle"]["keys"] == ["space"]
    assert [by_name[c]["keys"] for c in CONDITIONS] == [["1"], ["2"], ["3"]]
    assert [by_name[b]["keys"] for b in BIOMES] == [["z"], ["x"], ["c"]]
    keys = [key for action in actions for key in action["keys"]]
    assert len(keys) == len(set(keys))


# ---------------------------------------------------------------------------------------------------------
# Probes


def test_phase_correlation_recovers_rolled_shifts():
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for dx, dy in [(0, 0), (3, 0), (0, -5), (-7, 4), (12, 9)]:
        shifted = np.roll(image, (dy, dx), axis=(0, 1))
        assert phase_correlation(image, shifted) == (dx, dy)


@pytest.mark.parametrize("biome", BIOMES)
@pytest.mark.parametrize("condition", CONDITIONS)
def test_phase_correlation_sign_on_the_world(biome, condition):
    world = ProceduralWorld(CONFIG, seed=21, biome=biome, condition=condition, x=-300, y=901)
    start = world.render()
    for k in (1, 3):
        east = ProceduralWorld(CONFIG, seed=21, biome=biome, condition=condition, x=-300, y=901)
        north = ProceduralWorld(CONFIG, seed=21, biome=biome, condition=condition, x=-300, y=901)
        east_end, north_end = east.rollout(["east"] * k)[-1], north.rollout(["north"] * k)[-1]
        for whiten in (True, False):
            assert phase_correlation(start, east_end, whiten) == (-SPEED * k, 0)
            assert phase_correlation(start, north_end, whiten) == (0, SPEED * k)


@pytest.mark.parametrize("biome", BIOMES)
@pytest.mark.parametrize("condition", CONDITIONS)
def test_motion_direction_on_ground_truth(biome, condition):
    for seed in (100, 101):
        for action in ACTIONS:
            world = ProceduralWorld(CONFIG, seed=seed, biome=biome, condition=condition)
            world.teleport(biome)
            frames = world.rollout([action] * 6)
            assert motion_direction(frames) == action
            expected = tuple(-SPEED * np.array(MOVES[action]))
            assert all(phase_correlation(a, b) == expected for a, b in itertools.pairwise(frames))


def gaussian_blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Frames blurred by a separable Gaussian, edges extended."""
    radius = int(3 * sigma)
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    taps /= taps.sum()
    out = frames.astype(np.float32)
    for axis in (1, 2):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(4)], mode="edge")
        out = sum(w * np.take(padded, range(i, i + out.shape[axis]), axis=axis) for i, w in enumerate(taps))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("condition", CONDITIONS)
def test_motion_direction_reads_blurred_blocks(condition):
    """A decoder's blur (here 2 px) must not hide a walk, nor invent one where the player stands still."""
    for biome in BIOMES:
        for action in ACTIONS:
            world = ProceduralWorld(CONFIG, seed=102, biome=biome, condition=condition)
            world.teleport(biome)
            frames = gaussian_blur(world.rollout([action] * 12), 2.0)
            assert motion_direction(frames) == action, (biome, action)
    still = gaussian_blur(np.repeat(world.render()[None], 12, axis=0), 2.0)
    assert motion_direction(still) == "idle"


def test_biome_and_condition_probes_on_held_out_seeds():
    samples, biome_hits, condition_hits = 0, 0, 0
    for i in range(63):
        biome, condition = BIOMES[i % 3], CONDITIONS[(i // 3) % 3]
        frame = reference_frames(biome, condition, 1, seed=10_000 + i)[0]
        biome_hits += biome_of(frame) == biome
        condition_hits += condition_of(frame) == condition
        samples += 1
    assert biome_hits / samples >= 0.98
    assert condition_hits / samples >= 0.98
    clip = reference_frames("desert", "night", 4, seed=777)
    assert (biome_of(clip), condition_of(clip)) == ("desert", "night")


@pytest.mark.parametrize("sigma", [2.0, 3.0])
def test_biome_and_condition_probes_read_blurred_frames(sigma):
    """A decoder's blur lowers fine contrast as fog does; it must not turn a day into fog.

    Per-pixel contrast read the right light in 0.90 of these frames at sigma 3.
    """
    samples, biome_hits, condition_hits = 0, 0, 0
    for i in range(63):
        biome, condition = BIOMES[i % 3], CONDITIONS[(i // 3) % 3]
        frame = gaussian_blur(reference_frames(biome, condition, 1, seed=20_000 + i), sigma)
        biome_hits += biome_of(frame) == biome
        condition_hits += condition_of(frame) == condition
        samples += 1
    assert biome_hits / samples >= 0.98
    assert condition_hits / samples >= 0.98


def test_color_features_of_odd_sized_frames():
    frames = np.random.default_rng(0).integers(0, 256, (2, 30, 35, 3)).astype(np.uint8)
    features = color_features(frames)
    assert features.shape == (2, 8)
    np.testing.assert_allclose(features[:, :3], frames.mean(axis=(1, 2)) / 255.0, rtol=1e-5)
    with pytest.raises(ValueError, match="at least"):
        color_features(frames[:, :3])


def test_frame_quality_orders_real_blurred_noisy_and_grey():
    for biome, condition in [("meadow", "day"), ("desert", "night"), ("tundra", "fog")]:
        reference = reference_frames(biome, condition, 24, seed=1)
        real = reference_frames(biome, condition, 12, seed=2)
        blurred = box_blur(real, 1)
        noise = np.random.default_rng(0).normal(0.0, 40.0, real.shape)
        noisy = np.clip(real + noise, 0, 255).astype(np.uint8)
        grey = np.full_like(real, 128)
        scores = [frame_quality(x, reference) for x in (real, blurred, noisy, grey)]
        assert scores[0] > 0.9, scores
        assert scores[0] > scores[1] + 0.2 and scores[1] > scores[2] > scores[3], scores
        assert scores[3] < 0.1, scores
        assert all(0.0 <= s <= 1.0 for s in scores)
    assert frame_quality(real[0], reference) > 0.8  # a single frame is accepted too
