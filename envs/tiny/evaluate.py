"""`worldsim eval`: the tiny world model measured against the procedural ground truth.

Every column is computed the same way for the model and for the ground-truth world (the ceiling
row), with the probes of ``envs.procedural.probes``:

- ``action_following``: share of blocks generated while an action is held whose measured motion
  (cross-correlation of frames 4 apart, ``envs.procedural.probes.camera_motion``, each frame of the block
  against the one 4 before it, which for its first frames lies in the block before) is the
  commanded direction (or idle);
- ``switch_latency_blocks``: after a prompt switch (a new action or a new light), how many blocks
  until a block shows it (1 = the very next block), in three modes: with KV Flush, with no flush
  (only the text renewed) and with LongLive's recache (every held frame re-encoded under the new
  prompt); a new action is read over the block alone, from the frame before it to its last frame;
  with each mode also the quality around the switch: ``frame_quality`` of the first
  SWITCH_QUALITY_BLOCKS blocks after it against ground truth of the new look;
- long horizon: ``frame_quality`` against ground-truth frames of the same biome and light, over
  the first and the last 1,000 frames of a long rollout, for four position schemes:
  Block-Relativistic RoPE; the onset variant (the block anchored at the engine's onset frame);
  absolute positions that grow past the training horizon (a Self-Forcing model unchanged); and a
  rolling cache with absolute positions and no sink;
- ``sharpness``: the variance of the Laplacian of the first 1,000 frames (relative positions)
  over that of ground-truth frames of the same look: 1 as sharp as the world, lower blurrier;
- ``cut_accuracy``: share of cuts after which the first block shows the requested biome; for the
  model, also the RoPE Cut ablation of the paper: accuracy and the quality of the new scene's first
  four blocks for a jump Δ of 6, 21, 45 and 90 positions keeping the sink, and for the engine's Δ
  with the sink replaced by the cut block;
- ``fps`` and peak memory of generation plus decode (``worldsim.bench``).

Under the table each row names its switches that showed late and its missed cuts (every switch and
cut is in the JSON), and the model's late quality with relative positions minus that of the other
schemes, chunk by chunk over the same walk, with its standard error.

Two ceiling rows: the ground-truth world itself, and the ground truth seen through the bundle's
VAE: what a transformer that made the data set's codes exactly would show through that decoder. It
is streamed in the regime of a model rollout: encoded after a warm-up walk (as the training data set
is), then block after block with the encoder's cache kept (or, where the data set was coded so,
recoded behind a warm-up walk of its own at each switch), and decoded from a fresh decoder cache.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from envs.procedural.probes import (
    biome_of,
    condition_of,
    frame_quality,
    motion_direction,
    reference_frames,
    with_lead_in,
)
from envs.procedural.world import ACTIONS, BIOMES, CONDITIONS, ProceduralWorld, WorldConfig, prompt_for
from envs.tiny.card import CARD_FILE, EVAL_MARKERS
from envs.tiny.config import TrainConfig
from models.streaming_vae import StreamingEncoder, from_uint8_frames, to_uint8_frames
from worldsim.bench import run_bench
from worldsim.config import PROMPT_CHANGES, EngineConfig
from worldsim.world import World

MOVING = tuple(a for a in ACTIONS if a != "idle")
LATENCY_CAP = 6  # blocks; a switch not shown by then counts as this
SWITCH_QUALITY_BLOCKS = 3  # blocks after a switch whose quality is read against the new look
# The switch modes the eval measures, by column name: the answer to a prompt change (PROMPT_CHANGES).
SWITCH_MODES: dict[str, str] = {"flush": "flush", "no flush": "keep", "recache": "recache"}


@dataclass
class EvalResult:
    """One row of the table."""

    name: str
    action_following: float
    switch_latency: dict[str, float]  # switch mode (SWITCH_MODES) -> mean blocks until a switch shows
    switch_quality: dict[str, float]  # switch mode -> mean quality of the blocks after a switch
    # the flush column by kind of switch: a new light, a new action
    switch_latency_by_kind: dict[str, float] = field(default_factory=dict)
    quality_early: dict[str, float] = field(default_factory=dict)  # scheme -> score over the first 1k frames
    quality_late: dict[str, float] = field(default_factory=dict)  # scheme -> score over the last 1k frames
    # other scheme -> (mean, standard error) of relative minus it, chunk by chunk, over the last 1k frames
    quality_gap_late: dict[str, tuple[float, float]] = field(default_factory=dict)
    cut_accuracy: float = math.nan
    # Laplacian variance of the first 1k frames (relative positions) over the ground truth's
    sharpness: float = math.nan
    cut_ablation: list[CutSetting] = field(default_factory=list)  # the model only
    fps: float = math.nan
    peak_mem_mb: float = math.nan
    switches: list[Switch] = field(default_factory=list)  # the flush column's switches, one by one
    cuts: list[Cut] = field(default_factory=list)

    def late_switches(self) -> list[Switch]:
        """The switches that did not show in the very next block."""
        return [s for s in self.switches if s.latency > 1]

    def missed_cuts(self) -> list[Cut]:
        """The cuts whose first block showed another biome."""
        return [c for c in self.cuts if c.shown != c.target]


# ---------------------------------------------------------------------------------------------
# Two sources of blocks with one interface: the model, and the ground-truth world
# ---------------------------------------------------------------------------------------------


class Rollout:
    """Blocks of frames for a sequence of (biome, condition, action) commands."""

    def start(self, biome: str, condition: str, action: str, seed: int) -> None:
        """Begin a new rollout."""
        raise NotImplementedError

    def step(self, biome: str, condition: str, action: str, cut: bool = False) -> np.ndarray:
        """The next block's frames (T, H, W, 3) under the given command."""
        raise NotImplementedError


