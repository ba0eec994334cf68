"""Streaming decode and encode for diffusers' ``AutoencoderKLWan`` (the Wan2.1 causal video VAE).

``AutoencoderKLWan.decode`` walks the latent video one frame at a time through causal 3D
convolutions, keeping each convolution's last input frames in a feature cache, and clears that
cache at the start and end of every call. A rollout that decodes block after block therefore cannot
use it directly. Here the caller owns the cache (``DecoderState``) and passes it in, so decoding a
video block by block runs exactly the same per-frame computation as decoding it whole: the first
latent frame becomes 1 video frame, every later one 4 (Wan's temporal stride). ``StreamingEncoder``
does the same for ``AutoencoderKLWan.encode``, which takes the first video frame alone and then
chunks of 4.

``use_frame_convolutions`` makes both run several times faster on a CPU: there PyTorch runs a 3D
convolution through its generic im2col kernel, while a 2D convolution takes the oneDNN path.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanRMS_norm
from torch import Tensor, nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)

# ---------------------------------------------------------------------------------------------
# Causal 3D convolutions as 2D convolutions, for the CPU
# ---------------------------------------------------------------------------------------------


class FrameWiseCausalConv3d(WanCausalConv3d):
    """``WanCausalConv3d`` that, on a CPU, convolves as a sum of 2D convolutions, one per temporal tap.

    Output frame t of a convolution with temporal kernel k and temporal stride 1 is
    sum_j conv2d(input frame t + j, weight[:, :, j]). Stacking the frames on the batch axis makes each
    tap one 2D convolution. The weights and state dict are the module's own; only the order of the
    additions differs, so results agree to float rounding (checked in tests/). Elsewhere (CUDA, or a
    layout this does not cover) it is the plain 3D convolution.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        plain = (
            input.device.type != "cpu"
            or self.stride[0] != 1
            or self.groups != 1
            or tuple(self.dilation) != (1, 1, 1)
            or tuple(self.padding) != (0, 0, 0)  # the causal padding is applied before, by F.pad
        )
        if plain:
            return super()._conv_forward(input, weight, bias)
        batch, channels, frames, height, width = input.shape
        taps = weight.shape[2]
        out_frames = frames - taps + 1
        out = torch.zeros(())  # replaced by the first tap's term
        for tap in range(taps):
            window = input[:, :, tap : tap + out_frames].transpose(1, 2).reshape(-1, channels, height, width)
            term = F.conv2d(window, weight[:, :, tap], bias if tap == 0 else None, self.stride[1:])
            out = term if tap == 0 else out + term  # (B*T', C_out, H', W')
        return out.unflatten(0, (batch, out_frames)).transpose(1, 2)  # (B, C_out, T', H', W')


def use_frame_convolutions(module: ModuleT) -> ModuleT:
    """Switch every ``WanCausalConv3d`` inside `module` to :class:`FrameWiseCausalConv3d`, in place.

    Only the class changes (the parameters and buffers stay), so the state dict, ``save_pretrained``
    and CUDA behaviour are those of diffusers' module. Returns `module`.
    """
    for layer in module.modules():
        if type(layer) is WanCausalConv3d:
            layer.__class__ = FrameWiseCausalConv3d
    return module


# Set, in a thread, while it decodes a batch of rollouts (StreamingDecoder.decode_rows).
_DECODING_ROWS = threading.local()


