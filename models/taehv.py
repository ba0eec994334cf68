"""A fast decoder for Wan latents: the decoder of TAEHV (a tiny autoencoder for video, MIT-licensed
weights ``taew2_1.pth`` by Ollin Boer Bohan), streamed block by block with an explicit state.

The architecture, as published (``decoder.N`` numbering of its checkpoint)::

    0 clamp: 3 tanh(x / 3)           1 conv 3x3 latent -> C0, 2 ReLU
    3-5 three memory blocks (C0)     6 upsample x2 (nearest)   7 time grow x1   8 conv C0 -> C1
    9-11 three memory blocks (C1)    12 upsample x2            13 time grow x2  14 conv C1 -> C2
    15-17 three memory blocks (C2)   18 upsample x2            19 time grow x2  20 conv C2 -> C3
    21 ReLU                          22 conv C3 -> 3 (RGB in [0, 1])

A memory block at time step t computes ``relu(f(cat[x_t, x_{t-1}]) + x_t)`` with f three 3x3
convolutions (ReLU between), where x_{t-1} is its own input one step before at its time rate
(zeros at the start). A time grow (1x1 convolution to s x C channels) turns each step into s steps,
channel group k becoming step k. So one latent frame becomes 4 video frames; the first 3 frames of a
video are dropped, so a video's first latent frame gives 1 frame and every later one 4, as Wan's
VAE does. It reads the latents the transformer makes (normalised), not the VAE's raw ones.

The widths (C0..C3, 256/128/64/64 for ``taew2_1``) and which convolutions have a bias are read off
the checkpoint, so the same code runs any checkpoint of this architecture.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.checkpoint import CheckpointError, load_tensor_file, require_finite

MEMORY = (3, 4, 5, 9, 10, 11, 15, 16, 17)  # indices of the memory blocks
STAGES = ((3, 6, 7, 8), (9, 12, 13, 14), (15, 18, 19, 20))  # first memory block, upsample, time grow, conv
TIME_STRIDES = (1, 2, 2)  # of the three time grows of taew2_1
FRAMES_TO_TRIM = 3  # the first frames of a video the decoder's time grows make before the first latent


class MemoryBlock(nn.Module):
    """relu(conv(cat[x, past]) + x): three 3x3 convolutions with ReLUs between, over a frame and its past."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        """One time step (B, C, H, W) given the block's input one step before."""
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + x)


class TimeGrow(nn.Module):
    """A 1x1 convolution to `stride` x C channels whose channel groups become `stride` time steps."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """One time step (B, C, H, W) -> `stride` time steps, in order."""
        return list(self.conv(x).chunk(self.stride, dim=1))


@dataclass
class TAEHVState:
    """What the decoder carries from one latent frame to the next: each memory block's last input."""

    past: dict[int, Tensor] = field(default_factory=dict)
    latent_frames: int = 0
    frames_to_trim: int = FRAMES_TO_TRIM


class TAEHVDecoder(nn.Module):
    """TAEHV's decoder as modules named like its checkpoint (``decoder.N``), run one step at a time."""

    def __init__(
        self, widths: tuple[int, int, int, int], latent_channels: int, biases: Mapping[int, bool]
    ) -> None:
        super().__init__()
        c0, c1, c2, c3 = widths
        layers: dict[int, nn.Module] = {
            1: nn.Conv2d(latent_channels, c0, 3, padding=1, bias=biases.get(1, True))
        }
        for (first, _, grow, conv), width, next_width, stride in zip(
            STAGES, (c0, c1, c2), (c1, c2, c3), TIME_STRIDES, strict=True
        ):
            for index in range(first, first + 3):
                layers[index] = MemoryBlock(width)
            layers[grow] = TimeGrow(width, stride)
            layers[conv] = nn.Conv2d(width, next_width, 3, padding=1, bias=biases.get(conv, False))
        layers[22] = nn.Conv2d(c3, 3, 3, padding=1, bias=biases.get(22, True))
        self.decoder = nn.ModuleDict({str(index): layer for index, layer in sorted(layers.items())})

    def layer(self, index: int) -> nn.Module:
        """The module at a checkpoint index."""
        return self.decoder[str(index)]

    def step(self, latent: Tensor, state: TAEHVState) -> list[Tensor]:
        """One latent frame (B, C, h, w) -> 4 video frames (B, 3, H, W) in [0, 1], in order."""
        x = F.relu(self.layer(1)(3.0 * torch.tanh(latent / 3.0)))
        steps = [x]
        for first, _, grow, conv in STAGES:
            grown = []
            for x in steps:
                for index in range(first, first + 3):
                    past = state.past.get(index)
                    x_in = x
                    x = self.layer(index)(x, torch.zeros_like(x) if past is None else past)
                    state.past[index] = x_in
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                grown += [self.layer(conv)(part) for part in self.layer(grow)(x)]
            steps = grown
        return [self.layer(22)(F.relu(x)).clamp(0.0, 1.0) for x in steps]


