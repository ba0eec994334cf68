"""Temporal RoPE positions for each generated block (infinity-RoPE, arXiv 2511.20649, section 3).

Keys are cached un-rotated, so every call can place the frames of its window anywhere in time.
Three schemes:

- ``relative`` (Block-Relativistic RoPE): the frames in the window get 0..F-1 in window order,
  the global sink at 0 and the current block at the end. Once the window is full the block always
  sits at W-n..W-1, however long the rollout, so no position ever leaves the training horizon.
- ``onset``: the same relative layout shifted so that the block starts at ``onset_frame`` (the
  paper's f0 = 21) and earlier frames are placed backwards from it.
- ``absolute``: every frame keeps its index in the rollout; positions grow without bound. This is
  what a model sees without infinity-RoPE, kept for comparison.

A RoPE Cut moves the block's positions by ``cut_delta`` for the one block after the cut.
"""

from __future__ import annotations

from collections.abc import Sequence

from worldsim.config import EngineConfig


def block_positions(
    config: EngineConfig,
    held_frame_indices: Sequence[int],
    block_start_index: int,
    cut: bool = False,
) -> list[int]:
    """Temporal positions of the window: one per held frame, then one per frame of the block.

    held_frame_indices: rollout indices of the frames the cache holds, oldest first;
    block_start_index: rollout index of the block's first frame; cut: the block follows a RoPE Cut.
    """
    held = len(held_frame_indices)
    n = config.block_frames
    if config.positions == "relative":
        positions = list(range(held + n))
    elif config.positions == "onset":
        positions = list(range(config.onset_frame - held, config.onset_frame + n))
    else:  # absolute
        positions = [*held_frame_indices, *range(block_start_index, block_start_index + n)]
    if cut:
        positions[held:] = [p + config.cut_delta for p in positions[held:]]
    return positions


def largest_position(config: EngineConfig) -> int | None:
    """The largest temporal position a block outside a cut can get, or None where they grow forever."""
    if config.positions == "relative":
        return config.window_frames - 1
    if config.positions == "onset":
        return config.onset_frame + config.block_frames - 1
    return None  # absolute
