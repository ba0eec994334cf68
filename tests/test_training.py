"""`worldsim train` end to end on a few steps, exact resumption, and the episodes it learns from."""

from __future__ import annotations

import dataclasses
import itertools
import shutil

import numpy as np
import pytest
import torch

from envs.procedural.probes import biome_of, classify, motion_direction
from envs.procedural.world import ACTION_TEXT, ACTIONS
from envs.tiny.config import TrainConfig, bundle_engine
from envs.tiny.data import build_dataset, dataset_episodes, encode_episodes, make_episode
from envs.tiny.losses import (
    Clips,
    decoder_frame_weights,
    own_prediction,
    prompt_changes,
    reconstruction_loss,
    rollout_loss,
    switch_weights,
    texture_loss,
)
from envs.tiny.stages import load_checkpoint
from envs.tiny.train import train, train_vae, tune_decoder
from worldsim.bundle import load_vae_folder, random_world
from worldsim.cache import KVCache
from worldsim.config import PRESETS, EngineConfig
from worldsim.rollout import open_block


def small(run, bundle, **changes) -> TrainConfig:
    values = dict(
        run_dir=str(run), bundle_dir=str(bundle), vae_steps=2, vae_batch=2, dataset_clips=4,
        decoder_steps=0, steps=2, batch=2, warmup_steps=1, checkpoint_every=1,
    )  # fmt: skip
    return TrainConfig(**{**values, **changes})


def test_episodes_have_the_vae_frame_count_and_follow_their_events() -> None:
    engine = PRESETS["tiny"].engine
    config = TrainConfig(p_cut=1.0)  # every later block starts with a cut
    episode = make_episode(np.random.default_rng(0), config, 4, engine)
    assert episode.frames.shape == (1 + 4 * (3 * 4 - 1), 64, 64, 3)
    assert episode.cuts == (False, True, True, True)
    scenes = [p.split(",")[0] for p in episode.prompts]
    assert all(a != b for a, b in itertools.pairwise(scenes))  # a cut always changes the biome
    assert biome_of(episode.frames[-12:]) in ("meadow", "desert", "tundra")


def test_a_warm_up_prepends_latent_frames_of_the_first_prompt_and_changes_no_draw() -> None:
    engine = PRESETS["tiny"].engine
    config = TrainConfig()
    plain = make_episode(np.random.default_rng(3), config, 2, engine)
    warm = make_episode(np.random.default_rng(3), config, 2, engine, warmup_latents=5)
    assert warm.frames.shape[0] == plain.frames.shape[0] + 4 * 5 and warm.warmup_latents == 5
    assert (warm.prompts, warm.cuts) == (plain.prompts, plain.cuts)
    assert np.array_equal(warm.frames[0], plain.frames[0])  # the same world, from the same place
    assert plain.prompts[0].endswith("walking north")  # so the clip starts further north
    assert not np.array_equal(warm.frames[4 * 5], plain.frames[0])


def test_switch_pasts_are_walks_under_the_new_prompt_that_arrive_where_the_block_begins() -> None:
    engine, config = PRESETS["tiny"].engine, TrainConfig(p_cut=0.5, p_condition_change=0.5)
    plain = make_episode(np.random.default_rng(5), config, 4, engine, warmup_latents=3)
    episode = make_episode(np.random.default_rng(5), config, 4, engine, warmup_latents=3, switch_pasts=True)
    assert not plain.pasts  # only on request, and the draws do not change
    assert (episode.prompts, episode.cuts) == (plain.prompts, plain.cuts)
    np.testing.assert_array_equal(episode.frames, plain.frames)
    switches = [k for k in range(1, 4) if episode.cuts[k] or episode.prompts[k] != episode.prompts[k - 1]]
    assert switches and [start for start, _ in episode.pasts] == [3 + 3 * k for k in switches]
    for (start, past), block in zip(episode.pasts, switches, strict=True):
        assert past.shape == (1 + 4 * 2, 64, 64, 3)
        first = episode.frames[4 * start - 3]  # the block's first frame, one step after the past's last
        assert classify(past[-1:]) == classify(first[None])
        action = next(a for a in ACTIONS if episode.prompts[block].endswith(ACTION_TEXT[a]))
        assert motion_direction(np.concatenate([past, first[None]])) == action


