"""The fixed-size self-attention KV cache of a batch of rollouts (infinity-RoPE, arXiv 2511.20649).

Per layer the cache holds the un-rotated keys and values of at most ``capacity`` committed frames
of every rollout: the first ``sink_frames`` of them are the global sink and are never evicted, the
rest are the most recent frames. Committing a block evicts the oldest non-sink frames; a KV Flush
trims a rollout's frames to the sink plus the last few. Memory is bounded by the capacity, however
long the rollouts run.

Every update gathers the kept frames into new tensors (never writes in place), so the same code
serves inference under ``torch.no_grad()`` and training, where gradients flow through the cache.
Rollouts of a batch may hold different numbers of frames (one was flushed, another not): their
frames are packed at the front of each row, and ``key_mask`` says which slots are real.

The cache can also keep the latent frames whose keys/values it holds (what each context pass
was run on), so that a recache can run them again under another prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from models.causal_wan import LayerKV


def frames_to_keep(frames: int, capacity: int, sink_frames: int) -> list[int]:
    """Which of `frames` frames (oldest first) a cache of `capacity` keeps: the sink, then the newest."""
    sinks = list(range(min(sink_frames, frames)))
    return sinks + list(range(max(len(sinks), frames - (capacity - len(sinks))), frames))


class KVCache:
    """Keys/values of the sink and the most recent committed frames, for every layer and rollout."""

    def __init__(self, num_layers: int, capacity: int, sink_frames: int, batch: int = 1) -> None:
        if sink_frames > capacity:
            raise ValueError(f"the sink ({sink_frames} frames) does not fit in a cache of {capacity} frames")
        if batch < 1:
            raise ValueError(f"a cache holds at least one rollout, not {batch}")
        self.num_layers = num_layers
        self.capacity = capacity
        self.sink_frames = sink_frames
        self.batch = batch
        # per rollout, the rollout index of each held frame, oldest first
        self.held: list[list[int]] = [[] for _ in range(batch)]
        self._layers: list[LayerKV] = []  # per layer (B, slots * tokens_per_frame, heads, head_dim)
        self._tokens_per_frame = 0
        # per rollout, by rollout index, the latent frame (C, h, w) of each held frame given to commit
        self._contexts: list[dict[int, Tensor]] = [{} for _ in range(batch)]

    def frames(self, row: int = 0) -> int:
        """Number of frames rollout `row` holds."""
        return len(self.held[row])

    @property
    def slots(self) -> int:
        """Frames each row of the buffers has room for: the most any rollout holds."""
        return max(len(h) for h in self.held)

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values."""
        return sum(t.numel() * t.element_size() for kv in self._layers for t in kv)

    def layers(self) -> list[LayerKV] | None:
        """Per layer (keys, values) of the held frames, (B, slots * tokens, heads, hd); None if empty."""
        return list(self._layers) if self.slots else None

    def key_mask(self, block_frames: int) -> Tensor | None:
        """Which keys of a block's window are real, (B, (slots + block_frames) * tokens) bool.

        None when every rollout holds the same number of frames: then every key is real.
        """
        lengths = [len(h) for h in self.held]
        if len(set(lengths)) == 1:
            return None
        device = self._layers[0][0].device
        slot = torch.arange(self.slots + block_frames, device=device)
        held = torch.tensor(lengths, device=device)[:, None]
        real = (slot[None] < held) | (slot[None] >= self.slots)  # (B, slots + block_frames)
        return real.repeat_interleave(self._tokens_per_frame, dim=1)

    def pad_positions(self, positions: Sequence[Sequence[int]]) -> list[list[int]]:
        """Each rollout's window positions (its held frames, then the block), padded to the buffers' slots.

        The padding stands where a shorter row's empty slots are; ``key_mask`` hides those keys.
        """
        padded = []
        for held, row in zip(self.held, positions, strict=True):
            real = len(held)
            padded.append([*row[:real], *[0] * (self.slots - real), *row[real:]])
        return padded

    def commit(
        self,
        block_kv: Sequence[LayerKV],
        frame_indices: Sequence[int] | Sequence[Sequence[int]],
        contexts: Tensor | None = None,
    ) -> None:
        """Add a finished block's keys/values to every rollout, evicting the oldest non-sink frames.

        frame_indices: the rollout indices of the block's frames, the same for every rollout or a
        list per rollout; contexts: the block's latents (B, C, n, h, w) the keys/values were made
        from, kept with them (``held_contexts``).
        """
        if len(block_kv) != self.num_layers:
            raise ValueError(f"expected keys/values for {self.num_layers} layers, got {len(block_kv)}")
        per_row: list[list[int]] = (
            [list(f) for f in frame_indices]  # type: ignore[arg-type]
            if frame_indices and not isinstance(frame_indices[0], int)
            else [list(frame_indices)] * self.batch  # type: ignore[arg-type]
        )
        if len(per_row) != self.batch or len({len(f) for f in per_row}) != 1:
            raise ValueError(
                f"frame indices for {len(per_row)} rollouts of unequal blocks, for a cache of {self.batch}"
            )
        new_frames = len(per_row[0])
        tokens = block_kv[0][0].shape[1]
        if tokens % new_frames:
            raise ValueError(f"{tokens} tokens do not split into {new_frames} frames")
        if block_kv[0][0].shape[0] != self.batch:
            raise ValueError(f"a block of {block_kv[0][0].shape[0]} rollouts for a cache of {self.batch}")
        if self._tokens_per_frame and tokens // new_frames != self._tokens_per_frame:
            raise ValueError("a block's frame size differs from the cached frames'")
        self._tokens_per_frame = tokens // new_frames

        slots = self.slots
        sources, held = [], []
        for row, block_indices in zip(self.held, per_row, strict=True):
            # slot of each frame in (this row's buffer slots, then the block's frames)
            combined = [*range(len(row)), *range(slots, slots + new_frames)]
            indices = [*row, *block_indices]
            keep = frames_to_keep(len(combined), self.capacity, self.sink_frames)
            sources.append([combined[i] for i in keep])
            held.append([indices[i] for i in keep])
        current = self.layers()
        layers = []
        for layer, (keys, values) in enumerate(block_kv):
            if current is not None:
                held_keys, held_values = current[layer]
                keys = torch.cat([held_keys, keys.to(held_keys.dtype)], dim=1)
                values = torch.cat([held_values, values.to(held_values.dtype)], dim=1)
            layers.append(self._gather(keys, values, sources))
        self._layers, self.held = layers, held
        if contexts is not None:
            for rollout, block_indices in enumerate(per_row):
                for frame, index in enumerate(block_indices):
                    self._contexts[rollout][index] = contexts[rollout, :, frame]
        self._forget_contexts()

    def held_contexts(self, row: int = 0) -> Tensor | None:
        """The latent frames of rollout `row`'s held frames, (C, frames, h, w) oldest first; None when
        a held frame was committed without its latents (or none is held)."""
        kept = self._contexts[row]
        if not self.held[row] or any(index not in kept for index in self.held[row]):
            return None
        return torch.stack([kept[index] for index in self.held[row]], dim=1)

    def _forget_contexts(self) -> None:
        """Drop the latents of frames no longer held."""
        self._contexts = [
            {i: kept[i] for i in held if i in kept}
            for kept, held in zip(self._contexts, self.held, strict=True)
        ]

    def flush(self, keep_frames: int, rows: Iterable[int] | None = None) -> None:
        """KV Flush: the given rollouts (all by default) keep only the sink and their last `keep_frames`."""
        self._select(rows, lambda held: min(self.sink_frames, held) + keep_frames)

    def clear(self, rows: Iterable[int] | None = None) -> None:
        """Forget every frame of the given rollouts (all by default)."""
        self._select(rows, lambda held: 0)

    def check_rows(self, rows: Sequence[int]) -> list[int]:
        """`rows` as distinct rollouts of this cache; ValueError naming the problem otherwise."""
        rows = list(rows)
        if len(set(rows)) != len(rows) or not all(
            isinstance(r, int) and not isinstance(r, bool) and 0 <= r < self.batch for r in rows
        ):
            raise ValueError(f"rows must be distinct rollouts of 0..{self.batch - 1}, not {rows}")
        return rows

    def take(self, rows: Sequence[int]) -> KVCache:
        """A new cache holding copies of the given rollouts' frames, in that order."""
        rows = self.check_rows(rows)
        taken = KVCache(self.num_layers, self.capacity, self.sink_frames, batch=len(rows))
        taken._tokens_per_frame = self._tokens_per_frame
        taken.held = [list(self.held[r]) for r in rows]
        taken._contexts = [dict(self._contexts[r]) for r in rows]
        current = self.layers()
        if current is not None:
            sources = [list(range(len(self.held[r]))) for r in rows]
            taken._layers = [taken._gather(k[list(rows)], v[list(rows)], sources) for k, v in current]
        return taken

    def put(self, rows: Sequence[int], other: KVCache) -> None:
        """Replace the given rollouts' frames by those of `other`'s rollouts, one for one."""
        rows = self.check_rows(rows)
        if len(rows) != other.batch:
            raise ValueError(f"{other.batch} rollouts put into {len(rows)} rows")
        if (other.num_layers, other.capacity, other.sink_frames) != (
            self.num_layers,
            self.capacity,
            self.sink_frames,
        ):
            raise ValueError("a cache of another shape cannot be put into this one")
        if self._tokens_per_frame and other._tokens_per_frame not in (0, self._tokens_per_frame):
            raise ValueError("the caches' frames differ in size")
        self._tokens_per_frame = self._tokens_per_frame or other._tokens_per_frame
        replaced = dict(zip(rows, range(other.batch), strict=True))
        held = [
            list(other.held[replaced[r]]) if r in replaced else list(row) for r, row in enumerate(self.held)
        ]
        mine, theirs = self.layers(), other.layers()
        self.held = held
        self._contexts = [
            dict(other._contexts[replaced[r]]) if r in replaced else kept
            for r, kept in enumerate(self._contexts)
        ]
        if mine is None and theirs is None:
            self._layers = []
            return
        like = (mine or theirs)[0][0]  # type: ignore[index]
        width = max(buffers[0][0].shape[1] for buffers in (mine, theirs) if buffers is not None)
        source_rows = [self.batch + replaced[r] if r in replaced else r for r in range(self.batch)]
        sources = [list(range(len(h))) for h in held]
        layers = []
        for layer in range(self.num_layers):
            # this cache's rows, then the other's, both padded to the same slots
            parts = [
                _padded(mine, layer, self.batch, width, like),
                _padded(theirs, layer, other.batch, width, like),
            ]
            keys = torch.cat([part[0] for part in parts])[source_rows]
            values = torch.cat([part[1] for part in parts])[source_rows]
            layers.append(self._gather(keys, values, sources))
        self._layers = layers

    def _select(self, rows: Iterable[int] | None, capacity_of: Callable[[int], int]) -> None:
        """Keep, in each chosen rollout, the sink and the newest frames that fit `capacity_of(held)`."""
        chosen = set(range(self.batch) if rows is None else rows)
        sources, held = [], []
        for index, row in enumerate(self.held):
            keep = list(range(len(row)))
            if index in chosen:
                capacity = capacity_of(len(row))
                keep = frames_to_keep(len(row), capacity, self.sink_frames) if capacity else []
            sources.append(keep)
            held.append([row[i] for i in keep])
        if held == self.held:
            return
        current = self.layers()
        self.held = held
        self._forget_contexts()
        if current is not None:
            self._layers = [self._gather(k, v, sources) for k, v in current]

    def _gather(self, keys: Tensor, values: Tensor, sources: list[list[int]]) -> LayerKV:
        """New buffers holding, in each row, the frames at slots `sources[row]` of (keys, values).

        Rows with fewer frames than the longest are padded with copies of their first slot (or of
        slot 0), which ``key_mask`` hides.
        """
        width = max(len(s) for s in sources)
        per_frame = self._tokens_per_frame
        if width == 0:
            return keys[:, :0], values[:, :0]
        slot = torch.tensor([[*s, *[0] * (width - len(s))] for s in sources], device=keys.device)
        token = (slot[:, :, None] * per_frame + torch.arange(per_frame, device=keys.device)).flatten(1)
        if keys.shape[0] == 1:  # one rollout: a plain index, the common case
            return keys[:, token[0]], values[:, token[0]]
        row = torch.arange(keys.shape[0], device=keys.device)[:, None]
        return keys[row, token], values[row, token]


def _padded(layers: list[LayerKV] | None, layer: int, batch: int, tokens: int, like: Tensor) -> LayerKV:
    """One layer's buffers padded with zeros to at least `tokens` tokens (zeros shaped `like` if none)."""
    if layers is None:
        zeros = like.new_zeros(batch, tokens, *like.shape[2:])
        return zeros, zeros
    keys, values = layers[layer]
    missing = tokens - keys.shape[1]
    if missing > 0:
        keys = torch.cat([keys, keys.new_zeros(batch, missing, *keys.shape[2:])], dim=1)
        values = torch.cat([values, values.new_zeros(batch, missing, *values.shape[2:])], dim=1)
    return keys, values
