"""A loaded world model: transformer, streaming decoder, text encoder and engine settings, on a device.

A ``World`` is what sessions run on; ``worldsim.bundle`` makes one from files (``worldsim.load``)
or from random weights (``worldsim.random_world``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.causal_wan import CausalWanTransformer, TextContext
from models.streaming_vae import StreamingDecoder, StreamingEncoder, from_uint8_frames
from models.text import CachedTextEncoder
from worldsim.config import EngineConfig
from worldsim.image import fit_image
from worldsim.session import Session

# Prompts whose cross-attention keys/values stay on the device (Wan: ~94 MB each in bf16).
TEXT_CONTEXTS_KEPT = 8


@dataclass
class World:
    """Everything a session needs, loaded once and shared by all sessions."""

    name: str
    model: CausalWanTransformer
    decoder: StreamingDecoder
    text_encoder: CachedTextEncoder
    config: EngineConfig
    height: int
    width: int
    source: str = ""  # the folder it was loaded from, if any
    scenario: str | None = None  # path of the scenario file the bundle ships, if any
    notes: list[str] = field(default_factory=list)  # what loading chose (checkpoint entry, preset, ...)
    _contexts: OrderedDict[str, TextContext] = field(default_factory=OrderedDict, init=False, repr=False)
    _weights_hash: str | None = field(default=None, init=False, repr=False)
    _encoder: StreamingEncoder | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        stride = self.decoder.spatial_stride
        if self.height % (stride * 2) or self.width % (stride * 2):
            raise ValueError(f"video size {self.height}x{self.width} is not a multiple of {stride * 2}")

    @property
    def latent_channels(self) -> int:
        """Channels of a latent frame."""
        return int(self.model.transformer.config.in_channels)

    def latent_shape(self, frames: int) -> tuple[int, int, int, int, int]:
        """Shape (1, C, frames, h, w) of a latent block."""
        stride = self.decoder.spatial_stride
        return (1, self.latent_channels, frames, self.height // stride, self.width // stride)

    def block_video_frames(self, config: EngineConfig | None = None, image: bool = False) -> tuple[int, int]:
        """Video frames of the first block a session returns, and of every later block.

        The decoder turns a video's very first latent frame into one video frame and every later one
        into `temporal_stride`; after lead-in blocks or a start picture, the first block shown is a
        later one.
        """
        config = config or self.config
        later = self.decoder.video_frames(config.block_frames, first=False)
        if config.lead_in_blocks or image:
            return later, later
        return self.decoder.video_frames(config.block_frames, first=True), later

    def fit_image(self, image: np.ndarray) -> np.ndarray:
        """A picture scaled and centre-cropped to the world's frame size, (H, W, 3) uint8."""
        return fit_image(image, self.height, self.width)

    @torch.no_grad()
    def encode_image(self, image: np.ndarray, still_latents: int = 1) -> Tensor:
        """The normalised latent frame (1, C, 1, h, w) of a picture of the world's size.

        The picture is encoded as a still clip of `still_latents` latent frames (its first video frame,
        then 4 more per latent frame) and the last latent frame is kept: a causal encoder codes the
        first frame of a video apart, and a model trained on a stream's codes reads the later ones.
        """
        if image.shape != (self.height, self.width, 3):
            raise ValueError(f"a picture of {self.height}x{self.width} is needed, got {image.shape}")
        if self._encoder is None:
            mean, std = (t.flatten().tolist() for t in (self.decoder.mean, self.decoder.std))
            self._encoder = StreamingEncoder(self.decoder.vae, mean, std)
        frames = np.repeat(image[None, None], 1 + 4 * (still_latents - 1), axis=1)  # (1, T, H, W, 3)
        parameter = next(self.decoder.vae.parameters())
        video = from_uint8_frames(frames).to(parameter.device, parameter.dtype)
        latents = self._encoder.encode(video, self._encoder.new_state())
        return latents[:, :, -1:]

    def text_context(self, prompt: str) -> TextContext:
        """Cross-attention keys/values of `prompt`, computed once per prompt."""
        context = self._contexts.get(prompt)
        if context is None:
            states = self.text_encoder.encode(prompt).to(self.model.device)
            context = self.model.encode_text(states)
            self._contexts[prompt] = context
            if len(self._contexts) > TEXT_CONTEXTS_KEPT:
                self._contexts.popitem(last=False)
        else:
            self._contexts.move_to_end(prompt)
        return context

    def weights_hash(self) -> str:
        """SHA-256 of every transformer and VAE weight (computed once), identifying a model exactly."""
        if self._weights_hash is None:
            digest = hashlib.sha256()
            modules = [("transformer.", self.model.transformer), *self.decoder.hashed_modules()]
            for prefix, module in modules:
                for name, tensor in sorted(module.state_dict().items()):
                    digest.update((prefix + name + str(tuple(tensor.shape)) + str(tensor.dtype)).encode())
                    digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._weights_hash = digest.hexdigest()
        return self._weights_hash

    def session(
        self,
        prompt: str,
        seed: int = 0,
        config: EngineConfig | None = None,
        start_image: np.ndarray | None = None,
        **settings: Any,
    ) -> Session:
        """Start a rollout from `prompt` with the world's settings, or `config`, changed by `settings`.

        `start_image` (an RGB picture of any size) makes the rollout begin from it (``Session``).
        """
        config = config or self.config
        config = config.replace(**settings) if settings else config
        return Session(self, prompt, seed=seed, config=config, start_image=start_image)
