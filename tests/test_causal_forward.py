"""The causal cached forward against diffusers' own WanTransformer3DModel.forward."""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from models.causal_wan import CausalWanTransformer
from tests.conftest import tiny_transformer
from worldsim.cache import KVCache


def test_first_block_equals_diffusers_forward() -> None:
    transformer = tiny_transformer()
    model = CausalWanTransformer(transformer)
    torch.manual_seed(1)
    latents = torch.randn(2, 4, 3, 8, 8)
    timestep = torch.tensor([937.5, 625.0])
    text = torch.randn(2, 5, 16)
    with torch.no_grad():
        reference = transformer(latents, timestep, text).sample
        flow, _ = model(latents, timestep, model.encode_text(text), [0, 1, 2])
    torch.testing.assert_close(flow, reference, atol=1e-5, rtol=0)


class BlockCausalProcessor(WanAttnProcessor):
    """diffusers' own attention processor, with a block-causal mask on self-attention."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is None:
            attention_mask = self.mask
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)


def test_cached_rollout_equals_block_causal_full_forward() -> None:
    transformer = tiny_transformer()
    model = CausalWanTransformer(transformer)
    block, blocks, tokens = 3, 4, 16  # 12 latent frames: the whole rollout fits in the cache
    torch.manual_seed(2)
    latents = torch.randn(1, 4, block * blocks, 8, 8)
    timestep = torch.tensor([500.0])
    text = torch.randn(1, 5, 16)

    frame_of_token = torch.arange(block * blocks).repeat_interleave(tokens)
    block_of_token = frame_of_token // block
    mask = block_of_token[:, None] >= block_of_token[None, :]  # query may see keys of its block and earlier
    for layer in transformer.blocks:
        layer.attn1.set_processor(BlockCausalProcessor(mask))
    with torch.no_grad():
        reference = transformer(latents, timestep, text).sample
    for layer in transformer.blocks:
        layer.attn1.set_processor(WanAttnProcessor())

    context = model.encode_text(text)
    cache = KVCache(model.num_layers, capacity=block * blocks, sink_frames=1)
    flows = []
    with torch.no_grad():
        for b in range(blocks):
            frames = list(range(b * block, (b + 1) * block))
            positions = [*cache.held[0], *frames]
            flow, kv = model(latents[:, :, frames], timestep, context, positions, cache.layers())
            cache.commit(kv, frames)
            flows.append(flow)
    torch.testing.assert_close(torch.cat(flows, dim=2), reference, atol=1e-5, rtol=0)


def test_positions_are_relative_inside_attention() -> None:
    """Shifting every temporal position by the same amount leaves the output unchanged (RoPE is relative)."""
    model = CausalWanTransformer(tiny_transformer())
    torch.manual_seed(3)
    latents = torch.randn(1, 4, 6, 8, 8)
    context = model.encode_text(torch.randn(1, 5, 16))
    t = torch.tensor([750.0])
    with torch.no_grad():
        _, kv = model(latents[:, :, :3], t, context, [0, 1, 2])
        at_zero, _ = model(latents[:, :, 3:], t, context, [0, 1, 2, 3, 4, 5], kv)
        far, _ = model(latents[:, :, 3:], t, context, [9000, 9001, 9002, 9003, 9004, 9005], kv)
        gapped, _ = model(latents[:, :, 3:], t, context, [0, 1, 2, 40, 41, 42], kv)
    torch.testing.assert_close(far, at_zero, atol=2e-4, rtol=0)
    assert (gapped - at_zero).abs().max() > 1e-3


def test_per_sample_positions_equal_separate_calls() -> None:
    model = CausalWanTransformer(tiny_transformer())
    torch.manual_seed(4)
    latents = torch.randn(2, 4, 6, 8, 8)
    context = model.encode_text(torch.randn(2, 5, 16))
    t = torch.tensor([750.0, 250.0])
    first = [[0, 1, 2, 3, 4, 5], [0, 1, 2, 45, 46, 47]]
    with torch.no_grad():
        _, kv = model(latents[:, :, :3], t, context, [0, 1, 2])
        batched, _ = model(latents[:, :, 3:], t, context, first, kv)
        for b in range(2):
            ctx = type(context)(
                tuple(k[b : b + 1] for k in context.keys), tuple(v[b : b + 1] for v in context.values)
            )
            past = [(k[b : b + 1], v[b : b + 1]) for k, v in kv]
            alone, _ = model(latents[b : b + 1, :, 3:], t[b : b + 1], ctx, first[b], past)
            torch.testing.assert_close(batched[b : b + 1], alone, atol=1e-5, rtol=0)


def test_past_keys_rotated_once_give_the_same_bits() -> None:
    """forward(rotated_past=rotate_past(...)) is forward(past) exactly, per-sample positions and masks too."""
    model = CausalWanTransformer(tiny_transformer())
    torch.manual_seed(2)
    batch, tokens = 2, 16
    past = [(torch.randn(batch, 3 * tokens, 2, 12), torch.randn(batch, 3 * tokens, 2, 12)) for _ in range(2)]
    latents, timestep = torch.randn(batch, 4, 1, 8, 8), torch.tensor([500.0, 250.0])
    text = model.encode_text(torch.randn(batch, 5, 16))
    mask = torch.ones(batch, 4 * tokens, dtype=torch.bool)
    mask[0, 2 * tokens : 3 * tokens] = False  # rollout 0 holds one frame fewer
    for positions, key_mask in (([0, 1, 2, 3], None), ([[0, 1, 0, 2], [0, 1, 2, 3]], mask)):
        with torch.no_grad():
            plain, plain_kv = model(latents, timestep, text, positions, past, key_mask)
            rotated = model.rotate_past(past, positions, (8, 8))
            once, once_kv = model(latents, timestep, text, positions, past, key_mask, rotated_past=rotated)
        assert torch.equal(plain, once)
        assert all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
            for a, b in zip(plain_kv, once_kv, strict=True)
        )
