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

import numpy as np
from PIL import Image, ImageDraw

from envs.evaluation import ModelRollout, Rollout, TruthRollout, block_frame_counts
from worldsim.world import World, load

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


def rollout_figure(world: World, seed: int = 0, scale: int = 2) -> Image.Image:
    """The picture: per shot, a labelled row of model frames over a row of ground-truth frames."""
    model, truth = ModelRollout(world), TruthRollout(*block_frame_counts(world))
    blocks = max(1, SHOT_LATENT_FRAMES // world.config.block_frames)
    rows = zip(shot_frames(model, seed, blocks), shot_frames(truth, seed, blocks), strict=True)
    tile, pad, label = world.height * scale, 4, 16
    width = COLUMNS * tile + (COLUMNS - 1) * pad
    height = len(SHOTS) * (label + 2 * tile + 2 * pad)
    image = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(image)
    y = 0
    for index, (model_frames, truth_frames) in enumerate(rows):
        first_block = index * blocks
        title = SHOTS[index][4]
        draw.text((4, y + 2), f"blocks {first_block}-{first_block + blocks - 1}: {title}  "
                  "(top: model, bottom: world)", fill=(235, 235, 235))  # fmt: skip
        y += label
        for frames in (model_frames, truth_frames):
            for column, frame in enumerate(frames):
                x = column * (tile + pad)
                image.paste(Image.fromarray(frame).resize((tile, tile), Image.NEAREST), (x, y))
            y += tile + pad
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="bundle name or folder (default: tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/rollout.png"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rollout_figure(load(args.model), seed=args.seed).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