def test_encode_episodes_codes_each_stretch_behind_its_own_past() -> None:
    from diffusers import AutoencoderKLWan

    from models.streaming_vae import from_uint8_frames

    torch.manual_seed(0)
    vae = AutoencoderKLWan(**PRESETS["tiny"].vae).eval()
    engine, config = PRESETS["tiny"].engine, TrainConfig(p_cut=1.0)  # a past at every later block
    episodes = [
        make_episode(np.random.default_rng(seed), config, 3, engine, warmup_latents=2, switch_pasts=True)
        for seed in range(2)
    ]
    codes = encode_episodes(vae, episodes)
    assert codes.shape == (2, 16, 2 + 3 * 3, 16, 16)

    def encode(frames: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return vae.encode(from_uint8_frames(frames[None])).latent_dist.mean[0]

    for episode, got in zip(episodes, codes, strict=True):
        frames = episode.frames
        (first, past), (second, later_past) = episode.pasts
        assert (first, second) == (5, 8)
        torch.testing.assert_close(got[:, :first], encode(frames[: 4 * first - 3]), atol=1e-5, rtol=1e-4)
        stretch = encode(np.concatenate([past, frames[4 * first - 3 : 4 * second - 3]]))[:, 2:]
        torch.testing.assert_close(got[:, first:second], stretch, atol=1e-5, rtol=1e-4)
        last = encode(np.concatenate([later_past, frames[4 * second - 3 :]]))[:, 2:]
        torch.testing.assert_close(got[:, second:], last, atol=1e-5, rtol=1e-4)
        # a continuous encode carries the old scene into the first code after the cut
        assert not torch.allclose(encode(frames)[:, first], got[:, first], atol=1e-3)
    # without pasts it is the plain encode of every video
    plain = [make_episode(np.random.default_rng(s), config, 3, engine, warmup_latents=2) for s in range(2)]
    with torch.no_grad():
        whole = vae.encode(from_uint8_frames(np.stack([e.frames for e in plain]))).latent_dist.mean
    torch.testing.assert_close(encode_episodes(vae, plain), whole, atol=1e-5, rtol=1e-4)


def test_vae_trains_on_clips_longer_than_two_blocks_and_refuses_odd_lengths(tmp_path) -> None:
    config = small(tmp_path, tmp_path / "bundle", vae_steps=1, vae_batch=1, vae_clip_frames=33)
    train_vae(config, tmp_path)
    assert load_checkpoint(tmp_path / "vae.ckpt")["step"] == 1
    with pytest.raises(ValueError, match="1 \\+ a multiple of 4, got 32"):
        train_vae(small(tmp_path, tmp_path / "bundle", vae_clip_frames=32), tmp_path)


def test_train_writes_a_bundle_that_loads_and_plays(tmp_path) -> None:
    import worldsim

    bundle = train(small(tmp_path / "run", tmp_path / "bundle"))
    for name in ("worldsim.json", "scenario.toml", "MODEL_CARD.md", "train_config.json"):
        assert (bundle / name).is_file()
    world = worldsim.load(bundle)
    assert world.scenario is not None and world.text_encoder.dim == 384
    session = world.session("a green meadow, bright daylight, walking north")
    assert world.config.lead_in_blocks == TrainConfig().lead_in_blocks > 0
    assert session.step().frames.shape == (4, 64, 64, 3)  # blocks of one latent frame, after the lead-in
    assert session.step().frames.shape == (4, 64, 64, 3)
    assert (bundle / "text_whitening.safetensors").is_file()
    assert "| transformer training | 2 steps" in (bundle / "MODEL_CARD.md").read_text()
    config = TrainConfig()
    assert world.config.guidance_scale == config.guidance_scale
    assert len(world.config.denoising_steps) == config.sampling_steps
    assert world.config.training_horizon_frames == world.config.window_frames


def test_readme_figure_shows_model_and_world_rows() -> None:
    from envs.tiny.figure import COLUMNS, SHOTS, rollout_figure
    from worldsim.bundle import random_world

    world = random_world("tiny")
    image = np.asarray(rollout_figure(world, scale=1))
    tile = world.height
    assert image.shape[1] == COLUMNS * (tile + 4) - 4
    assert image.shape[0] == len(SHOTS) * (16 + 2 * (tile + 4))
    world_row = image[16 + tile + 4 : 16 + 2 * tile + 4, :tile]  # the ground truth under shot 1
    assert biome_of(world_row[None]) == "meadow"


def test_training_resumes_exactly(tmp_path) -> None:
    straight = tmp_path / "straight"
    train(small(straight, tmp_path / "b1", steps=1))  # all stages; transformer stops after step 1
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "transformer")
    train(small(resumed, tmp_path / "b2", steps=2))  # continues from the step-1 checkpoint
    shutil.rmtree(straight / "transformer")
    (straight / "transformer.ckpt").unlink()
    train(small(straight, tmp_path / "b3", steps=2))  # the same two steps without a break
    a, b = load_checkpoint(resumed / "transformer.ckpt"), load_checkpoint(straight / "transformer.ckpt")
    assert a["step"] == b["step"] == 2
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], atol=0, rtol=0)


