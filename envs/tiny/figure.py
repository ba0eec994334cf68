"""The README's picture: one rollout of a world model with a prompt switch and a RoPE Cut.

Three shots of nine latent frames each (three blocks of three, or nine blocks of one): a day walk
east, a switch to night (a prompt change, so a KV Flush), then a cut to the desert walking north (a
RoPE Cut). Each shot is a row of twelve evenly spaced frames of the model with the ground-truth world
under the same commands beneath it.

    python -m envs.figure --model tiny --out docs/rollout.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from envs.tiny.evaluate import ModelRollout, Rollout, TruthRollout
from worldsim.bundle import load
from worldsim.world import World

# (biome, condition, action, cut, title) of each shot, three blocks each
SHOTS = (
    ("meadow", "day", "east", False, "meadow, daylight, walking east"),
    ("meadow", "night", "east", False, "prompt switch (KV Flush): night"),
    ("desert", "night", "north", True, "RoPE Cut: desert, walking north"),
)
SHOT_LATENT_FRAMES = 9  # each shot: 9 latent frames (3 blocks of 3, or 9 blocks of 1)
COLUMNS = 12  # frames shown of each shot, evenly spaced


def shot_frames(rollout: Rollout, seed: int, blocks_per_shot: int) -> list[list[np.ndarray]]:
    """Per shot, the shown frames of its blocks, in order."""
    rollout.start(*SHOTS[0][:3], seed=seed)
    shots = []
    for biome, condition, action, cut, _ in SHOTS:
        blocks = [rollout.step(biome, condition, action, cut=cut and b == 0) for b in range(blocks_per_shot)]
        video = np.concatenate(blocks)
        shots.append([video[i] for i in np.linspace(0, len(video) - 1, COLUMNS).round().astype(int)])
    return shots


def rollout_figure(world: World, seed: int = 0, scale: int = 2) -> np.ndarray:
    """The picture, (H, W, 3) uint8 RGB: per shot, a labelled row of model frames over ground-truth frames."""
    model, truth = ModelRollout(world), TruthRollout(*world.block_video_frames())
    blocks = max(1, SHOT_LATENT_FRAMES // world.config.block_frames)
    rows = zip(shot_frames(model, seed, blocks), shot_frames(truth, seed, blocks), strict=True)
    tile, pad, label = world.height * scale, 4, 16
    width = COLUMNS * tile + (COLUMNS - 1) * pad
    height = len(SHOTS) * (label + 2 * tile + 2 * pad)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (24, 24, 28)
    y = 0
    for index, (model_frames, truth_frames) in enumerate(rows):
        first_block = index * blocks
        title = (
            f"blocks {first_block}-{first_block + blocks - 1}: {SHOTS[index][4]}  (top: model, bottom: world)"
        )
        cv2.putText(image, title, (4, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (235, 235, 235), 1, cv2.LINE_AA)
        y += label
        for frames in (model_frames, truth_frames):
            for column, frame in enumerate(frames):
                x = column * (tile + pad)
                image[y : y + tile, x : x + tile] = cv2.resize(
                    frame, (tile, tile), interpolation=cv2.INTER_NEAREST
                )
            y += tile + pad
    return image


def save_png(image: np.ndarray, path: Path) -> None:
    """Write an RGB image as PNG (OpenCV stores BGR)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="bundle name or folder (default: tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/rollout.png"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_png(rollout_figure(load(args.model), seed=args.seed), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
