"""The fixed-size self-attention KV cache of a rollout (infinity-RoPE, arXiv 2511.20649).

Per layer the cache holds the un-rotated keys and values of at most ``capacity`` committed
frames: the first ``sink_frames`` of them are the global sink and are never evicted, the rest are
the most recent frames. Committing a block evicts the oldest non-sink frames; a KV Flush trims the
cache to the sink plus the last few frames. Buffers are allocated once, so memory does not grow
with the length of the rollout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

LayerKV = tuple[Tensor, Tensor]


def frames_to_keep(frames: int, capacity: int, sink_frames: int) -> list[int]:
    """Which of `frames` frames (oldest first) a cache of `capacity` keeps: the sink, then the newest."""
    sinks = list(range(min(sink_frames, frames)))
    return sinks + list(range(max(len(sinks), frames - (capacity - len(sinks))), frames))


class KVCache:
    """Keys/values of the sink and the most recent committed frames, for every layer."""

    def __init__(self, num_layers: int, capacity: int, sink_frames: int) -> None:
        if sink_frames > capacity:
            raise ValueError(f"the sink ({sink_frames} frames) does not fit in a cache of {capacity} frames")
        self.num_layers = num_layers
        self.capacity = capacity
        self.sink_frames = sink_frames
        self.frame_indices: list[int] = []  # rollout index of each held frame, oldest first
        self._keys: list[Tensor] = []  # per layer (B, capacity * tokens_per_frame, heads, head_dim)
        self._values: list[Tensor] = []
        self._tokens_per_frame = 0

    @property
    def frames(self) -> int:
        """Number of frames held."""
        return len(self.frame_indices)

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values."""
        return sum(t.numel() * t.element_size() for t in (*self._keys, *self._values))

    def layers(self) -> list[LayerKV] | None:
        """Per layer (keys, values) of the held frames, (B, frames * tokens, heads, hd); None if empty."""
        if not self.frame_indices:
            return None
        end = self.frames * self._tokens_per_frame
        return [(k[:, :end], v[:, :end]) for k, v in zip(self._keys, self._values, strict=True)]

    def commit(self, block_kv: Sequence[LayerKV], frame_indices: Sequence[int]) -> None:
        """Add a finished block's keys/values, evicting the oldest non-sink frames beyond capacity."""
        if len(block_kv) != self.num_layers:
            raise ValueError(f"expected keys/values for {self.num_layers} layers, got {len(block_kv)}")
        new_frames = len(frame_indices)
        tokens = block_kv[0][0].shape[1]
        if tokens % new_frames:
            raise ValueError(f"{tokens} tokens do not split into {new_frames} frames")
        if not self._keys:
            self._allocate(block_kv[0][0], tokens // new_frames)
        elif tokens // new_frames != self._tokens_per_frame:
            raise ValueError("a block's frame size differs from the cached frames'")

        combined = [*self.frame_indices, *frame_indices]
        keep = frames_to_keep(len(combined), self.capacity, self.sink_frames)
        self._gather(block_kv, keep)
        self.frame_indices = [combined[i] for i in keep]

    def flush(self, keep_frames: int) -> None:
        """KV Flush: keep only the sink and the last `keep_frames` committed frames."""
        keep = frames_to_keep(self.frames, min(self.sink_frames, self.frames) + keep_frames, self.sink_frames)
        if keep != list(range(self.frames)):
            self._gather(None, keep)
            self.frame_indices = [self.frame_indices[i] for i in keep]

    def clear(self) -> None:
        """Forget every frame (the buffers stay allocated)."""
        self.frame_indices = []

    def _allocate(self, like: Tensor, tokens_per_frame: int) -> None:
        self._tokens_per_frame = tokens_per_frame
        shape = (like.shape[0], self.capacity * tokens_per_frame, *like.shape[2:])
        self._keys = [like.new_zeros(shape) for _ in range(self.num_layers)]
        self._values = [like.new_zeros(shape) for _ in range(self.num_layers)]

    def _gather(self, block_kv: Sequence[LayerKV] | None, keep: list[int]) -> None:
        """Rewrite the buffers to hold frames `keep` of (held frames + the block's frames).

        `keep` is always a prefix (the sink) and a contiguous tail, so two slices do it.
        """
        sinks = min(self.sink_frames, len(keep))
        tail_start = keep[sinks] if sinks < len(keep) else None
        per_frame, sink_tokens = self._tokens_per_frame, sinks * self._tokens_per_frame
        for layer in range(self.num_layers):
            for buffers, part in ((self._keys, 0), (self._values, 1)):
                frames = buffers[layer][:, : self.frames * per_frame]
                if block_kv is not None:
                    frames = torch.cat([frames, block_kv[layer][part].to(frames.dtype)], dim=1)
                tail = frames[:, tail_start * per_frame :] if tail_start is not None else frames[:, :0]
                kept = torch.cat([frames[:, :sink_tokens], tail], dim=1)  # a copy: sources may overlap
                buffers[layer][:, : kept.shape[1]] = kept