class RowsRMSNorm(WanRMS_norm):
    """``WanRMS_norm`` whose channel norm, while a thread decodes a batch of rollouts, is a plain sum of
    squares over the channels.

    ``F.normalize`` over dim 1 of a (B, C, T, H, W) tensor runs a slow strided reduction on a CPU
    (10-30 times slower than the sum here at the decoder's sizes); the two agree to float32
    rounding (about 1e-7), not bit for bit. ``StreamingDecoder.decode`` (a ``Session``) keeps
    diffusers' own bits, so recorded replays stay exact; ``decode_rows`` (a ``BatchSession``,
    even of one rollout) uses this, and its rows equal a single rollout's only to float rounding
    anyway (tests/test_batch.py).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not getattr(_DECODING_ROWS, "on", False) or not self.channel_first or x.dtype != torch.float32:
            return super().forward(x)
        norm = (x * x).sum(1, keepdim=True).sqrt().clamp_min(1e-12)  # F.normalize's eps
        return x / norm * self.scale * self.gamma + self.bias


def use_rows_norms(module: ModuleT) -> ModuleT:
    """Switch every ``WanRMS_norm`` inside `module` to :class:`RowsRMSNorm`, in place; returns `module`."""
    for layer in module.modules():
        if type(layer) is WanRMS_norm:
            layer.__class__ = RowsRMSNorm
    return module


def use_stock_convolutions(module: ModuleT) -> ModuleT:
    """Undo :func:`use_frame_convolutions`: every ``FrameWiseCausalConv3d`` inside `module` is diffusers'
    ``WanCausalConv3d`` again, in place; returns `module`.

    The frame-wise path wins for one video at a time (a rollout's decode, a clip's encode: about twice
    as fast), but not for a batch: 16 whole clips encode more than twice as fast through the stock
    3D convolution on a 2-core CPU.
    """
    for layer in module.modules():
        if type(layer) is FrameWiseCausalConv3d:
            stock: nn.Module = layer
            stock.__class__ = WanCausalConv3d
    return module


# Rows decoded in one call. 32 rollouts of 64x64 video in one call decoded slower per row than in
# calls of a few (a 32-rollout step's decode: 2.4 s in one call, 1.3-1.5 s in calls of 8, 1.1-1.2 s
# in calls of 2 or 4; 2 threads, two runs each).
DECODE_ROWS = 8


@dataclass
class DecoderState:
    """The decoder's causal feature cache and how many latent frames it has seen."""

    feature_cache: list = field(default_factory=list)
    latent_frames: int = 0


@dataclass
class EncoderState:
    """The encoder's causal feature cache and how many video frames it has seen."""

    feature_cache: list = field(default_factory=list)
    video_frames: int = 0