class ModelRollout(Rollout):
    """The world model: a session whose prompt follows the commands (flush on change, cut on cut)."""

    def __init__(self, world: World, config: EngineConfig | None = None) -> None:
        self.world = world
        self.config = config or world.config

    def start(self, biome: str, condition: str, action: str, seed: int) -> None:
        """A fresh session on the command's prompt."""
        self.session = self.world.session(prompt_for(biome, condition, action), seed=seed, config=self.config)

    def step(self, biome: str, condition: str, action: str, cut: bool = False) -> np.ndarray:
        """Set the prompt (or cut to it) and generate a block."""
        self.session.follow(prompt_for(biome, condition, action), cut)
        return self.session.step().frames


class TruthRollout(Rollout):
    """The procedural world itself, cut into blocks of the same length as the model's."""

    def __init__(self, first_block_frames: int, block_frames: int) -> None:
        self.first, self.later = first_block_frames, block_frames

    def start(self, biome: str, condition: str, action: str, seed: int) -> None:
        """A world at a random place."""
        rng = np.random.default_rng(seed)
        x, y = (int(v) for v in rng.integers(-(10**6), 10**6, size=2))
        self.world = ProceduralWorld(WorldConfig(), seed=seed, biome=biome, condition=condition, x=x, y=y)
        self.blocks = 0

    def step(self, biome: str, condition: str, action: str, cut: bool = False) -> np.ndarray:
        """Apply the command and play one block's worth of frames."""
        self.command(biome, condition, cut)
        return self.play(action)

    def command(self, biome: str, condition: str, cut: bool = False) -> None:
        """Go to the biome (a cut always teleports) and set the light, before a block is played."""
        if cut or biome != self.world.state.biome:
            self.world.teleport(biome)
        if condition != self.world.state.condition:
            self.world.set_condition(condition)

    def play(self, action: str) -> np.ndarray:
        """One block's worth of frames of `action`."""
        if self.blocks == 0:
            frames = [self.world.render()] + [self.world.step(action) for _ in range(self.first - 1)]
        else:
            frames = [self.world.step(action) for _ in range(self.later)]
        self.blocks += 1
        return np.stack(frames)


