"""One block of the infinity-RoPE rollout for a batch of rollouts: the steps inference and training share.

``Session.step`` (inference) and the tiny model's training rollout (``envs.tiny.losses``) both
go through these two functions, so what is trained is exactly what runs (a test proves them
bit-identical):

1. ``open_block``: a KV Flush on each rollout whose prompt changed, a RoPE Cut on each that cuts,
   then each rollout's window: the temporal positions of its held frames and its block
   (``worldsim.positions``), the cached keys/values and which of them are real;
2. the caller runs the model on the block against the window (``BlockWindow.predict``): the
   sampler's denoising steps at inference, a noised training block in training;
3. ``close_block``: the context pass over the finished block writes its keys/values into the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from models.causal_wan import CausalWanTransformer, LayerKV, TextContext
from worldsim.cache import KVCache
from worldsim.config import EngineConfig
from worldsim.positions import block_positions


@dataclass(frozen=True)
class BlockWindow:
    """What the block being generated attends to, for every rollout of a batch."""

    starts: tuple[int, ...]  # per rollout: its rollout index of the block's first latent frame
    frames: int  # latent frames in the block
    positions: list[list[int]]  # per rollout: its held frames (padded to the cache's slots), then the block
    past: list[LayerKV] | None  # per layer the cached keys/values, (B, slots * tokens, heads, head_dim)
    key_mask: Tensor | None  # (B, (slots + frames) * tokens): which keys are real; None when all are
    flushed: tuple[bool, ...]  # per rollout: a KV Flush ran before this block (a prompt change or a cut)
    cut: tuple[bool, ...]  # per rollout: a RoPE Cut ran before this block
    held: tuple[int, ...] = ()  # per rollout: the frames it holds in the cache (before this block)

    @property
    def batch(self) -> int:
        """Rollouts in the batch."""
        return len(self.positions)

    def row_positions(self, row: int) -> list[int]:
        """Rollout `row`'s positions without padding: its held frames, then the block."""
        positions, held = self.positions[row], self.held[row]
        padding = len(positions) - self.frames - held
        return [*positions[:held], *positions[held + padding :]]

    def predict(
        self, model: CausalWanTransformer, latents: Tensor, timestep: Tensor, text: TextContext
    ) -> tuple[Tensor, list[LayerKV]]:
        """The model's flow for the block (and its keys/values), attending to the window.

        `latents` may hold several copies of the batch one after another (a prompt and the empty
        prompt, for guidance): each copy attends to the same window.
        """
        copies = latents.shape[0] // self.batch
        if copies * self.batch != latents.shape[0]:
            raise ValueError(f"a call over {latents.shape[0]} latents for a window of {self.batch} rollouts")
        past, key_mask = self.past, self.key_mask
        if copies > 1 and past is not None:
            if self.batch == 1:  # a view, no copy
                past = [(k.expand(copies, -1, -1, -1), v.expand(copies, -1, -1, -1)) for k, v in past]
            else:
                past = [(k.repeat(copies, 1, 1, 1), v.repeat(copies, 1, 1, 1)) for k, v in past]
            key_mask = None if key_mask is None else key_mask.repeat(copies, 1)
        # one rollout: one position list serves every copy
        positions = self.positions[0] if self.batch == 1 else self.positions * copies
        return model(latents, timestep, text, positions, past, key_mask)


def open_block(
    cache: KVCache,
    config: EngineConfig,
    start: int | Sequence[int],
    changed: Sequence[bool],
    cut: Sequence[bool],
) -> BlockWindow:
    """Steps 1-2 of a block: flush or cut each rollout that asks for it; the window of the block at `start`.

    start: the rollout index of the block's first frame, one for all rollouts or one per rollout
    (rollouts of a batch that started over at different times); changed[b]: rollout b's prompt
    changed before this block (a KV Flush if the engine flushes on a change); cut[b]: rollout b cuts
    to a new scene (a RoPE Cut, with a flush). Before a rollout's first block there is nothing to
    flush or cut.
    """
    starts = (start,) * cache.batch if isinstance(start, int) else tuple(start)
    if len(changed) != cache.batch or len(cut) != cache.batch or len(starts) != cache.batch:
        raise ValueError(
            f"{len(starts)} starts, {len(changed)} prompt changes and {len(cut)} cuts "
            f"for {cache.batch} rollouts"
        )
    cuts = tuple(bool(c) and s > 0 for c, s in zip(cut, starts, strict=True))
    flushed = tuple(
        c or (bool(p) and config.flush_on_prompt_change and s > 0)
        for p, c, s in zip(changed, cuts, starts, strict=True)
    )
    fresh = [b for b, c in enumerate(cuts) if c and not config.cut_keeps_sink]
    cache.clear(fresh)  # a fresh window: the cut block's first frame becomes the new sink
    cache.flush(config.flush_keep_frames, [b for b, f in enumerate(flushed) if f and b not in fresh])
    positions = [
        block_positions(config, held, s, cut=c and config.cut_keeps_sink)
        for held, s, c in zip(cache.held, starts, cuts, strict=True)
    ]
    return BlockWindow(
        starts=starts,
        frames=config.block_frames,
        positions=cache.pad_positions(positions),
        past=cache.layers(),
        key_mask=cache.key_mask(config.block_frames),
        flushed=flushed,
        cut=cuts,
        held=tuple(len(h) for h in cache.held),
    )


def close_block(
    model: CausalWanTransformer,
    cache: KVCache,
    window: BlockWindow,
    context: Tensor,
    timestep: Tensor,
    text: TextContext,
) -> None:
    """Step 3 of a block: the context pass over the finished block; its keys/values go into the cache."""
    _, block_kv = window.predict(model, context, timestep, text)
    cache.commit(block_kv, [list(range(s, s + window.frames)) for s in window.starts])
