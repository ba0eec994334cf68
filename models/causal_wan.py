"""Block-causal, cached forward over diffusers' ``WanTransformer3DModel``.

The network is Wan2.1 (arXiv 2503.20314) as diffusers implements it: its modules and its weights
are used unchanged. What this file adds is the forward pass that autoregressive rollouts need
(Self-Forcing, arXiv 2506.08009; infinity-RoPE, arXiv 2511.20649):

- one block of latent frames is processed at a time, attending to the keys/values of earlier frames
  that the caller passes in (``past``), and its own un-rotated keys/values are handed back so the
  caller can keep them;
- temporal RoPE positions are explicit per call (``temporal_positions``), one per frame of the
  window ``past + block``, so the caller decides where in time each frame sits;
- cross-attention keys/values of a prompt are computed once (``encode_text``) and reused.

The forward follows diffusers' numerics operation by operation, so that on an empty past and
positions ``0..n-1`` it equals ``WanTransformer3DModel.forward`` (checked in tests/).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# Attention: every attention call of the model goes through one function.
# ---------------------------------------------------------------------------------------------

AttentionFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]


def sdpa_attention(query: Tensor, key: Tensor, value: Tensor, key_mask: Tensor | None = None) -> Tensor:
    """Attention with PyTorch SDPA; tensors are (B, S, heads, head_dim); `key_mask` (B, S_k): real keys."""
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, S_k), broadcast over heads
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)  # (B, S_q, heads, head_dim)


ATTENTION_BACKENDS: dict[str, AttentionFn] = {"sdpa": sdpa_attention}


# ---------------------------------------------------------------------------------------------
# 3D RoPE with explicit temporal positions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RopeTables:
    """cos/sin tables for a set of tokens, (1, tokens, 1, head_dim // 2) float32."""

    cos: Tensor
    sin: Tensor


class Rope3D:
    """Wan's 3D rotary embedding: head_dim split into temporal / height / width parts.

    Wan's split for head_dim 128 is 44 / 42 / 42 with theta 10000. Frequencies and angles are
    computed in float64 and rounded to float32 once, as diffusers does, so rotating a key at
    position p here and in diffusers gives the same bits.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        self.h_dim = self.w_dim = 2 * (head_dim // 6)
        self.t_dim = head_dim - self.h_dim - self.w_dim
        self.theta = theta
        self._cache: dict[tuple, RopeTables] = {}

    def _angles(self, positions: Tensor, dim: int) -> Tensor:
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        return torch.outer(positions.to(torch.float64), inv_freq)  # (P, dim // 2)

    def tables(
        self, temporal_positions: Sequence[float], height: int, width: int, device: torch.device
    ) -> RopeTables:
        """Tables for frames at the given temporal positions, each a grid of height x width tokens."""
        key = (tuple(float(p) for p in temporal_positions), height, width, str(device))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        frames = len(temporal_positions)
        t = self._angles(torch.tensor(key[0], dtype=torch.float64), self.t_dim)  # (F, t_dim / 2)
        h = self._angles(torch.arange(height), self.h_dim)  # (H, h_dim / 2)
        w = self._angles(torch.arange(width), self.w_dim)  # (W, w_dim / 2)
        angles = torch.cat(
            [
                t[:, None, None].expand(frames, height, width, -1),
                h[None, :, None].expand(frames, height, width, -1),
                w[None, None, :].expand(frames, height, width, -1),
            ],
            dim=-1,
        ).reshape(1, frames * height * width, 1, -1)  # (1, F*H*W, 1, head_dim / 2)
        tables = RopeTables(angles.cos().float().to(device), angles.sin().float().to(device))
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[key] = tables
        return tables


def _position_lists(
    temporal_positions: Sequence[float] | Sequence[Sequence[float]],
) -> Sequence[Sequence[float]]:
    """The window's positions as a list per batch element (one list when the batch shares them)."""
    per_sample = isinstance(temporal_positions[0], Sequence)
    return cast(Sequence[Sequence[float]], temporal_positions if per_sample else [temporal_positions])


def apply_rope(x: Tensor, tables: RopeTables) -> Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, S, heads, head_dim) by the tables' angles."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, S, heads, head_dim / 2) each
    rotated = torch.stack([x1 * tables.cos - x2 * tables.sin, x1 * tables.sin + x2 * tables.cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


# ---------------------------------------------------------------------------------------------
# The causal model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextContext:
    """Cross-attention keys/values of one prompt for every layer, each (B, text_len, heads, head_dim)."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]

    @staticmethod
    def concat(contexts: Sequence[TextContext]) -> TextContext:
        """The contexts stacked along the batch, for one call over several prompts."""
        return TextContext(
            tuple(torch.cat(layer) for layer in zip(*(c.keys for c in contexts), strict=True)),
            tuple(torch.cat(layer) for layer in zip(*(c.values for c in contexts), strict=True)),
        )

    def rows(self, rows: Sequence[int]) -> TextContext:
        """The context of some prompts of the batch, in that order."""
        index = list(rows)
        return TextContext(tuple(k[index] for k in self.keys), tuple(v[index] for v in self.values))


LayerKV = tuple[Tensor, Tensor]  # un-rotated (keys, values), each (B, tokens, heads, head_dim)


class CausalWanTransformer(nn.Module):
    """A ``WanTransformer3DModel`` run one block of frames at a time against a window of past keys."""

    def __init__(self, transformer: WanTransformer3DModel, attention: str = "sdpa") -> None:
        super().__init__()
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {attention!r}; known: {sorted(ATTENTION_BACKENDS)}")
        config = transformer.config
        if config.image_dim is not None or config.added_kv_proj_dim is not None:
            raise ValueError("image-conditioned Wan transformers are not supported (text-to-video only)")
        self.transformer = transformer
        self.attention = ATTENTION_BACKENDS[attention]
        self.heads = config.num_attention_heads
        self.head_dim = config.attention_head_dim
        self.patch_size = tuple(config.patch_size)
        self.rope = Rope3D(self.head_dim)

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks."""
        return len(self.transformer.blocks)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the projection weights (the compute dtype)."""
        return self.transformer.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.transformer.proj_out.weight.device

    def tokens_per_frame(self, latent_height: int, latent_width: int) -> int:
        """Number of tokens one latent frame of this size becomes after patching."""
        _, p_h, p_w = self.patch_size
        return (latent_height // p_h) * (latent_width // p_w)

    def encode_text(self, text_states: Tensor) -> TextContext:
        """Project text-encoder states (B, text_len, text_dim) to every layer's cross-attention K/V."""
        context = self.transformer.condition_embedder.text_embedder(text_states.to(self.dtype))  # (B, L, dim)
        keys, values = [], []
        for block in self.transformer.blocks:
            attn = block.attn2
            keys.append(attn.norm_k(attn.to_k(context)).unflatten(2, (self.heads, -1)))  # (B, L, heads, hd)
            values.append(attn.to_v(context).unflatten(2, (self.heads, -1)))
        return TextContext(tuple(keys), tuple(values))

    def rotate_past(
        self,
        past: Sequence[LayerKV],
        temporal_positions: Sequence[float] | Sequence[Sequence[float]],
        latent_size: tuple[int, int],
    ) -> list[Tensor]:
        """Per layer the past keys rotated to their window positions, for ``forward(rotated_past=...)``.

        temporal_positions: the window's positions as ``forward`` takes them (past frames, then the
        block's); latent_size: (height, width) of a latent frame.
        """
        _, p_h, p_w = self.patch_size
        window = self._window_tables(
            _position_lists(temporal_positions),
            latent_size[0] // p_h,
            latent_size[1] // p_w,
            past[0][0].device,
        )
        past_tokens = past[0][0].shape[1]
        rope_past = RopeTables(window.cos[:, :past_tokens], window.sin[:, :past_tokens])
        return [apply_rope(keys, rope_past) for keys, _ in past]

    def _window_tables(
        self, position_lists: Sequence[Sequence[float]], grid_h: int, grid_w: int, device: torch.device
    ) -> RopeTables:
        """RoPE tables of a window's keys: (1, F*H*W, 1, head_dim / 2) for one position list shared by
        the batch, (B, ...) for one list per batch element."""
        tables = [self.rope.tables(p, grid_h, grid_w, device) for p in position_lists]
        if len(tables) == 1:
            return tables[0]
        return RopeTables(torch.cat([t.cos for t in tables]), torch.cat([t.sin for t in tables]))

    def forward(
        self,
        latents: Tensor,
        timestep: Tensor,
        text: TextContext,
        temporal_positions: Sequence[float] | Sequence[Sequence[float]],
        past: Sequence[LayerKV] | None = None,
        key_mask: Tensor | None = None,
        rotated_past: Sequence[Tensor] | None = None,
    ) -> tuple[Tensor, list[LayerKV]]:
        """Predict the flow of one block and return it with the block's un-rotated K/V per layer.

        latents: (B, C, n, H, W) the block's latent frames; timestep: (B,) in [0, 1000];
        temporal_positions: one position per frame of the window, past frames first, the block's
        n frames last (or one such list per batch element); past: per layer (keys, values) of the
        past frames, (B, F_past*tokens, heads, hd); key_mask: (B, (F_past + n)*tokens) bool, which
        keys of the window are real (None: all), for batches whose elements hold different pasts;
        rotated_past: per layer the past keys already rotated to their positions
        (``rotate_past``), for calls that share a window: the same bits, rotated once.
        """
        t = self.transformer
        batch, _, frames, height, width = latents.shape
        p_t, p_h, p_w = self.patch_size
        grid_f, grid_h, grid_w = frames // p_t, height // p_h, width // p_w
        past_tokens = 0 if past is None else past[0][0].shape[1]
        tokens_per_frame = grid_h * grid_w
        position_lists = _position_lists(temporal_positions)
        if isinstance(temporal_positions[0], Sequence) and len(position_lists) != batch:
            raise ValueError(f"{len(position_lists)} position lists given for a batch of {batch}")
        for positions in position_lists:
            if len(positions) * tokens_per_frame != past_tokens + grid_f * tokens_per_frame:
                raise ValueError(
                    f"{len(positions)} temporal positions given for {past_tokens // tokens_per_frame} "
                    f"past frames and a block of {grid_f}"
                )

        # 1. RoPE tables: keys span the whole window, queries only the block (its last grid_f frames).
        rope_k = self._window_tables(position_lists, grid_h, grid_w, latents.device)
        query_start = past_tokens
        rope_q = RopeTables(rope_k.cos[:, query_start:], rope_k.sin[:, query_start:])

        # 2. Patch embedding.
        x = t.patch_embedding(latents.to(self.dtype))  # (B, dim, F, H/2, W/2)
        x = x.flatten(2).transpose(1, 2).contiguous()  # (B, F*H*W/4, dim)

        # 3. Timestep conditioning (the text half of the condition embedder is in encode_text).
        embedder = t.condition_embedder
        t_freq = embedder.timesteps_proj(timestep)  # (B, freq_dim)
        t_freq = t_freq.to(next(embedder.time_embedder.parameters()).dtype)
        temb = embedder.time_embedder(t_freq).type_as(x)  # (B, dim)
        modulation = embedder.time_proj(embedder.act_fn(temb)).unflatten(1, (6, -1))  # (B, 6, dim)

        # 4. Transformer blocks.
        new_kv: list[LayerKV] = []
        rope_past = RopeTables(rope_k.cos[:, :query_start], rope_k.sin[:, :query_start])
        for layer, block in enumerate(t.blocks):
            past_keys = past_values = None
            if past is not None:
                past_values = past[layer][1]
                past_keys = (
                    rotated_past[layer] if rotated_past is not None else apply_rope(past[layer][0], rope_past)
                )
            x, kv = self._block(
                block,
                x,
                modulation,
                text.keys[layer],
                text.values[layer],
                rope_q,
                past_keys,
                past_values,
                key_mask,
            )
            new_kv.append(kv)

        # 5. Output norm, projection and unpatchify.
        shift, scale = (t.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(
            2, dim=1
        )  # (B, 1, dim)
        x = (t.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = t.proj_out(x)  # (B, F*H*W/4, C*p_t*p_h*p_w)
        x = x.reshape(batch, grid_f, grid_h, grid_w, p_t, p_h, p_w, -1)
        flow = x.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)  # (B, C, F, H, W)
        return flow, new_kv

    def _block(
        self,
        block: WanTransformerBlock,
        x: Tensor,
        modulation: Tensor,
        text_keys: Tensor,
        text_values: Tensor,
        rope_q: RopeTables,
        past_keys: Tensor | None,
        past_values: Tensor | None,
        key_mask: Tensor | None,
    ) -> tuple[Tensor, LayerKV]:
        """One Wan block: self-attention over the window, cross-attention to text, feed-forward.

        past_keys are rotated to their positions already; the block's own keys are rotated here
        with the queries' tables (the block is the window's last frames).
        """
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            block.scale_shift_table + modulation.float()
        ).chunk(6, dim=1)  # (B, 1, dim) each

        # 1. Self-attention: the block's queries against past keys and its own.
        h = (block.norm1(x.float()) * (1 + scale_msa) + shift_msa).type_as(x)
        attn = block.attn1
        query = attn.norm_q(attn.to_q(h)).unflatten(2, (self.heads, -1))  # (B, S, heads, hd)
        key = attn.norm_k(attn.to_k(h)).unflatten(2, (self.heads, -1))
        value = attn.to_v(h).unflatten(2, (self.heads, -1))
        rotated_key = apply_rope(key, rope_q)
        if past_keys is not None and past_values is not None:
            all_keys = torch.cat([past_keys, rotated_key], dim=1)  # (B, S_past + S, heads, hd)
            all_values = torch.cat([past_values, value], dim=1)
        else:
            all_keys, all_values = rotated_key, value
        out = self.attention(apply_rope(query, rope_q), all_keys, all_values, key_mask)
        out = attn.to_out[0](out.flatten(2, 3).type_as(query))
        x = (x.float() + out * gate_msa).type_as(x)

        # 2. Cross-attention to the prompt.
        h = block.norm2(x.float()).type_as(x)
        attn = block.attn2
        query = attn.norm_q(attn.to_q(h)).unflatten(2, (self.heads, -1))
        out = self.attention(query, text_keys, text_values, None)
        x = x + attn.to_out[0](out.flatten(2, 3).type_as(query))

        # 3. Feed-forward.
        h = (block.norm3(x.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(x)
        x = (x.float() + block.ffn(h).float() * c_gate_msa).type_as(x)
        return x, (key, value)