def data_set_coding(world: World) -> tuple[int, bool]:
    """How the bundle's latent data set was coded: (warm-up latent frames, settled switches).

    Read from the bundle's ``train_config.json``. A record from before settled switches coded every
    clip in one pass; a bundle without a record (a random world) gets ``TrainConfig``'s defaults.
    """
    record = Path(world.source) / "train_config.json" if world.source else None
    if record is None or not record.is_file():
        return TrainConfig.dataset_warmup_latents, TrainConfig.dataset_settled_switches
    values = json.loads(record.read_text())
    warmup = int(values.get("dataset_warmup_latents", TrainConfig.dataset_warmup_latents))
    return warmup, bool(values.get("dataset_settled_switches", False))


class RoundTripRollout(Rollout):
    """The ground-truth world through the bundle's VAE, in the regime a model rollout is decoded in.

    The transformer learned steady-state codes: its data set encodes every clip after
    ``warmup_latents`` latent frames of the same walk (``envs.tiny.data.build_dataset``). So each
    rollout here first encodes that many latent frames of a walk under the first command, and drops
    them; then each block is encoded behind them (the causal encoder keeps its cache) and decoded by
    the bundle's streaming decoder from a fresh cache, as a model rollout is. The first block then
    holds one latent frame made of four video frames and decodes to one frame, like the model's;
    where the model's first block is a full one (lead-in blocks), the decoder first decodes the last
    warm-up latent frame, as a session decodes its lead-in. With ``settled_switches`` (a data set
    coded so), a block under a new command (a prompt switch or a cut) is encoded from a fresh encoder
    cache behind a warm-up walk under that command which arrives where the block begins
    (``ProceduralWorld.history``), as the data set codes it; the decoder keeps its cache throughout.
    """

    def __init__(
        self,
        world: World,
        first_block_frames: int,
        block_frames: int,
        warmup_latents: int = TrainConfig.dataset_warmup_latents,
        settled_switches: bool = TrainConfig.dataset_settled_switches,
    ) -> None:
        self.truth = TruthRollout(first_block_frames, block_frames)
        self.warm_decoder = first_block_frames == block_frames  # the model's first block is a full one
        self.warmup = warmup_latents
        self.settled = settled_switches and warmup_latents > 0
        self.decoder = world.decoder
        mean, std = (t.flatten().tolist() for t in (world.decoder.mean, world.decoder.std))
        self.encoder = StreamingEncoder(world.decoder.vae, mean, std)

    def start(self, biome: str, condition: str, action: str, seed: int) -> None:
        """A world at a random place, as TruthRollout, and a VAE stream warmed up on a walk there."""
        self.truth.start(biome, condition, action, seed)
        self.encoded, self.decoded = self.encoder.new_state(), self.decoder.new_state()
        self.last = (biome, condition, action)
        if self.warmup or self.warm_decoder:
            world = self.truth.world
            frames = [world.render()] + [world.step(action) for _ in range(4 * (max(self.warmup, 1) - 1))]
            latents = self._encode(np.stack(frames))
            if self.warm_decoder:
                self.decoder.decode(latents[:, :, -1:], self.decoded)
            self.truth.blocks = 1  # every block from here on, the first too, plays 4 frames a latent frame

    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        parameter = next(self.decoder.vae.parameters())
        video = from_uint8_frames(frames[None]).to(parameter.device, parameter.dtype)
        return self.encoder.encode(video, self.encoded)

    def step(self, biome: str, condition: str, action: str, cut: bool = False) -> np.ndarray:
        """The ground-truth block after an encode-decode round trip."""
        switched = cut or (biome, condition, action) != self.last
        self.last = (biome, condition, action)
        self.truth.command(biome, condition, cut)
        if switched and self.settled:
            self.encoded = self.encoder.new_state()
            self._encode(self.truth.world.history(action, 1 + 4 * (self.warmup - 1)))
        latents = self._encode(self.truth.play(action))
        return to_uint8_frames(self.decoder.decode(latents, self.decoded))[0].cpu().numpy()


# ---------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------