class _Streaming:
    """A Wan VAE with the per-channel normalisation of its latents.

    Takes the VAE over: its causal convolutions become frame-wise ones (`use_frame_convolutions`), in place.
    """

    part = ""  # "encoder" or "decoder": whose causal convolutions the cache holds

    def __init__(
        self, vae: AutoencoderKLWan, latents_mean: Sequence[float], latents_std: Sequence[float]
    ) -> None:
        if vae.config.patch_size is not None:
            raise ValueError("patchified Wan VAEs (Wan2.2) are not supported")
        if len(latents_mean) != vae.config.z_dim or len(latents_std) != vae.config.z_dim:
            raise ValueError(
                f"latent normalisation has {len(latents_mean)} means and {len(latents_std)} stds "
                f"for a VAE with {vae.config.z_dim} latent channels"
            )
        self.vae = use_rows_norms(use_frame_convolutions(vae))
        self.mean = torch.tensor(latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._num_convs = vae._cached_conv_counts[self.part]


class StreamingEncoder(_Streaming):
    """Encode video chunk by chunk to normalised latent means with an explicit causal cache."""

    part = "encoder"

    def new_state(self) -> EncoderState:
        """A fresh cache for a new video."""
        return EncoderState(feature_cache=[None] * self._num_convs)

    @torch.no_grad()
    def encode(self, video: Tensor, state: EncoderState) -> Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] to normalised latent means; updates `state`.

        A video's first call takes 1 + 4k frames (the first frame is coded alone), every later one 4k.
        """
        vae, frames = self.vae, video.shape[2]
        lead = 1 if state.video_frames == 0 else 0
        if frames == 0 or (frames - lead) % 4:
            what = "1 + a multiple of 4" if lead else "a multiple of 4"
            raise ValueError(f"the encoder takes {what} video frames here, got {frames}")
        x = video.to(vae.quant_conv.weight.dtype)
        chunks = [x[:, :, :lead]] if lead else []
        chunks += [x[:, :, i : i + 4] for i in range(lead, frames, 4)]
        out = []
        for chunk in chunks:
            out.append(vae.encoder(chunk, feat_cache=state.feature_cache, feat_idx=[0]))
            state.video_frames += chunk.shape[2]
        mu = vae.quant_conv(torch.cat(out, dim=2)).float()[:, : vae.config.z_dim]
        return (mu - self.mean.to(mu.device)) / self.std.to(mu.device)


class StreamingDecoder(_Streaming):
    """Decode normalised latents block by block with an explicit causal cache."""

    part = "decoder"

    @property
    def temporal_stride(self) -> int:
        """Video frames per latent frame after the first."""
        return 2 ** sum(self.vae.config.temperal_downsample)

    @property
    def spatial_stride(self) -> int:
        """Video pixels per latent pixel along each side."""
        return 2 ** (len(self.vae.config.dim_mult) - 1)

    def new_state(self) -> DecoderState:
        """A fresh cache for a new video."""
        return DecoderState(feature_cache=[None] * self._num_convs)

    def hashed_modules(self) -> list[tuple[str, nn.Module]]:
        """The modules whose weights make the frames (for a world's weights hash)."""
        return [("vae.", self.vae)]

    def video_frames(self, latent_frames: int, first: bool) -> int:
        """Video frames that `latent_frames` latent frames decode to (the very first one gives 1)."""
        return (
            (1 + (latent_frames - 1) * self.temporal_stride)
            if first
            else latent_frames * self.temporal_stride
        )

    @torch.no_grad()
    def decode(self, latents: Tensor, state: DecoderState) -> Tensor:
        """Decode normalised latents (B, C, T, h, w) to video (B, 3, T', H, W) in [-1, 1]; updates `state`."""
        vae = self.vae
        dtype = vae.post_quant_conv.weight.dtype
        z = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        z = vae.post_quant_conv(z.to(dtype))  # a 1x1x1 convolution: frame-local, no cache needed
        frames = []
        for i in range(z.shape[2]):
            conv_index = [0]
            frames.append(
                vae.decoder(
                    z[:, :, i : i + 1],
                    feat_cache=state.feature_cache,
                    feat_idx=conv_index,
                    first_chunk=state.latent_frames == 0,
                )
            )
            state.latent_frames += 1
        return torch.cat(frames, dim=2).clamp(-1.0, 1.0)

    @torch.no_grad()
    def decode_rows(self, latents: Tensor, states: Sequence[DecoderState]) -> list[Tensor]:
        """Decode a batch of rollouts (B, C, T, h, w), row b with its own `states[b]`; updates the states.

        Returns each row's video (1, 3, T', H, W): a rollout's very first latent frame decodes to
        fewer video frames than the others', so the rows may differ in length.

        Rows whose caches have settled (``_settled``: past their first two latent frames, with
        cached entries of the same shapes) go through the decoder together, DECODE_ROWS to a call;
        a rollout that has just started decodes on its own, because its first frame is decoded
        differently.
        """
        if len(states) != latents.shape[0]:
            raise ValueError(f"{len(states)} decoder states for a batch of {latents.shape[0]}")
        groups: dict[object, list[int]] = {}
        for row, state in enumerate(states):
            groups.setdefault(_settled(state) or ("alone", row), []).append(row)
        chunks = [
            rows[i : i + DECODE_ROWS] for rows in groups.values() for i in range(0, len(rows), DECODE_ROWS)
        ]
        before = getattr(_DECODING_ROWS, "on", False)
        _DECODING_ROWS.on = True
        try:
            return self._decode_chunks(latents, states, chunks)
        finally:
            _DECODING_ROWS.on = before

    def _decode_chunks(
        self, latents: Tensor, states: Sequence[DecoderState], chunks: list[list[int]]
    ) -> list[Tensor]:
        videos: dict[int, Tensor] = {}
        for rows in chunks:
            if len(rows) == 1:
                videos[rows[0]] = self.decode(latents[rows[0] : rows[0] + 1], states[rows[0]])
                continue
            caches = zip(*(states[row].feature_cache for row in rows), strict=True)
            merged = DecoderState(
                [None if parts[0] is None else torch.cat(parts) for parts in caches],
                states[rows[0]].latent_frames,  # settled rows: only "past the first frames" matters
            )
            video = self.decode(latents[rows], merged)
            for j, row in enumerate(rows):
                states[row].feature_cache = [
                    None if entry is None else entry[j : j + 1] for entry in merged.feature_cache
                ]
                states[row].latent_frames += latents.shape[2]
                videos[row] = video[j : j + 1]
        return [videos[row] for row in range(len(states))]


def _settled(state: DecoderState) -> tuple[tuple[int, ...] | None, ...] | None:
    """The shapes of a decoder state's cached entries once it has settled, else None.

    Settled: past its first two latent frames, with no placeholder left (diffusers marks a temporal
    upsampling's first frame with the string "Rep"); entries a decoder never fills stay None.
    """
    if state.latent_frames < 2 or any(isinstance(entry, str) for entry in state.feature_cache):
        return None
    return tuple(None if entry is None else tuple(entry.shape[1:]) for entry in state.feature_cache)


def from_uint8_frames(frames: np.ndarray) -> Tensor:
    """uint8 frames (B, T, H, W, 3) -> video (B, 3, T, H, W) in [-1, 1]; the inverse of to_uint8_frames."""
    return torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def to_uint8_frames(video: Tensor) -> Tensor:
    """Video (B, 3, T, H, W) in [-1, 1] -> uint8 frames (B, T, H, W, 3)."""
    pixels = ((video.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 4, 1).contiguous()
