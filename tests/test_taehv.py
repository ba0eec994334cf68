"""TAEHV's decoder on tiny random weights with its real key names: streaming equals the whole video."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.checkpoint import CheckpointError
from models.taehv import STAGES, StreamingTAEHV, TAEHVDecoder, load_taehv

WIDTHS = (8, 8, 4, 4)
BIASES = {1: True, 8: False, 14: False, 20: False, 22: True}  # as in taew2_1.pth


def checkpoint(path, seed: int = 0) -> TAEHVDecoder:
    torch.manual_seed(seed)
    model = TAEHVDecoder(WIDTHS, 16, BIASES)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    state = dict(model.state_dict())
    state["encoder.1.weight"] = torch.zeros(4, 3, 3, 3)  # a TAEHV file holds its encoder too
    torch.save(state, path)
    return model


def parallel_decode(model: TAEHVDecoder, latents: torch.Tensor) -> torch.Tensor:
    """The whole video at once: each memory block sees its input shifted one step in time (zeros first)."""
    x = latents[0].transpose(0, 1)  # (T, C, h, w)
    x = F.relu(model.layer(1)(3 * torch.tanh(x / 3)))
    for first, _, grow, conv in STAGES:
        for index in range(first, first + 3):
            past = torch.cat([torch.zeros_like(x[:1]), x[:-1]])
            x = model.layer(index)(x, past)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        stride = model.layer(grow).stride
        x = model.layer(grow).conv(x)  # (T, s C, H, W): step t's group k is output step s t + k
        x = x.unflatten(1, (stride, -1)).flatten(0, 1)
        x = model.layer(conv)(x)
    frames = model.layer(22)(F.relu(x)).clamp(0, 1)[3:]  # the first 3 frames of a video are dropped
    return frames.transpose(0, 1)[None] * 2 - 1


def test_the_checkpoint_keys_are_taehvs_and_the_sizes_are_read_from_them(tmp_path) -> None:
    checkpoint(tmp_path / "taew.pth")
    model = load_taehv(tmp_path / "taew.pth")
    names = set(model.state_dict())
    keys = (
        "decoder.1.weight", "decoder.1.bias", "decoder.3.conv.0.weight", "decoder.5.conv.4.bias",
        "decoder.7.conv.weight", "decoder.8.weight", "decoder.13.conv.weight", "decoder.22.bias",
    )  # fmt: skip
    for key in keys:
        assert key in names, key
    assert "decoder.8.bias" not in names and model.layer(13).conv.weight.shape == (16, 8, 1, 1)
    torch.save({"decoder.1.weight": torch.zeros(8, 16, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="not a TAEHV checkpoint"):
        load_taehv(tmp_path / "partial.pth")


def test_streaming_decode_equals_the_whole_video_at_once(tmp_path) -> None:
    # float64: random weights grow activations, and in float32 the two orders of summation then part
    # by up to 5e-4; in float64 they agree to the output's float32 rounding
    model = checkpoint(tmp_path / "taew.pth").double()
    fast = load_taehv(tmp_path / "taew.pth").double()
    decoder = StreamingTAEHV(fast, torch.nn.Identity(), torch.zeros(1), torch.ones(1))
    latents = torch.randn(1, 16, 5, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        whole = parallel_decode(model, latents).float()
    state = decoder.new_state()
    parts = [decoder.decode(latents[:, :, :1], state), decoder.decode(latents[:, :, 1:3], state)]
    parts.append(decoder.decode(latents[:, :, 3:], state))
    assert (
        [p.shape[2] for p in parts]
        == [1, 8, 8]
        == [decoder.video_frames(1, True), *[decoder.video_frames(2, False)] * 2]
    )
    streamed = torch.cat(parts, dim=2)
    assert streamed.shape == (1, 3, 17, 32, 32) and streamed.min() >= -1 and streamed.max() <= 1
    torch.testing.assert_close(streamed, whole, atol=1e-6, rtol=0)


def test_a_world_decodes_with_taehv_when_asked(tmp_path) -> None:
    import worldsim
    from tests.test_wan_files import SIZE, build_original
    from worldsim.bundle import LoadOptions

    checkpoint(tmp_path / "taew.pth")
    folder = tmp_path / "wan"
    folder.mkdir()
    build_original(folder)
    plain = worldsim.load(folder, options=LoadOptions(size=SIZE))
    fast = worldsim.load(folder, options=LoadOptions(size=SIZE, decoder=f"taehv:{tmp_path / 'taew.pth'}"))
    assert isinstance(fast.decoder, StreamingTAEHV) and any("TAEHV" in note for note in fast.notes)
    assert fast.weights_hash() != plain.weights_hash()
    session = fast.session("a meadow", seed=0)
    first, second = session.step(), session.step()
    assert first.frames.shape == (9, 32, 32, 3) and second.frames.shape == (12, 32, 32, 3)
    from worldsim.batch import BatchSession

    batch = BatchSession(fast, ["a meadow", "a desert"], [0, 1])  # batched rollouts decode row by row
    ours = [batch.step()[0], batch.step()[0]]
    assert [b.frames.shape for b in ours] == [(9, 32, 32, 3), (12, 32, 32, 3)]
    assert float((ours[1].latents - second.latents).abs().max()) < 1e-4
    with pytest.raises(worldsim.BundleError, match="unknown decoder 'tae'"):
        worldsim.load(folder, options=LoadOptions(size=SIZE, decoder="tae"))