def action_following(rollout: Rollout, episodes: int, seed: int) -> float:
    """Share of held-action blocks (all but each episode's first) whose motion is the command."""
    rng = np.random.default_rng([seed, 1])
    hits = total = 0
    for episode in range(episodes):
        biome, condition = BIOMES[episode % 3], CONDITIONS[(episode // 3) % 3]
        actions = [str(a) for a in rng.permutation(ACTIONS)[:2]]
        rollout.start(biome, condition, actions[0], seed=seed * 1000 + episode)
        previous = None
        for block in range(6):
            action = actions[block // 3]
            frames = rollout.step(biome, condition, action)
            if block not in (0, 3):  # the first block of a rollout, and the switch block, are not "held"
                hits += motion_direction(with_lead_in(previous, frames)) == action
                total += 1
            previous = frames
    return hits / total


@dataclass(frozen=True)
class Switch:
    """One measured prompt switch: what changed where, and how many blocks it took to show."""

    kind: str  # "light" or "action"
    biome: str
    before: str  # the old light or action
    after: str  # the new one
    latency: int  # blocks until a block shows `after` (1 = the very next); LATENCY_CAP if none did
    quality: float = math.nan  # frame_quality of the SWITCH_QUALITY_BLOCKS blocks after it, new look

    def describe(self) -> str:
        """E.g. "desert: fog → day, 2 blocks"."""
        return f"{self.biome}: {self.before} → {self.after}, {self.latency} blocks"


@dataclass(frozen=True)
class Cut:
    """One measured RoPE Cut: from where to where, under which light, and the biome its first block shows."""

    source: str
    target: str
    condition: str
    shown: str
    # frame_quality of the cut block and the blocks after it against the target's ground truth
    quality: float = math.nan

    def describe(self) -> str:
        """E.g. "desert → tundra at night, showed desert"."""
        light = {"day": "by day", "night": "at night", "fog": "in fog"}.get(self.condition, self.condition)
        return f"{self.source} → {self.target} {light}, showed {self.shown}"


def mean_latency(switches: Sequence[Switch]) -> float:
    """The mean over every switch of every kind."""
    return float(np.mean([s.latency for s in switches]))


def latency_by_kind(switches: Sequence[Switch]) -> dict[str, float]:
    """The mean latency of each kind of switch, in the order the kinds first occur."""
    kinds = dict.fromkeys(s.kind for s in switches)
    return {kind: mean_latency([s for s in switches if s.kind == kind]) for kind in kinds}


def measure_switches(rollout: Rollout, switches: int, seed: int) -> list[Switch]:
    """Each prompt switch with the blocks it took to show; kinds alternate, a new light first.

    A new light is read by the condition classifier, a new action from the camera motion; a switch
    not shown within LATENCY_CAP blocks counts as LATENCY_CAP. The first SWITCH_QUALITY_BLOCKS
    blocks after the switch are also scored against ground truth of the new look.
    """
    rng = np.random.default_rng([seed, 2])
    measured = []
    references: dict[tuple[str, str], np.ndarray] = {}
    for switch in range(switches):
        biome, kind = BIOMES[switch % 3], ("light", "action")[switch % 2]
        if kind == "light":  # a new light: measured with the condition classifier
            before, after = (str(c) for c in rng.permutation(CONDITIONS)[:2])
            old, new = (biome, before, "east"), (biome, after, "east")

            def shows(frames: np.ndarray, target: str = after) -> bool:
                return condition_of(frames) == target
        else:  # a new action: measured from the camera motion
            before, after = (str(a) for a in rng.permutation(MOVING)[:2])
            old, new = (biome, "day", before), (biome, "day", after)

            def shows(frames: np.ndarray, target: str = after) -> bool:
                return motion_direction(frames) == target

        rollout.start(*old, seed=seed * 1000 + switch)
        for _ in range(3):
            previous = rollout.step(*old)
        latency, blocks = LATENCY_CAP, []
        for block in range(1, LATENCY_CAP + 1):
            frames = rollout.step(*new)
            blocks.append(frames)
            # An action is read over the block alone (from the frame before it): a pair that starts
            # further back holds steps of the old action, and on a reversal the world itself would
            # then read only a quarter of its speed.
            if latency == LATENCY_CAP and shows(
                frames if kind == "light" else with_lead_in(previous, frames, lead=1)
            ):
                latency = block
            if latency < LATENCY_CAP and block >= SWITCH_QUALITY_BLOCKS:
                break
            previous = frames
        look = (new[0], new[1])
        if look not in references:
            references[look] = reference_frames(*look, 64, seed=seed + 11)
        quality = frame_quality(np.concatenate(blocks[:SWITCH_QUALITY_BLOCKS]), references[look])
        measured.append(Switch(kind, biome, before, after, latency, quality))
    return measured


def measure_cuts(rollout: Rollout, cuts: int, seed: int, after: int = 0) -> list[Cut]:
    """Each cut with the biome its first block shows, over every ordered pair of biomes and every light.

    With `after`, the cut block and `after` more blocks of the new scene are also scored against
    ground-truth frames of the target's look (``Cut.quality``): is what the cut made a proper scene.
    """
    pairs = [(a, b) for a in BIOMES for b in BIOMES if a != b]
    measured = []
    references: dict[tuple[str, str], np.ndarray] = {}  # the target's look, drawn once
    for index in range(cuts):
        source, target = pairs[index % len(pairs)]
        condition = CONDITIONS[(index // len(pairs)) % 3]
        rollout.start(source, condition, "north", seed=seed * 1000 + index)
        for _ in range(3):
            rollout.step(source, condition, "north")
        first = rollout.step(target, condition, "north", cut=True)
        quality = math.nan
        if after:
            blocks = [first, *(rollout.step(target, condition, "north") for _ in range(after))]
            if (target, condition) not in references:
                references[target, condition] = reference_frames(target, condition, 64, seed=seed + 7)
            quality = frame_quality(np.concatenate(blocks), references[target, condition])
        measured.append(Cut(source, target, condition, biome_of(first), quality))
    return measured


CUT_DELTAS = (6, 21, 45, 90)  # the paper's RoPE Cut ablation


@dataclass(frozen=True)
class CutSetting:
    """One row of the cut ablation: a RoPE Cut's jump and whether the cut keeps the sink."""

    delta: int
    keeps_sink: bool
    accuracy: float
    quality: float  # mean Cut.quality: the new scene's first blocks against the ground truth


def cut_ablation(world: World, config: EngineConfig, cuts: int, seed: int) -> list[CutSetting]:
    """Cut accuracy and the new scene's quality for each Δ of CUT_DELTAS (keeping the sink), and for
    the engine's own Δ with the sink replaced by the cut block (a fresh window)."""
    settings = [(delta, True) for delta in CUT_DELTAS] + [(config.cut_delta, False)]
    rows = []
    for delta, keeps in tqdm(settings, desc="cut ablation", unit="setting", leave=False):
        engine = config.replace(cut_delta=delta, cut_keeps_sink=keeps)
        measured = measure_cuts(ModelRollout(world, engine), cuts, seed, after=3)
        quality = float(np.mean([cut.quality for cut in measured]))
        rows.append(CutSetting(delta, keeps, cut_accuracy(measured), quality))
    return rows


def laplacian_sharpness(frames: np.ndarray) -> float:
    """Mean over frames of the variance of the Laplacian of the grey image (OpenCV): edge energy."""
    return float(
        np.mean([cv2.Laplacian(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for f in frames])
    )


def cut_accuracy(cuts: Sequence[Cut]) -> float:
    """Share of cuts whose first block shows the requested biome."""
    return float(np.mean([cut.shown == cut.target for cut in cuts]))


QUALITY_CHUNK = 48  # frames scored together by frame_quality


def long_horizon(
    rollout: Rollout, frames: int, window: int, seed: int, reference: np.ndarray, desc: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """Frame quality of each QUALITY_CHUNK frames over the first and the last `window` frames of a
    `frames`-long walk (the walk's actions depend on `seed` alone, so every scheme takes the same walk),
    and the first window's sharpness over the reference's (``laplacian_sharpness``)."""
    biome, condition = "meadow", "day"
    rng = np.random.default_rng([seed, 3])
    rollout.start(biome, condition, "east", seed=seed)
    produced, early, late = 0, [], []
    action = "east"
    with tqdm(total=frames, desc=desc, unit="frame", leave=False) as bar:
        while produced < frames:
            if rng.random() < 0.1:
                action = str(rng.choice(MOVING))
            block = rollout.step(biome, condition, action)
            for frame in block:
                if produced < window:
                    early.append(frame)
                elif produced >= frames - window:
                    late.append(frame)
                produced += 1
            bar.update(len(block))
    sharpness = laplacian_sharpness(np.stack(early)) / laplacian_sharpness(reference)
    return _chunk_quality(early, reference), _chunk_quality(late, reference), sharpness


def _chunk_quality(frames: list[np.ndarray], reference: np.ndarray) -> np.ndarray:
    chunks = [np.stack(frames[i : i + QUALITY_CHUNK]) for i in range(0, len(frames), QUALITY_CHUNK)]
    return np.array([frame_quality(chunk, reference) for chunk in chunks])


def paired_gap(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the chunk-by-chunk difference ``ours - theirs`` (same walk, same chunks).

    The standard error treats chunks as independent samples; with one chunk it is NaN.
    """
    difference = np.asarray(ours, np.float64) - np.asarray(theirs, np.float64)
    spread = difference.std(ddof=1) / math.sqrt(len(difference)) if len(difference) > 1 else math.nan
    return float(difference.mean()), float(spread)


# ---------------------------------------------------------------------------------------------
# The whole evaluation
# ---------------------------------------------------------------------------------------------

SCHEMES: dict[str, Callable[[EngineConfig], EngineConfig]] = {
    "relative": lambda c: c.replace(positions="relative"),
    "onset": lambda c: c.replace(positions="onset"),
    "absolute": lambda c: c.replace(positions="absolute"),
    "rolling": lambda c: c.replace(positions="absolute", sink_frames=0),
}


def trimming_flush(config: EngineConfig) -> EngineConfig:
    """The config with a KV Flush that trims a full window: at most the kept frames less one besides
    the sink (a window of 4 with 2 kept would flush nothing)."""
    room = config.kept_frames - config.sink_frames - 1
    return config.replace(flush_keep_frames=max(0, min(config.flush_keep_frames, room)))


def mean_quality(switches: Sequence[Switch]) -> float:
    """The mean quality after every switch."""
    return float(np.mean([s.quality for s in switches]))


def long_horizon_schemes(
    make: Callable[[EngineConfig], Rollout],
    config: EngineConfig,
    schemes: Sequence[str],
    frames: int,
    window: int,
    seed: int,
    reference: np.ndarray,
    name: str,
) -> tuple[dict[str, float], dict[str, float], dict[str, tuple[float, float]], float]:
    """The long walk under each position scheme: early and late quality by scheme, the paired gap of
    relative positions to each other scheme over the late chunks, and the relative scheme's sharpness."""
    early_by, late_by, late_chunks, sharpness = {}, {}, {}, math.nan
    for scheme in schemes:
        rollout = make(SCHEMES[scheme](config))
        early, late, sharp = long_horizon(rollout, frames, window, seed, reference, f"{name} {scheme}")
        if scheme == "relative":
            sharpness = sharp
        early_by[scheme] = float(early.mean())
        late_by[scheme], late_chunks[scheme] = float(late.mean()), late
    gaps = {s: paired_gap(late_chunks["relative"], late_chunks[s]) for s in schemes if s != "relative"}
    return early_by, late_by, gaps, sharpness


def evaluate(world: World, frames: int = 10_000, seed: int = 0, quick: bool = False) -> list[EvalResult]:
    """Measure the model and the ceilings; returns [model, ground truth, VAE round trip] rows."""
    config = world.config
    first, later = world.block_video_frames()
    episodes, switches, cuts = (3, 4, 6) if quick else (18, 18, 18)
    speed_frames = 200 if quick else 2000  # frames the ceilings' speed is timed over
    window = min(1000, frames // 2)
    reference = reference_frames("meadow", "day", 256, seed=seed + 99)

    def measure(name: str, make: Callable[[EngineConfig], Rollout], schemes: tuple[str, ...]) -> EvalResult:
        """One row; a ceiling (one scheme) has no cache, so one switch measurement serves every mode."""
        print(f"measuring {name} ...", file=sys.stderr, flush=True)  # stdout may carry JSON
        modes = SWITCH_MODES if len(schemes) > 1 else {"flush": SWITCH_MODES["flush"]}
        by_mode = {
            mode: measure_switches(
                make(trimming_flush(config).replace(**PROMPT_CHANGES[answer])), switches, seed
            )
            for mode, answer in modes.items()
        }
        switched = by_mode["flush"]
        cut = measure_cuts(make(config), cuts, seed)
        result = EvalResult(
            name=name,
            action_following=action_following(make(config), episodes, seed),
            switch_latency={mode: mean_latency(by_mode.get(mode, switched)) for mode in SWITCH_MODES},
            switch_quality={mode: mean_quality(by_mode.get(mode, switched)) for mode in SWITCH_MODES},
            switch_latency_by_kind=latency_by_kind(switched),
            cut_accuracy=cut_accuracy(cut),
            switches=switched,
            cuts=cut,
        )
        result.quality_early, result.quality_late, result.quality_gap_late, sharpness = long_horizon_schemes(
            make, config, schemes, frames, window, seed, reference, name
        )
        result.sharpness = sharpness
        return result

    model = measure(world.name, lambda c: ModelRollout(world, c), tuple(SCHEMES))
    model.cut_ablation = cut_ablation(world, config, cuts, seed)
    bench = run_bench(world, blocks=4 if quick else 16, seed=seed)
    model.fps, model.peak_mem_mb = bench.fps, bench.peak_mem_mb

    ceilings, coding = [], data_set_coding(world)
    for name, make in (
        ("ground truth", lambda c: TruthRollout(first, later)),
        ("ground truth through the VAE", lambda c: RoundTripRollout(world, first, later, *coding)),
    ):
        ceiling = measure(name, make, ("relative",))
        for scheme in SCHEMES:  # no positions: one measurement serves every scheme
            ceiling.quality_early[scheme] = ceiling.quality_early["relative"]
            ceiling.quality_late[scheme] = ceiling.quality_late["relative"]
        source = make(config)
        source.start("meadow", "day", "east", seed)
        started, produced = time.perf_counter(), 0
        while produced < speed_frames:
            produced += len(source.step("meadow", "day", "east"))
        ceiling.fps = produced / (time.perf_counter() - started)
        ceilings.append(ceiling)
    return [model, *ceilings]


def long_horizon_report(world: World, frames: int, seed: int = 0) -> str:
    """Only the long walk, under every position scheme (for walks too long for the whole eval, such as
    100,000 frames): a Markdown table of early and late quality and the paired late gaps."""
    window = min(1000, frames // 2)
    reference = reference_frames("meadow", "day", 256, seed=seed + 99)
    early, late, gaps, sharpness = long_horizon_schemes(
        lambda c: ModelRollout(world, c),
        world.config,
        tuple(SCHEMES),
        frames,
        window,
        seed,
        reference,
        world.name,
    )
    lines = [
        f"{world.name}: quality of frames 0-{window} and {frames - window}-{frames} of a {frames}-frame walk",
        "",
        "| positions | first | last | late gap, relative minus it |",
        "|---|---|---|---|",
    ]
    for scheme in SCHEMES:
        gap = "-" if scheme not in gaps else f"{gaps[scheme][0]:+.3f} ± {gaps[scheme][1]:.3f}"
        lines.append(f"| {scheme} | {early[scheme]:.3f} | {late[scheme]:.3f} | {gap} |")
    lines.append(f"\nsharpness of the first {window} frames (relative): {sharpness:.3f} of the world's")
    return "\n".join(lines)


def format_table(rows: list[EvalResult], frames: int) -> str:
    """The eval table as Markdown; quality cells read "first 1k frames -> last 1k frames"."""
    header = [
        "",
        "action following",
        *(f"switch latency, {mode}" for mode in SWITCH_MODES),
        *(f"quality, {scheme}" for scheme in SCHEMES),
        "sharpness",
        "cut accuracy",
        "fps",
        "peak MiB",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row.name,
            f"{row.action_following:.2f}",
            *(f"{row.switch_latency[mode]:.2f}" for mode in SWITCH_MODES),
            *(f"{row.quality_early[s]:.3f} → {row.quality_late[s]:.3f}" for s in SCHEMES),
            f"{row.sharpness:.3f}",
            f"{row.cut_accuracy:.2f}",
            f"{row.fps:.1f}",
            "-" if math.isnan(row.peak_mem_mb) else f"{row.peak_mem_mb:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    window = min(1000, frames // 2)
    lines.append(
        f"\nquality: frames 0-{window} -> frames {frames - window}-{frames} of a {frames}-frame walk; "
        f"sharpness: the variance of the Laplacian of frames 0-{window} (relative positions) over that of "
        "ground-truth frames of the same look"
    )
    for row in rows:
        if row.cut_ablation:
            lines.append(
                f"\n{row.name}, RoPE Cut ablation (accuracy; quality of the cut block and 3 after it):"
            )
            lines.append("\n| Δ | sink | cut accuracy | new scene quality |\n|---|---|---|---|")
            for setting in row.cut_ablation:
                sink = "kept" if setting.keeps_sink else "replaced"
                lines.append(f"| {setting.delta} | {sink} | {setting.accuracy:.2f} | {setting.quality:.3f} |")

    lines.append(
        f"\nquality around a switch (the {SWITCH_QUALITY_BLOCKS} blocks after it, against the new look): "
        + "; ".join(
            f"{row.name} " + ", ".join(f"{mode} {row.switch_quality[mode]:.3f}" for mode in SWITCH_MODES)
            for row in rows
        )
    )

    def kinds(row: EvalResult) -> str:
        return ", ".join(f"{kind} {value:.2f}" for kind, value in row.switch_latency_by_kind.items())

    by_kind = "; ".join(f"{row.name} {kinds(row)}" for row in rows)
    lines.append(f"\nswitch latency with flush, by kind of switch: {by_kind}")
    for row in rows:
        late = "; ".join(s.describe() for s in row.late_switches()) or "none"
        missed = "; ".join(c.describe() for c in row.missed_cuts()) or "none"
        lines.append(f"\n{row.name}: switches shown late: {late}. Cuts missed: {missed}.")
    for row in rows:
        if row.quality_gap_late:
            gaps = ", ".join(
                f"{scheme} {mean:+.3f} ± {error:.3f}"
                for scheme, (mean, error) in row.quality_gap_late.items()
            )
            lines.append(
                f"\n{row.name}, late quality of relative positions minus: {gaps} (mean ± standard error "
                f"over {math.ceil(window / QUALITY_CHUNK)} chunks of {QUALITY_CHUNK} frames, paired)"
            )
    return "\n".join(lines)


def write_card(world: World, text: str) -> Path:
    """Replace the evaluation section of the bundle's model card with `text`."""
    path = Path(world.source) / CARD_FILE
    card = (
        path.read_text()
        if path.is_file()
        else f"# {world.name}\n\n## Evaluation\n\n" + "\n".join(EVAL_MARKERS)
    )
    start, end = card.index(EVAL_MARKERS[0]), card.index(EVAL_MARKERS[1])
    path.write_text(card[: start + len(EVAL_MARKERS[0])] + "\n" + text + "\n" + card[end:])
    return path
