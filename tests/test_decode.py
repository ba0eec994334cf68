"""Streaming decode and encode of a rollout equal diffusers' one-shot AutoencoderKLWan.decode/encode."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from models.streaming_vae import (
    FrameWiseCausalConv3d,
    StreamingDecoder,
    StreamingEncoder,
    WanCausalConv3d,
    to_uint8_frames,
    use_frame_convolutions,
    use_stock_convolutions,
)
from tests.conftest import LATENTS_MEAN, LATENTS_STD, tiny_vae


def normalisation() -> tuple[torch.Tensor, torch.Tensor]:
    """The test VAE's per-channel latent mean and std, shaped to broadcast over (B, C, T, h, w)."""
    return tuple(torch.tensor(v).view(1, -1, 1, 1, 1) for v in (LATENTS_MEAN, LATENTS_STD))


def in_parts(stream, video: torch.Tensor, split: list[int], state) -> list[torch.Tensor]:
    """`stream` applied to consecutive chunks of `video` along time, sized by `split`, sharing `state`."""
    bounds = itertools.accumulate(split, initial=0)
    return [stream(video[:, :, a:b], state) for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "frames", "cached"),
    [
        ((3, 3, 3), 1, 1, 1, 2),  # the decoder's residual convolutions, one new frame after two cached
        ((3, 3, 3), 1, 1, 4, 0),  # a video's first chunk: zero causal padding
        ((3, 1, 1), 1, (1, 0, 0), 2, 1),  # the upsampler's temporal convolution
        ((1, 1, 1), 1, 0, 3, 0),  # shortcuts
        ((3, 3, 3), (1, 2, 2), 1, 3, 2),  # spatial stride
        ((3, 1, 1), (2, 1, 1), 0, 4, 1),  # temporal stride: the encoder's downsampler, left 3D
    ],
)
def test_frame_wise_convolution_equals_the_3d_convolution(kernel, stride, padding, frames, cached) -> None:
    torch.manual_seed(0)
    stock = WanCausalConv3d(6, 5, kernel, stride=stride, padding=padding)
    fast = use_frame_convolutions(WanCausalConv3d(6, 5, kernel, stride=stride, padding=padding))
    fast.load_state_dict(stock.state_dict())
    assert type(fast) is FrameWiseCausalConv3d and fast.state_dict().keys() == stock.state_dict().keys()
    x = torch.randn(2, 6, frames, 9, 10, requires_grad=True)
    cache = torch.randn(2, 6, cached, 9, 10) if cached else None
    want, got = stock(x, cache), fast(x, cache)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the same gradients too, as VAE training runs through it
    (grad_want,) = torch.autograd.grad(want.square().sum(), x)
    (grad_got,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(grad_got, grad_want, atol=1e-4, rtol=1e-5)


def test_frame_convolutions_switch_every_causal_convolution_and_keep_the_weights() -> None:
    vae = tiny_vae()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    assert use_frame_convolutions(vae) is vae
    convolutions = [m for m in vae.modules() if isinstance(m, WanCausalConv3d)]
    assert convolutions and all(type(m) is FrameWiseCausalConv3d for m in convolutions)
    after = vae.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert use_stock_convolutions(vae) is vae  # and back: diffusers' modules, the same weights
    assert all(type(m) is WanCausalConv3d for m in convolutions)
    assert all(torch.equal(vae.state_dict()[k], before[k]) for k in before)


@pytest.mark.parametrize("split", [[1, 3, 3, 3], [3, 3, 3, 1], [2, 5, 1, 2]])
def test_streaming_decode_equals_one_shot_decode(split: list[int]) -> None:
    stock = tiny_vae()  # diffusers' modules untouched: the decoder below switches its own VAE's convolutions
    vae = tiny_vae()
    decoder = StreamingDecoder(vae, LATENTS_MEAN, LATENTS_STD)
    torch.manual_seed(0)
    latents = torch.randn(1, 4, sum(split), 8, 8)
    mean, std = normalisation()
    with torch.no_grad():
        whole = vae.decode(latents * std + mean).sample  # diffusers' own decode, cache cleared per call
        reference = stock.decode(latents * std + mean).sample

    parts = in_parts(decoder.decode, latents, split, decoder.new_state())
    streamed = torch.cat(parts, dim=2)
    assert streamed.shape == whole.shape == (1, 3, 1 + (sum(split) - 1) * 4, 32, 32)
    torch.testing.assert_close(streamed, whole, atol=1e-6, rtol=0)
    assert torch.equal(to_uint8_frames(streamed), to_uint8_frames(whole))
    # the frame-wise convolutions change only the order of float additions
    torch.testing.assert_close(streamed, reference, atol=1e-5, rtol=0)
    assert decoder.video_frames(split[0], first=True) == parts[0].shape[2]
    assert decoder.video_frames(split[1], first=False) == parts[1].shape[2]


@pytest.mark.parametrize("split", [[1, 12, 12], [9, 4, 8], [21]])
def test_streaming_encode_equals_one_shot_encode(split: list[int]) -> None:
    stock, vae = tiny_vae(), tiny_vae()
    encoder = StreamingEncoder(vae, LATENTS_MEAN, LATENTS_STD)
    torch.manual_seed(0)
    video = torch.rand(1, 3, sum(split), 32, 32) * 2 - 1
    mean, std = normalisation()
    with torch.no_grad():
        whole = (vae.encode(video).latent_dist.mean - mean) / std  # diffusers' own encode
        reference = (stock.encode(video).latent_dist.mean - mean) / std

    streamed = torch.cat(in_parts(encoder.encode, video, split, encoder.new_state()), dim=2)
    assert streamed.shape == whole.shape == (1, 4, 1 + (sum(split) - 1) // 4, 8, 8)
    torch.testing.assert_close(streamed, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(streamed, reference, atol=1e-5, rtol=0)


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
