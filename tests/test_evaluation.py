"""`worldsim eval`: every row and column on a random tiny world; the ceilings are what they claim."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.procedural.probes import motion_direction
from envs.procedural.world import BIOMES
from envs.tiny.evaluate import RoundTripRollout, TruthRollout, evaluate, format_table
from worldsim.bundle import random_world
from worldsim.cli import main


@pytest.fixture(scope="module")
def world():
    return random_world("tiny")


def test_round_trip_rollout_returns_the_truths_frame_counts(world) -> None:
    first, later = world.block_video_frames()
    truth, round_trip = TruthRollout(first, later), RoundTripRollout(world, first, later)
    truth.start("desert", "day", "east", seed=4)
    round_trip.start("desert", "day", "east", seed=4)
    for _ in range(3):
        expected, got = truth.step("desert", "day", "east"), round_trip.step("desert", "day", "east")
        assert got.shape == expected.shape and got.dtype == np.uint8
    assert motion_direction(expected) == "east"


def test_settled_round_trip_recodes_from_a_switch_on_and_follows_the_bundles_record(world, tmp_path) -> None:
    import dataclasses
    import json

    from envs.tiny.evaluate import data_set_coding

    first, later = world.block_video_frames()
    blocks = {}
    for settled in (False, True):
        rollout = RoundTripRollout(world, first, later, warmup_latents=2, settled_switches=settled)
        rollout.start("meadow", "night", "east", seed=3)
        steps = [("meadow", "night", "east")] * 2 + [("meadow", "day", "east"), ("meadow", "day", "east")]
        blocks[settled] = [rollout.step(*command) for command in steps]
    for before_switch in range(2):
        np.testing.assert_array_equal(blocks[True][before_switch], blocks[False][before_switch])
    assert all(not np.array_equal(a, b) for a, b in zip(blocks[True][2:], blocks[False][2:], strict=True))
    assert [len(b) for b in blocks[True]] == [len(b) for b in blocks[False]]

    # the regime comes from the bundle's training record; one from before settled switches had none
    assert world.source == "" and data_set_coding(world) == (12, True)
    (tmp_path / "train_config.json").write_text(json.dumps({"dataset_warmup_latents": 7}))
    assert data_set_coding(dataclasses.replace(world, source=str(tmp_path))) == (7, False)


@pytest.mark.slow
def test_eval_rows_and_table(world) -> None:
    rows = evaluate(world, frames=100, quick=True)
    assert [r.name for r in rows] == [world.name, "ground truth", "ground truth through the VAE"]
    model, truth, round_trip = rows
    assert truth.action_following == 1.0 and truth.cut_accuracy == 1.0
    assert truth.switch_latency == {"flush": 1.0, "no flush": 1.0, "recache": 1.0}
    assert truth.switch_quality["flush"] > 0.8
    assert truth.switch_latency_by_kind == {"light": 1.0, "action": 1.0}
    assert min(truth.quality_early.values()) > 0.9
    for row in rows:
        assert 0.0 <= row.action_following <= 1.0 and 0.0 <= row.cut_accuracy <= 1.0
        assert all(1.0 <= latency <= 6.0 for latency in row.switch_latency.values())
        assert all(0.0 <= quality <= 1.0 for quality in row.switch_quality.values())
        assert set(row.quality_late) == {"relative", "onset", "absolute", "rolling"}
        assert row.fps > 0
    assert model.peak_mem_mb > 0 and math.isnan(round_trip.peak_mem_mb)
    assert set(model.quality_gap_late) == {"onset", "absolute", "rolling"} and not truth.quality_gap_late
    assert len(model.switches) == 4 and len(model.cuts) == 6
    assert not truth.late_switches() and not truth.missed_cuts()
    table = format_table(rows, 100)
    assert all(f"| {r.name} |" in table for r in rows)
    assert "frames 0-50 -> frames 50-100" in table
    assert "by kind of switch: " in table and "ground truth light 1.00, action 1.00" in table
    assert "ground truth: switches shown late: none. Cuts missed: none." in table
    assert "switch latency, recache" in table and "quality around a switch" in table
    assert f"{model.name}, late quality of relative positions minus: onset" in table
    for row in rows:  # the flush column is the mean over both kinds (as many switches of each)
        assert row.switch_latency["flush"] == pytest.approx(
            np.mean(list(row.switch_latency_by_kind.values()))
        )
    assert 0.5 < truth.sharpness < 2.0 and model.sharpness >= 0.0
    assert [(c.delta, c.keeps_sink) for c in model.cut_ablation] == [
        (6, True),
        (21, True),
        (45, True),
        (90, True),
        (world.config.cut_delta, False),
    ]
    assert not truth.cut_ablation and "| 90 | kept |" in table and "| replaced |" in table


def test_eval_refuses_a_short_walk(capsys) -> None:
    assert main(["eval", "--frames", "10"]) == 2
    assert "--frames must be at least 100" in capsys.readouterr().err


def test_motion_of_short_blocks_is_read_with_a_lead_in_from_the_block_before() -> None:
    from envs.procedural.probes import MOTION_LAG
    from envs.tiny.evaluate import action_following, with_lead_in

    previous, frames = np.zeros((12, 2, 2, 3), np.uint8), np.ones((4, 2, 2, 3), np.uint8)
    joined = with_lead_in(previous, frames)
    assert len(joined) == MOTION_LAG + 4
    assert np.all(joined[:MOTION_LAG] == 0) and np.all(joined[MOTION_LAG:] == 1)
    assert with_lead_in(None, frames) is frames
    # blocks of one latent frame: 1 video frame, then 4 a block; the world itself still reads exactly
    assert action_following(TruthRollout(1, 4), episodes=6, seed=0) == 1.0


def test_a_switch_block_is_read_over_the_block_alone() -> None:
    from envs.procedural.probes import camera_motion
    from envs.tiny.evaluate import with_lead_in

    truth = TruthRollout(1, 4)
    truth.start("meadow", "day", "north", seed=1)
    previous = [truth.step("meadow", "day", "north") for _ in range(2)][-1]
    reversal = truth.step("meadow", "day", "south")
    np.testing.assert_allclose(camera_motion(with_lead_in(previous, reversal, lead=1)), (0.0, 2.0))
    # pairs that start in the block before straddle the switch: the world reads a quarter of its speed
    np.testing.assert_allclose(camera_motion(with_lead_in(previous, reversal)), (0.0, 0.5))


class StuckRollout(TruthRollout):
    """The ground-truth world that ignores every command after the first: no switch or cut ever shows."""

    def start(self, biome: str, condition: str, action: str, seed: int) -> None:
        super().start(biome, condition, action, seed)
        self.first_command = (biome, condition, action)

    def step(self, biome: str, condition: str, action: str, cut: bool = False) -> np.ndarray:
        return super().step(*self.first_command)


def test_every_switch_and_cut_is_recorded_with_what_it_showed() -> None:
    from envs.tiny.evaluate import LATENCY_CAP, cut_accuracy, latency_by_kind, measure_cuts, measure_switches

    switches = measure_switches(TruthRollout(1, 4), switches=6, seed=0)
    assert [s.kind for s in switches] == ["light", "action"] * 3
    assert all(s.latency == 1 and s.before != s.after for s in switches)
    assert latency_by_kind(switches) == {"light": 1.0, "action": 1.0}
    cuts = measure_cuts(TruthRollout(1, 4), cuts=6, seed=0)
    assert {(c.source, c.target) for c in cuts} == {(a, b) for a in BIOMES for b in BIOMES if a != b}
    assert cut_accuracy(cuts) == 1.0

    stuck = measure_switches(StuckRollout(1, 4), switches=4, seed=0)
    assert [s.latency for s in stuck] == [LATENCY_CAP] * 4
    first = stuck[0]
    assert first.describe() == f"{first.biome}: {first.before} → {first.after}, {LATENCY_CAP} blocks"
    missed = measure_cuts(StuckRollout(1, 4), cuts=3, seed=0)
    assert cut_accuracy(missed) == 0.0 and all(c.shown == c.source for c in missed)


def test_the_table_names_late_switches_missed_cuts_and_the_quality_gap() -> None:
    from envs.tiny.evaluate import Cut, EvalResult, Switch, paired_gap

    mean, error = paired_gap(np.array([0.5, 0.6, 0.7]), np.array([0.4, 0.4, 0.4]))
    assert mean == pytest.approx(0.2) and error == pytest.approx(0.1 / math.sqrt(3))
    assert math.isnan(paired_gap(np.array([0.5]), np.array([0.4]))[1])

    row = EvalResult(
        name="m", action_following=1.0,
        switch_latency=dict.fromkeys(("flush", "no flush", "recache"), 1.5),
        switch_quality=dict.fromkeys(("flush", "no flush", "recache"), 0.5),
        switch_latency_by_kind={"light": 2.0, "action": 1.0},
        quality_early=dict.fromkeys(("relative", "onset", "absolute", "rolling"), 0.5),
        quality_late=dict.fromkeys(("relative", "onset", "absolute", "rolling"), 0.5),
        quality_gap_late={"absolute": (0.02, 0.004), "rolling": (-0.001, 0.003)},
        cut_accuracy=0.5,
        switches=[
            Switch("light", "desert", "fog", "day", 2), Switch("action", "meadow", "north", "south", 1),
        ],
        cuts=[Cut("desert", "tundra", "night", "desert"), Cut("meadow", "desert", "day", "desert")],
    )  # fmt: skip
    table = format_table([row], 10_000)
    assert "m: switches shown late: desert: fog → day, 2 blocks. Cuts missed: desert → tundra" in table
    assert "Cuts missed: desert → tundra at night, showed desert." in table
    assert Cut("meadow", "desert", "day", "meadow").describe() == "meadow → desert by day, showed meadow"
    assert "minus: absolute +0.020 ± 0.004, rolling -0.001 ± 0.003" in table
    assert "over 21 chunks of 48 frames" in table


def test_the_round_trip_decodes_warm_where_the_model_has_lead_in_blocks() -> None:
    from tests.conftest import tiny_world
    from worldsim.config import EngineConfig

    world = tiny_world(EngineConfig(block_frames=1, window_frames=4, lead_in_blocks=2))
    first, later = world.block_video_frames()
    assert first == later == 4
    for warmup in (0, 3):
        rollout = RoundTripRollout(world, first, later, warmup, False)
        rollout.start("meadow", "day", "east", seed=0)
        assert [rollout.step("meadow", "day", "east").shape[0] for _ in range(3)] == [4, 4, 4]


def test_sharpness_is_the_laplacian_energy_and_a_cut_scene_is_scored_against_its_look() -> None:
    import cv2

    from envs.procedural.probes import reference_frames
    from envs.tiny.evaluate import laplacian_sharpness, measure_cuts

    frames = reference_frames("meadow", "day", 16, seed=1)
    blurred = np.stack([cv2.GaussianBlur(f, (5, 5), 1.5) for f in frames])
    assert laplacian_sharpness(blurred) < 0.5 * laplacian_sharpness(frames)
    assert laplacian_sharpness(np.full_like(frames, 128)) == 0.0
    cuts = measure_cuts(TruthRollout(1, 4), cuts=3, seed=0, after=3)
    assert all(c.quality > 0.8 for c in cuts)  # the world's own new scenes look like themselves
    assert all(math.isnan(c.quality) for c in measure_cuts(TruthRollout(1, 4), cuts=2, seed=0))
