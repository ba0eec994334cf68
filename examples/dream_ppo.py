"""Train an agent inside the world model, then test it in the real world the model imitates.

The task, from the built-in rewards: reach the desert, then walk east. Each step the agent is paid
``reach_desert x max(travel_east, 0)`` on the block it sees: about 1.0 a step while it walks east
through desert, 0 elsewhere and on a step that cuts to another scene. Success is judged on the
ground-truth world's true state: in an episode, the agent walked at least ``--east-px`` pixels
east through the desert (a cut does not walk).

The script trains a small CNN policy with PPO (single file, in the manner of cleanrl) in
``worldsim/World-v0``'s batched vector env (the "dream"), trains the same policy directly in the
ground truth ``worldsim/Procedural-v0`` for comparison, and then runs three policies in the ground
truth on the same seeds: the one trained in the dream, a random one, and the one trained in the
ground truth, each sampling its actions as it was trained to. It prints their success rates and
mean returns.

    python examples/dream_ppo.py                      # defaults: 16 envs, 8192 steps in each world
    python examples/dream_ppo.py --steps 4096 --threads 2 --out runs/dream-ppo
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import envs  # noqa: F401  (registers worldsim/World-v0 and worldsim/Procedural-v0)
from envs.procedural.rewards import reach, travel


def task_reward(frames: np.ndarray, info: dict[str, Any]) -> float:
    """Walking east through the desert: reach_desert x max(travel_east, 0), read from the frames; 0 on
    a step that cuts (a cut lands somewhere else: it is not walking)."""
    if info["cut"]:
        return 0.0
    return reach("desert", frames) * max(travel("east", frames, info), 0.0)


@dataclass
class Args:
    steps: int = 8192  # env steps of training in each world, all envs together (512 each with 16)
    envs: int = 16  # environments stepped together
    episode: int = 16  # steps an episode lasts
    rollout: int = 32  # steps per env between updates
    epochs: int = 4
    minibatches: int = 4
    lr: float = 2.5e-4
    gamma: float = 0.95
    gae_lambda: float = 0.9
    clip: float = 0.2
    entropy: float = 0.02
    value_coef: float = 0.5
    eval_episodes: int = 64
    east_px: int = 48  # success: walked this far east through the desert in an episode (6 steps)
    seed: int = 0
    threads: str = "auto"  # torch threads of the dream: "auto" (one per two cores) or a number
    out: str = "runs/dream-ppo"


class Policy(nn.Module):
    """A small CNN over the last frame (64x64 RGB): action logits and a value."""

    def __init__(self, actions: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 6 * 6, 128),
            nn.ReLU(),
        )
        self.actor = nn.Linear(128, actions)
        self.critic = nn.Linear(128, 1)
        nn.init.orthogonal_(self.actor.weight, 0.01)
        nn.init.zeros_(self.actor.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.distributions.Categorical, torch.Tensor]:
        features = self.body(obs.permute(0, 3, 1, 2).float() / 255.0)
        return torch.distributions.Categorical(logits=self.actor(features)), self.critic(features)[:, 0]


def make_envs(world: str, args: Args) -> gymnasium.vector.VectorEnv:
    """The dream (the world model, batched) or the ground truth (its twin, one env each)."""
    if world == "dream":
        return gymnasium.make_vec(
            "envs:worldsim/World-v0",
            num_envs=args.envs,
            vectorization_mode="vector_entry_point",
            reward=task_reward,
            max_episode_steps=args.episode,
            threads=args.threads if args.threads == "auto" else int(args.threads),
        )
    return gymnasium.make_vec(
        "envs:worldsim/Procedural-v0",
        num_envs=args.envs,
        vectorization_mode="sync",
        reward=task_reward,
        max_episode_steps=args.episode,
    )


def train(world: str, args: Args) -> tuple[Policy, dict[str, float]]:
    """PPO over next-step autoreset: a step whose previous step ended an episode is the env's reset, so
    it is left out of the update; its observation is the ended episode's last one, whose value
    bootstraps a truncated episode (the world never terminates on its own)."""
    torch.manual_seed(args.seed)
    env = make_envs(world, args)
    actions, frames = env.single_action_space, env.single_observation_space
    assert isinstance(actions, gymnasium.spaces.Discrete) and isinstance(frames, gymnasium.spaces.Box)
    policy = Policy(int(actions.n))
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.lr, eps=1e-5)
    n, horizon = args.envs, args.rollout
    obs_buf = torch.zeros((horizon, n, *frames.shape), dtype=torch.uint8)
    act_buf = torch.zeros((horizon, n), dtype=torch.long)
    logp_buf, rew_buf, val_buf = (torch.zeros((horizon, n)) for _ in range(3))
    done_buf, term_buf, valid_buf = (torch.zeros((horizon, n)) for _ in range(3))

    obs, _ = env.reset(seed=args.seed)
    next_obs, ended = torch.as_tensor(obs), torch.zeros(n)
    updates = max(1, args.steps // (n * horizon))
    returns, episode_return = [], np.zeros(n)
    started = time.perf_counter()
    bar = tqdm(range(updates), desc=f"PPO in the {world}", unit="update")
    for _ in bar:
        for t in range(horizon):
            obs_buf[t], valid_buf[t] = next_obs, 1.0 - ended  # a step after an episode's end is its reset
            with torch.no_grad():
                dist, value = policy(next_obs)
                action = dist.sample()
            act_buf[t], logp_buf[t], val_buf[t] = action, dist.log_prob(action), value
            obs, reward, terminated, truncated, _ = env.step(action.numpy())
            episode_return += reward
            finished = np.logical_or(terminated, truncated)
            for i in np.flatnonzero(finished):
                returns.append(float(episode_return[i]))
                episode_return[i] = 0.0
            rew_buf[t] = torch.as_tensor(reward, dtype=torch.float32)
            done_buf[t], term_buf[t] = torch.as_tensor(finished), torch.as_tensor(terminated)
            next_obs, ended = torch.as_tensor(obs), torch.as_tensor(finished, dtype=torch.float32)

        # Generalised advantage estimation. The value after step t is that of the next stored
        # observation, which after an episode's last step is its final one: a truncated episode
        # bootstraps from it, a terminated one does not; either way the advantage stops there.
        with torch.no_grad():
            _, next_value = policy(next_obs)
        advantages, last = torch.zeros((horizon, n)), torch.zeros(n)
        for t in reversed(range(horizon)):
            following = next_value if t == horizon - 1 else val_buf[t + 1]
            delta = rew_buf[t] + args.gamma * following * (1.0 - term_buf[t]) - val_buf[t]
            last = delta + args.gamma * args.gae_lambda * (1.0 - done_buf[t]) * last
            advantages[t] = last
        targets = advantages + val_buf

        keep = valid_buf.flatten().bool()
        b_obs = obs_buf.flatten(0, 1)[keep]
        b_act, b_logp = act_buf.flatten()[keep], logp_buf.flatten()[keep]
        b_adv, b_target = advantages.flatten()[keep], targets.flatten()[keep]
        size = len(b_act)
        for _ in range(args.epochs):
            order = torch.randperm(size)
            for chunk in order.chunk(args.minibatches):
                dist, value = policy(b_obs[chunk])
                ratio = (dist.log_prob(b_act[chunk]) - b_logp[chunk]).exp()
                adv = b_adv[chunk]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - args.clip, 1 + args.clip) * adv).mean()
                value_loss = (value - b_target[chunk]).pow(2).mean()
                loss = policy_loss + args.value_coef * value_loss - args.entropy * dist.entropy().mean()
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
                optimizer.step()
        recent = returns[-4 * n :]
        bar.set_postfix(episode_return=f"{np.mean(recent):.2f}" if recent else "-")
    seconds = time.perf_counter() - started
    env.close()
    steps = updates * n * horizon
    return policy, {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds}


def evaluate(policy: Policy | None, args: Args) -> dict[str, float]:
    """Success rate and mean return in the ground truth over the same seeds for every policy."""
    env = gymnasium.make("envs:worldsim/Procedural-v0", reward=task_reward, max_episode_steps=args.episode)
    assert isinstance(env.action_space, gymnasium.spaces.Discrete)
    choices = int(env.action_space.n)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    successes, returns = [], []
    for episode in range(args.eval_episodes):
        obs, info = env.reset(seed=10_000 + episode)
        total, east = 0.0, 0
        state = info["state"]
        for _ in range(args.episode):
            if policy is None:
                action = int(rng.integers(choices))
            else:
                with torch.no_grad():
                    dist, _ = policy(torch.as_tensor(obs)[None])
                action = int(dist.sample())  # as trained: the policy's own sampling
            obs, reward, _, _, info = env.step(action)
            total += float(reward)
            before, state = state, info["state"]
            if before["biome"] == state["biome"] == "desert" and not info["cut"]:
                east += state["x"] - before["x"]  # walked, not teleported, through the desert
        successes.append(east >= args.east_px)
        returns.append(total)
    env.close()
    return {"success": float(np.mean(successes)), "return": float(np.mean(returns))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field, default in asdict(Args()).items():
        parser.add_argument(
            f"--{field.replace('_', '-')}", type=type(default), default=default, help=f"default: {default}"
        )
    args = Args(**vars(parser.parse_args()))
    counts = ("steps", "envs", "episode", "rollout", "epochs", "minibatches", "eval_episodes")
    for name in counts:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.steps < args.envs * args.rollout:
        parser.error(f"--steps must be at least --envs x --rollout ({args.envs * args.rollout}): one update")
    if args.threads != "auto" and not (args.threads.isdigit() and int(args.threads) > 0):
        parser.error(f"--threads must be 'auto' or a positive number, not {args.threads!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    dream_policy, dream_run = train("dream", args)
    twin_policy, twin_run = train("ground truth", args)
    torch.save(dream_policy.state_dict(), out / "policy-dream.pt")
    torch.save(twin_policy.state_dict(), out / "policy-ground-truth.pt")
    rows = {
        "trained in the dream": evaluate(dream_policy, args),
        "random": evaluate(None, args),
        "trained in the ground truth": evaluate(twin_policy, args),
    }
    print(f"\nIn the ground truth, {args.eval_episodes} episodes of {args.episode} steps, the same seeds:")
    print("| policy | success | mean return |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['success']:.2f} | {row['return']:.2f} |")
    print(
        f"\ntraining: dream {dream_run['steps']} steps in {dream_run['seconds']:.0f} s "
        f"({dream_run['steps_per_s']:.1f} steps/s); ground truth {twin_run['steps']} steps in "
        f"{twin_run['seconds']:.0f} s ({twin_run['steps_per_s']:.0f} steps/s)"
    )
    summary = {"args": asdict(args), "dream": dream_run, "ground_truth": twin_run, "evaluation": rows}
    (out / "results.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
