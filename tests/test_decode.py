"""Streaming decode and encode of a rollout equal diffusers' one-shot AutoencoderKLWan.decode/encode."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from models.streaming_vae import StreamingDecoder, StreamingEncoder, to_uint8_frames
from tests.conftest import LATENTS_MEAN, LATENTS_STD, tiny_vae


def normalisation() -> tuple[torch.Tensor, torch.Tensor]:
    """The test VAE's per-channel latent mean and std, shaped to broadcast over (B, C, T, h, w)."""
    return tuple(torch.tensor(v).view(1, -1, 1, 1, 1) for v in (LATENTS_MEAN, LATENTS_STD))


def in_parts(stream, video: torch.Tensor, split: list[int], state) -> list[torch.Tensor]:
    """`stream` applied to consecutive chunks of `video` along time, sized by `split`, sharing `state`."""
    bounds = itertools.accumulate(split, initial=0)
    return [stream(video[:, :, a:b], state) for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("split", [[1, 3, 3, 3], [3, 3, 3, 1], [2, 5, 1, 2]])
def test_streaming_decode_equals_one_shot_decode(split: list[int]) -> None:
    vae = tiny_vae()
    decoder = StreamingDecoder(vae, LATENTS_MEAN, LATENTS_STD)
    torch.manual_seed(0)
    latents = torch.randn(1, 4, sum(split), 8, 8)
    mean, std = normalisation()
    with torch.no_grad():
        whole = vae.decode(latents * std + mean).sample  # diffusers' own decode, cache cleared per call

    parts = in_parts(decoder.decode, latents, split, decoder.new_state())
    streamed = torch.cat(parts, dim=2)
    assert streamed.shape == whole.shape == (1, 3, 1 + (sum(split) - 1) * 4, 32, 32)
    torch.testing.assert_close(streamed, whole, atol=1e-6, rtol=0)
    assert torch.equal(to_uint8_frames(streamed), to_uint8_frames(whole))
    assert decoder.video_frames(split[0], first=True) == parts[0].shape[2]
    assert decoder.video_frames(split[1], first=False) == parts[1].shape[2]


@pytest.mark.parametrize("split", [[1, 12, 12], [9, 4, 8], [21]])
def test_streaming_encode_equals_one_shot_encode(split: list[int]) -> None:
    vae = tiny_vae()
    encoder = StreamingEncoder(vae, LATENTS_MEAN, LATENTS_STD)
    torch.manual_seed(0)
    video = torch.rand(1, 3, sum(split), 32, 32) * 2 - 1
    mean, std = normalisation()
    with torch.no_grad():
        whole = (vae.encode(video).latent_dist.mean - mean) / std  # diffusers' own encode

    streamed = torch.cat(in_parts(encoder.encode, video, split, encoder.new_state()), dim=2)
    assert streamed.shape == whole.shape == (1, 4, 1 + (sum(split) - 1) // 4, 8, 8)
    torch.testing.assert_close(streamed, whole, atol=1e-6, rtol=0)


def test_encoder_refuses_frame_counts_off_its_chunks() -> None:
    encoder = StreamingEncoder(tiny_vae(), LATENTS_MEAN, LATENTS_STD)
    state = encoder.new_state()
    with pytest.raises(ValueError, match="1 \\+ a multiple of 4 video frames here, got 4"):
        encoder.encode(torch.zeros(1, 3, 4, 32, 32), state)
    encoder.encode(torch.zeros(1, 3, 5, 32, 32), state)
    for frames in (5, 0):
        with pytest.raises(ValueError, match=f"a multiple of 4 video frames here, got {frames}"):
            encoder.encode(torch.zeros(1, 3, frames, 32, 32), state)


def test_decoder_rejects_mismatched_normalisation() -> None:
    with pytest.raises(ValueError, match="3 means and 4 stds for a VAE with 4 latent channels"):
        StreamingDecoder(tiny_vae(), [0.0] * 3, [1.0] * 4)


def test_uint8_frames_round_trip_through_video_tensors() -> None:
    from models.streaming_vae import from_uint8_frames, to_uint8_frames

    frames = np.random.default_rng(0).integers(0, 256, size=(2, 5, 4, 6, 3), dtype=np.uint8)
    video = from_uint8_frames(frames)
    assert video.shape == (2, 3, 5, 4, 6) and video.min() >= -1.0 and video.max() <= 1.0
    assert np.array_equal(to_uint8_frames(video).numpy(), frames)
