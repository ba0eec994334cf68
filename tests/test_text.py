"""Text states: whitening against a corpus of prompts, alone and on the tiny tier's MiniLM encoder."""

from __future__ import annotations

import pytest
import torch

from models.text import MiniLMTextEncoder, WhitenedTextEncoder, Whitening


def _corpus(generator: torch.Generator) -> torch.Tensor:
    """Anisotropic token states: a large shared direction plus small differences, zero-padded."""
    shared = 10 * torch.randn(64, generator=generator)
    states = shared + 0.5 * torch.randn(40, 12, 64, generator=generator)
    states[:, 9:] = 0  # padding
    return states


def test_whitening_decorrelates_the_corpus_and_keeps_padding_zero() -> None:
    states = _corpus(torch.Generator().manual_seed(0))
    whitening = Whitening.fit(states, shrinkage=0.0)
    out = whitening.apply(states)
    assert torch.all(out[:, 9:] == 0)
    tokens = out[:, :9].flatten(0, 1)
    covariance = torch.cov(tokens.T)
    torch.testing.assert_close(tokens.mean(0), torch.zeros(64), atol=1e-4, rtol=0)
    off_diagonal = covariance - torch.diag(covariance.diagonal())
    assert off_diagonal.abs().max() < 1e-3 * covariance.diagonal().mean()
    # the output keeps the corpus' mean token norm
    norms = tokens.norm(dim=-1).mean(), states[:, :9].norm(dim=-1).mean()
    torch.testing.assert_close(*norms, rtol=1e-4, atol=0)


def test_shrinkage_moves_the_transform_towards_a_scaled_identity() -> None:
    states = _corpus(torch.Generator().manual_seed(1))
    full = Whitening.fit(states, shrinkage=1.0).transform
    torch.testing.assert_close(full, full[0, 0] * torch.eye(64), atol=1e-5, rtol=0)


def test_whitening_round_trips_and_refuses_other_files(tmp_path) -> None:
    whitening = Whitening.fit(_corpus(torch.Generator().manual_seed(2)))
    whitening.save(tmp_path / "w.safetensors")
    loaded = Whitening.load(tmp_path / "w.safetensors")
    torch.testing.assert_close(loaded.transform, whitening.transform, atol=0, rtol=0)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"broken\.safetensors is not a text whitening file"):
        Whitening.load(tmp_path / "broken.safetensors")


def test_whitened_minilm_tells_prompts_that_differ_in_one_word_apart() -> None:
    plain = MiniLMTextEncoder(max_length=16)
    prompts = [
        f"a {biome}, {light}, walking {direction}"
        for biome in ("green meadow", "sandy desert")
        for light in ("bright daylight", "at night")
        for direction in ("north", "south", "east", "west")
    ]
    whitened = WhitenedTextEncoder(plain, Whitening.fit(torch.cat([plain.encode(p) for p in prompts])))

    def similarity(encoder, a: str, b: str) -> float:
        x, y = (encoder.encode(f"a green meadow, bright daylight, walking {d}").flatten() for d in (a, b))
        return float(x @ y / (x.norm() * y.norm()))

    for a, b in (("north", "south"), ("east", "west")):
        assert similarity(plain, a, b) > 0.9
        assert similarity(whitened, a, b) < similarity(plain, a, b) - 0.1
    with pytest.raises(ValueError, match="the whitening is 64 wide, the text encoder 384"):
        WhitenedTextEncoder(plain, Whitening.fit(_corpus(torch.Generator().manual_seed(3))))
