"""A loaded world model: transformer, streaming decoder, text encoder and engine settings, on a device.

A ``World`` is what sessions run on; ``worldsim.bundle`` makes one from files (``worldsim.load``)
or from random weights (``worldsim.random_world``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from models.causal_wan import CausalWanTransformer, TextContext
from models.streaming_vae import StreamingDecoder
from models.text import CachedTextEncoder
from worldsim.config import EngineConfig
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
    _contexts: OrderedDict[str, TextContext] = field(default_factory=OrderedDict, init=False, repr=False)
    _weights_hash: str | None = field(default=None, init=False, repr=False)

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

    def block_video_frames(self, config: EngineConfig | None = None) -> tuple[int, int]:
        """Video frames of the first block a session returns, and of every later block.

        The decoder turns a video's very first latent frame into one video frame and every later one
        into `temporal_stride`; after lead-in blocks, the first block shown is a later one.
        """
        config = config or self.config
        later = self.decoder.video_frames(config.block_frames, first=False)
        if config.lead_in_blocks:
            return later, later
        return self.decoder.video_frames(config.block_frames, first=True), later

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
            for prefix, module in (("transformer.", self.model.transformer), ("vae.", self.decoder.vae)):
                for name, tensor in sorted(module.state_dict().items()):
                    digest.update((prefix + name + str(tuple(tensor.shape)) + str(tensor.dtype)).encode())
                    digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._weights_hash = digest.hexdigest()
        return self._weights_hash

    def session(
        self, prompt: str, seed: int = 0, config: EngineConfig | None = None, **settings: Any
    ) -> Session:
        """Start a rollout from `prompt` with the world's settings, or `config`, changed by `settings`."""
        config = config or self.config
        return Session(self, prompt, seed=seed, config=config.replace(**settings) if settings else config)