def test_own_prediction_replaces_the_chosen_share_of_blocks_by_a_one_step_estimate() -> None:
    world = random_world("tiny")
    model = world.model
    text = model.encode_text(torch.randn(4, 16, 384))
    clean = torch.randn(4, 16, 3, 16, 16)
    positions = [[0, 1, 2]] * 4
    cache = KVCache(model.num_layers, capacity=3, sink_frames=1, batch=4)
    window = open_block(cache, EngineConfig(), 0, [False] * 4, [False] * 4)  # a first block: no past
    assert window.positions == positions and window.past is None

    def run(share: float, last_sigma: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return own_prediction(model, clean, text, window, torch.tensor(last_sigma), share, generator)

    torch.testing.assert_close(run(0.0, 0.4), clean, atol=0, rtol=0)
    # At noise level 0 the one-step estimate is the clean block whatever the weights predict.
    torch.testing.assert_close(run(1.0, 0.0), clean)
    estimate = run(1.0, 0.4)
    assert not estimate.requires_grad
    assert all(not torch.equal(estimate[b], clean[b]) for b in range(4))
    # The estimate is x0 = x_t - sigma * v from one model call, with the noise level and the noise
    # drawn in that order from the generator.
    generator = torch.Generator().manual_seed(0)
    sigma = 0.8 * torch.rand(4, generator=generator)
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * clean + s * torch.randn(clean.shape, generator=generator)
    with torch.no_grad():
        flow, _ = model(noisy, 1000 * sigma, text, positions, None)
    torch.testing.assert_close(estimate, noisy - s * flow)
    # A share in between picks per clip between the two (with seed 0: the estimate for clips 0, 1, 3).
    mixed = run(0.5, 0.4)
    assert [torch.equal(mixed[b], estimate[b]) for b in range(4)] == [True, True, False, True]
    assert torch.equal(mixed[2], clean[2])


def test_a_run_can_reuse_a_trained_vae_and_refuses_one_that_trained_its_own(tmp_path) -> None:
    source, run = tmp_path / "source", tmp_path / "reuse"
    source.mkdir(), run.mkdir()
    trained = train_vae(small(source, tmp_path / "b0", vae_steps=1, vae_batch=1), source)
    reused = train_vae(small(run, tmp_path / "b1", vae_from=str(source / "vae")), run)
    assert not (run / "vae.ckpt").exists() and (run / "vae" / "config.json").is_file()
    for (name, a), b in zip(trained.state_dict().items(), reused.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    shutil.rmtree(source / "vae")  # the run keeps its own copy
    train_vae(small(run, tmp_path / "b1", vae_from=str(source / "vae")), run)
    with pytest.raises(ValueError, match="trained a VAE of its own"):
        train_vae(small(source, tmp_path / "b0", vae_from=str(run / "vae")), source)


def test_qk_norm_init_sets_every_self_attention_norm(tmp_path) -> None:
    config = small(tmp_path / "run", tmp_path / "bundle", steps=0, qk_norm_init=2.5)
    bundle = train(config)  # no step: the bundle holds the initial weights
    import worldsim

    transformer = worldsim.load(bundle).model.transformer
    for block in transformer.blocks:
        for norm in (block.attn1.norm_q, block.attn1.norm_k):
            assert torch.all(norm.weight == 2.5)
        assert not torch.all(block.attn2.norm_q.weight == 2.5)


def test_a_run_can_start_from_a_trained_transformer_of_the_same_architecture(tmp_path) -> None:
    from diffusers import WanTransformer3DModel

    from envs.tiny.train import start_from

    world = random_world("tiny", seed=3)
    trained = world.model.transformer
    folder = tmp_path / "trained"
    trained.save_pretrained(folder)
    fresh = WanTransformer3DModel(**PRESETS["tiny"].transformer)
    start_from(fresh, folder)
    for (name, a), b in zip(trained.state_dict().items(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    wider = WanTransformer3DModel(**{**PRESETS["tiny"].transformer, "ffn_dim": 256})
    wider.save_pretrained(tmp_path / "wider")
    with pytest.raises(ValueError, match="another architecture \\(ffn_dim: 256 \\(expected 512\\)\\)"):
        start_from(fresh, tmp_path / "wider")


def test_clip_prompts_and_cuts_expand_to_model_blocks_of_one_frame() -> None:
    from envs.tiny.config import bundle_engine
    from envs.tiny.data import per_model_block

    prompts, cuts = per_model_block(["a", "b"], [False, True], 1)
    assert prompts == ["a", "a", "a", "b", "b", "b"]
    assert cuts == [False, False, False, True, False, False]  # a cut starts the first block of its clip block
    assert per_model_block(["a", "b"], [False, True], 3) == (["a", "b"], [False, True])
    engine = bundle_engine(TrainConfig(block_frames=1, window_frames=4))
    assert (engine.block_frames, engine.window_frames, engine.training_horizon_frames) == (1, 4, 4)
    with pytest.raises(ValueError, match="block_frames \\(2\\) must divide"):
        bundle_engine(TrainConfig(block_frames=2))


def test_train_command_reads_true_and_false() -> None:
    import argparse

    from envs.tiny.cli import register_train

    parser = argparse.ArgumentParser()
    register_train(parser.add_subparsers())
    assert parser.parse_args(["train", "--text-whitening", "true"]).text_whitening is True
    assert parser.parse_args(["train", "--text-whitening", "false"]).text_whitening is False
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--text-whitening", "maybe"])


def test_decoder_tuning_changes_the_decoder_alone_and_replays_the_data_sets_walks(tmp_path) -> None:
    import json

    import worldsim

    run = tmp_path / "run"
    bundle = train(
        small(
            run, tmp_path / "bundle", decoder_steps=2, decoder_clip_latents=3, decoder_texture_weight=1.0,
            decoder_switch_weight=4.0,
        )
    )  # fmt: skip
    assert load_checkpoint(run / "decoder.ckpt")["step"] == 2
    stage1 = load_vae_folder(run / "vae").state_dict()
    tuned = worldsim.load(bundle).decoder.vae.state_dict()
    assert stage1.keys() == tuned.keys()
    for name, weight in stage1.items():
        if name.startswith(("encoder.", "quant_conv.")):  # the codes the data set holds stay valid
            torch.testing.assert_close(weight, tuned[name], atol=0, rtol=0, msg=name)
    assert any(not torch.equal(w, tuned[n]) for n, w in stage1.items() if n.startswith("decoder."))
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "| VAE decoder tuning | 2 steps" in card
    assert "frames of prompt switches and cuts weighted 4" in card

    # the frames the decoder learns from are the data set's walks, played again
    config = small(run, tmp_path / "bundle")
    clips = json.loads((run / "clips.json").read_text())["clips"]
    assert [list(e.prompts) for e in dataset_episodes(config)] == [c["prompts"] for c in clips]
    latents = torch.zeros(4, 16, 12, 16, 16)
    for clip_latents in (1, 13):
        with pytest.raises(ValueError, match=f"decoder_clip_latents must be 2 to 12, got {clip_latents}"):
            tune_decoder(small(run, tmp_path / "b", decoder_steps=1, decoder_clip_latents=clip_latents),
                         run, None, latents, [], [0.0] * 16, [1.0] * 16)  # fmt: skip


def test_decoder_frame_weights_mark_the_frames_of_switch_latents() -> None:
    clip = {"prompts": ["a", "a", "b", "b"], "cuts": [False, False, False, True]}  # blocks of 3 latents
    weights = decoder_frame_weights([clip], first=5, latents=6, weight=4.0)[0].tolist()
    # latents 5..10: the prompt changes at latent 6, the cut comes at latent 9; latent 5 decodes to 1 frame
    assert weights == [1.0] + [4.0] * 4 + [1.0] * 8 + [4.0] * 4 + [1.0] * 4


def test_frame_weighted_losses_are_the_loss_of_the_weighted_frames() -> None:
    generator = torch.Generator().manual_seed(0)
    recon, video = (torch.rand(2, 3, 5, 16, 16, generator=generator) for _ in range(2))
    plain = reconstruction_loss(recon, video, 1.0)
    ones = reconstruction_loss(recon, video, 1.0, torch.ones(2, 5))
    torch.testing.assert_close(ones, plain)
    torch.testing.assert_close(
        texture_loss(recon, video, frame_weights=torch.ones(2, 5)), texture_loss(recon, video)
    )
    only = torch.zeros(2, 5)
    only[:, 3] = 1.0  # all the weight on frame 3: the loss of frame 3 alone
    frame = recon[:, :, 3:4], video[:, :, 3:4]
    torch.testing.assert_close(
        reconstruction_loss(recon, video, 1.0, only)[0], reconstruction_loss(*frame, 1.0)[0]
    )
    torch.testing.assert_close(texture_loss(recon, video, frame_weights=only), texture_loss(*frame))


def test_switch_weights_weigh_the_blocks_that_change_prompt_or_follow_a_cut() -> None:
    prompts = [["a", "a", "b", "b"], ["a", "a", "a", "a"], ["b", "a", "b", "b"]]
    cuts = [[False, False, False, True], [False, True, False, False], [False] * 4]
    assert switch_weights(prompts, cuts, 4.0).tolist() == [[1, 1, 4, 4], [1, 4, 1, 1], [1, 4, 4, 1]]


def test_rollout_loss_with_weights_is_the_weighted_mean_of_the_clips_block_losses() -> None:
    model = random_world("tiny").model
    engine = bundle_engine(TrainConfig())
    torch.manual_seed(0)
    latents, text_states = torch.randn(2, 16, 3, 16, 16), torch.randn(2, 3, 16, 384)
    cuts = [[False, False, True], [False] * 3]
    changed = prompt_changes([["a", "a", "b"], ["a", "b", "b"]])
    sigma_choices = torch.tensor([0.9, 0.6, 0.3])

    def loss(weights: torch.Tensor | None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)  # the same noise on every call
        with torch.no_grad():
            clips = Clips(latents, text_states, changed, cuts)
            return rollout_loss(model, clips, engine, sigma_choices, 0.25, generator, weights=weights)

    plain = loss(None)
    torch.testing.assert_close(loss(torch.ones(2, 3)), plain)

    # a weight on one block alone gives that block's loss
    def only(clip: int, block: int) -> torch.Tensor:
        weights = torch.zeros(2, 3)
        weights[clip, block] = 1.0
        return weights

    alone = torch.tensor([[loss(only(b, k)).item() for k in range(3)] for b in range(2)])
    assert len(set(alone.flatten().tolist())) == 6
    torch.testing.assert_close(plain, alone.mean())
    weights = torch.tensor([[1.0, 4.0, 1.0], [2.0, 1.0, 3.0]])
    torch.testing.assert_close(loss(weights), (alone * weights).sum() / weights.sum())


def test_texture_loss_prices_lost_contrast_far_above_misplaced_texture() -> None:
    torch.manual_seed(0)
    video = torch.rand(1, 3, 2, 32, 32) * 2 - 1
    flat = torch.nn.functional.avg_pool2d(video[0].transpose(0, 1), 3, 1, 1).transpose(0, 1)[None]
    assert texture_loss(video, video).item() == 0.0
    assert texture_loss(flat, video) > 5 * texture_loss(video.roll(2, dims=-1), video)
    recon = flat.clone().requires_grad_(True)
    texture_loss(recon, video).backward()
    assert recon.grad.abs().sum() > 0


def test_the_latent_data_set_is_kept_while_the_encoder_stays_the_same(tmp_path) -> None:
    import copy

    run = tmp_path / "run"
    run.mkdir()
    config = small(run, tmp_path / "bundle", vae_steps=1)
    vae = train_vae(config, run)
    latents = build_dataset(config, run, vae)[0]
    written = (run / "latents.safetensors").stat().st_mtime_ns

    def changed(prefix: str):
        other = copy.deepcopy(vae)
        with torch.no_grad():
            next(p for n, p in other.named_parameters() if n.startswith(prefix)).add_(0.5)
        return other

    # a new decoder (as after the decoder stage) makes the same codes: the data set is read back
    torch.testing.assert_close(build_dataset(config, run, changed("decoder."))[0], latents, atol=0, rtol=0)
    assert (run / "latents.safetensors").stat().st_mtime_ns == written
    # a new encoder makes other codes: the data set is encoded again
    assert not torch.equal(build_dataset(config, run, changed("encoder."))[0], latents)
    # other event rates play other walks: the data set is made again, with their prompts
    build_dataset(config, run, vae)
    written = (run / "latents.safetensors").stat().st_mtime_ns
    clips = build_dataset(dataclasses.replace(config, p_cut=1.0), run, vae)[1]
    assert (run / "latents.safetensors").stat().st_mtime_ns != written
    assert all(clip["cuts"] == [False] + [True] * (config.clip_blocks - 1) for clip in clips)


def test_every_training_flag_says_what_it_does(capsys) -> None:
    import dataclasses

    from envs.tiny.config import TrainConfig, field_help
    from worldsim.cli import main

    helps = field_help(TrainConfig)
    assert set(helps) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(len(text) > 10 for text in helps.values())
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines to the terminal
    assert "the same command resumes where it stopped" in text
    assert "loss weight of a block that changes prompt or follows a cut (default: 4.0)" in text
