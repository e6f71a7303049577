"""Short, deterministic training runs of every learner, as numbers a refactoring must keep.

Each case trains one learner for a few iterations on a small batch of short training episodes
(one torch thread, fixed seeds), then records: a hash of every parameter and of the observation
statistics after training, the last iteration's losses, and the deterministic policy's return,
energy loss and controllable rate on a fixed batch of test-day episodes. A fingerprint of the
environment alone (observations and rewards of a fixed action sequence) is recorded beside them,
so a mismatch says whether the environment's numbers moved (then the fixture is regenerated on
purpose) or the learner's (a change of behaviour).

    python tests/learner_reference.py                 # print the figures of the code as it is
    python tests/learner_reference.py --write         # regenerate tests/fixtures/learner_reference.json

``tests/test_learner_reference.py`` re-trains every case and compares with the fixture.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

FIXTURE = Path(__file__).parent / "fixtures" / "learner_reference.json"

# name → (feeder, algo, learner settings, iterations, environment settings); small networks and budgets keep the
# whole set to seconds, while every code path of each learner (dmpo: fitting, imagination,
# the physics check) runs at least once
_SMALL = {"hidden": 16, "message_dim": 8, "embed_dim": 4, "minibatches": 2, "epochs": 2}
_DMPO = {"ensemble": 2, "horizon": 2, "model_ratio": 1.0, "imagine_from": 1, "model_updates": 5,
         "model_batch": 16, "model_hidden": 16, "model_message_dim": 8, "model_eval_samples": 64,
         "model_check_every": 2, "holdout_every": 2}
_DROPOUT = {"message_dropout": 0.2}
CASES: dict[str, tuple[str, str, dict, int, dict]] = {
    "ieee33-dppo": ("ieee33", "dppo", {**_SMALL}, 3, {}),
    "ieee33-dppo-dropout": ("ieee33", "dppo", {**_SMALL, "hops": 2}, 3, _DROPOUT),
    "ieee33-ippo": ("ieee33", "ippo", {**_SMALL}, 3, {}),
    "ieee33-cppo": ("ieee33", "cppo", {**_SMALL, "critic_hidden": 32}, 3, {}),
    "ieee33-cppo-dropout": ("ieee33", "cppo", {**_SMALL}, 3, _DROPOUT),
    "ieee33-dmpo": ("ieee33", "dmpo", {**_SMALL, **_DMPO}, 3, {}),
    "ieee33-dmpo-free": ("ieee33", "dmpo", {**_SMALL, **_DMPO, "anchor": False, "reward_model": "learned"}, 3, {}),
    "ieee33-dmpo-dropout": ("ieee33", "dmpo", {**_SMALL, **_DMPO, "model_hops": 0}, 3, _DROPOUT),
    "ieee141-dmpo": ("ieee141", "dmpo", {**_SMALL, **_DMPO}, 2, {}),
}
NUM_ENVS, EPISODE_HOURS, SEED = 4, 2.0, 7


def _env_config(**settings):
    from gridrl.env import EnvConfig
    from gridrl.marl.train import TRAIN_ENV_DEFAULTS

    return EnvConfig(**{**TRAIN_ENV_DEFAULTS, "episode_hours": EPISODE_HOURS, **settings})


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _env_fingerprint(feeder) -> list[list[float]]:
    """The environment alone: observations and rewards of one fixed action sequence, as the sum,
    the sum of magnitudes and the sum of squares of each (float64). Numbers, not a hash: another
    CPU type may round a power flow's last bit differently (on ieee141 it does), which
    :func:`env_matches` tolerates, while a change of the environment moves them far more."""
    from gridrl.env import make_env

    env = make_env(feeder, split="train", num_envs=2, seed=SEED, config=_env_config())
    gen = torch.Generator().manual_seed(SEED)
    seen = [env.reset()]
    for _ in range(3):
        obs, reward, _, _ = env.step(torch.rand(2, env.n_agents, generator=gen) * 2 - 1)
        seen += [obs, reward]
    return [[float(x.sum()), float(x.abs().sum()), float((x * x).sum())] for x in (t.to(torch.float64) for t in seen)]


def env_matches(got: list[list[float]], want: list[list[float]], rel: float = 1e-6) -> bool:
    """Whether two environment fingerprints agree: each sum and sum of magnitudes to ``rel`` of the
    tensor's sum of magnitudes, each sum of squares to ``rel`` of itself (float32 observations: a
    last-bit difference is about 1e-7 of a value)."""
    def close(g, w):
        scale = (w[1], w[1], w[2])
        return all(abs(a - b) <= rel * max(c, 1e-12) for a, b, c in zip(g, w, scale))
    return len(got) == len(want) and all(close(g, w) for g, w in zip(got, want))


def _evaluate(policy, feeder) -> dict[str, float]:
    """The deterministic policy on a fixed batch of test-day episodes."""
    from gridrl.env import make_env

    env = make_env(feeder, split="test", num_envs=NUM_ENVS, seed=SEED, config=_env_config())
    obs, total, episode = env.reset(), 0.0, None
    for _ in range(env.episode_steps):
        obs, reward, done, info = env.step(policy.act(obs))
        total += float(reward.sum())
        episode = info.get("episode", episode)
        if bool(done.all()):
            break
    return {"eval_return": total, "eval_energy_loss_mwh": float(episode["energy_loss_mwh"].nansum()),
            "eval_controllable_rate": float(episode["controllable_rate"].nanmean())}


def run_case(name: str) -> dict:
    """Train case ``name`` and return its figures."""
    import gridrl
    from gridrl.env import make_env
    from gridrl.marl.train import learner_class

    feeder_name, algo, settings, iterations, env_settings = CASES[name]
    feeder = gridrl.load_feeder(feeder_name)
    torch.manual_seed(0)
    env = make_env(feeder, split="train", num_envs=NUM_ENVS, seed=SEED, config=_env_config(**env_settings))
    cls = learner_class(algo)
    learner = cls(env, cls.Config(**settings), seed=SEED, total_steps=iterations * env.episode_steps * NUM_ENVS)
    for _ in range(iterations):
        stats = learner.iterate()
    # the per-agent statistics kept for the hand-over (``policy.agent_norm``) never feed the actor
    # and are not what the learner trains: the fixture's figures leave them out
    params = [(f"policy.{k}", v) for k, v in learner.policy.state_dict().items() if not k.startswith("agent_norm.")]
    params += [(f"critic.{k}", v) for k, v in learner.critic.state_dict().items()]
    if hasattr(learner, "model"):
        params += [(f"model.{k}", v) for k, v in learner.model.state_dict().items()]
    out = {"env": _env_fingerprint(feeder), "params": _digest(params), "env_steps": learner.env_steps,
           "param_sum": float(sum(float(v.double().abs().sum()) for _, v in params if v.is_floating_point()))}
    out.update({k: float(v) for k, v in sorted(stats.items()) if k.startswith(("loss/", "model/", "imagine/"))})
    out.update(_evaluate(learner.policy.eval(), feeder))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"write {FIXTURE}")
    ap.add_argument("cases", nargs="*", help="case names (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = {name: run_case(name) for name in (args.cases or CASES)}
    if args.cases and FIXTURE.exists():  # some cases: the others stay as the fixture has them
        results = {**json.loads(FIXTURE.read_text()), **results}
    text = json.dumps(results, indent=1, sort_keys=True)
    print(text)
    if args.write:
        FIXTURE.parent.mkdir(exist_ok=True)
        tmp = FIXTURE.with_suffix(".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(FIXTURE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