def load_taehv(path: str | Path) -> TAEHVDecoder:
    """The decoder of a TAEHV checkpoint (its ``decoder.*`` keys; the encoder's are not needed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such TAEHV file: {path}")
    state = load_tensor_file(path)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} is not a TAEHV checkpoint (not a dict of tensors)")
    decoder = {k: v for k, v in state.items() if isinstance(k, str) and k.startswith("decoder.")}
    try:
        c0, latent = decoder["decoder.1.weight"].shape[:2]
        widths = (
            int(c0),
            int(decoder["decoder.8.weight"].shape[0]),
            int(decoder["decoder.14.weight"].shape[0]),
            int(decoder["decoder.20.weight"].shape[0]),
        )
    except KeyError as err:
        raise CheckpointError(f"{path} is not a TAEHV checkpoint (no {err.args[0]})") from None
    require_finite(decoder, str(path))
    biases = {int(m.group(1)): True for k in decoder if (m := re.fullmatch(r"decoder\.(\d+)\.bias", k))}
    model = TAEHVDecoder(widths, int(latent), {i: i in biases for i in (1, 8, 14, 20, 22)})
    reference = model.state_dict()
    unexpected = sorted(set(decoder) - set(reference))
    missing = sorted(set(reference) - set(decoder))
    mismatched = [k for k in set(decoder) & set(reference) if decoder[k].shape != reference[k].shape]
    if unexpected or missing or mismatched:
        raise CheckpointError(
            f"{path} does not fit TAEHV's decoder: unexpected {unexpected[:3]}, missing {missing[:3]}, "
            f"other shapes {sorted(mismatched)[:3]}"
        )
    model.load_state_dict({k: v.float() for k, v in decoder.items()}, strict=True)
    return model.eval().requires_grad_(False)


class StreamingTAEHV:
    """Decode normalised Wan latents block by block with TAEHV, with the ``StreamingDecoder`` interface.

    `vae` is the world's full VAE, still used to encode start pictures; only decoding changes.
    """

    def __init__(self, decoder: TAEHVDecoder, vae: nn.Module, mean: Tensor, std: Tensor) -> None:
        self.taehv = decoder
        self.vae = vae
        self.mean, self.std = mean, std
        self.spatial_stride = 8
        self.temporal_stride = 4

    def new_state(self) -> TAEHVState:
        """A fresh state for a new video."""
        return TAEHVState()

    def video_frames(self, latent_frames: int, first: bool) -> int:
        """Video frames that `latent_frames` latent frames decode to (the very first one gives 1)."""
        return latent_frames * 4 - (FRAMES_TO_TRIM if first else 0)

    def hashed_modules(self) -> list[tuple[str, nn.Module]]:
        """The modules whose weights make the frames (for a world's weights hash)."""
        return [("vae.", self.vae), ("taehv.", self.taehv)]

    @torch.no_grad()
    def decode(self, latents: Tensor, state: TAEHVState) -> Tensor:
        """Normalised latents (B, C, T, h, w) -> video (B, 3, T', H, W) in [-1, 1]; updates `state`."""
        parameter = next(self.taehv.parameters())
        frames: list[Tensor] = []
        for t in range(latents.shape[2]):
            made = self.taehv.step(latents[:, :, t].to(parameter.device, parameter.dtype), state)
            state.latent_frames += 1
            dropped = min(state.frames_to_trim, len(made))
            state.frames_to_trim -= dropped
            frames += made[dropped:]
        return torch.stack(frames, dim=2).float() * 2.0 - 1.0

    def decode_rows(self, latents: Tensor, states: Sequence[TAEHVState]) -> list[Tensor]:
        """A batch of rollouts (B, C, T, h, w), row b with its own `states[b]`: each row's video.

        Row by row: TAEHV's memory blocks keep one state per video.
        """
        if len(states) != latents.shape[0]:
            raise ValueError(f"{len(states)} decoder states for a batch of {latents.shape[0]}")
        return [self.decode(latents[row : row + 1], state) for row, state in enumerate(states)]
