"""DAgger for the planner (Ross et al., 2011): the model drives in training scenes and the camera-only oracle labels
every view it reaches.

Behaviour cloning only ever sees the oracle's own trajectories; a model that turns late or stops short ends up in
views it never trained on. These samples are exactly those views, each labelled with what the oracle would do there.
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from mobilevlm_agent.agent.planner import ModelPlanner
from mobilevlm_agent.model.vlm import MobileVLM
from mobilevlm_agent.sim.dataset import DatasetConfig, balanced, base_mix, navigation_samples, scene_seeds, write_round
from mobilevlm_agent.sim.world import SimEnv


def write_dagger(data_dir: str | Path, model: MobileVLM, cfg: DatasetConfig, expert_prob: float = 0.3, base: str = "balanced.json") -> dict:
    """Roll the model out in `cfg.scenes` scenes; write DATA/daggerS.json (the new samples, images beside the dataset's)
    and DATA/balanced_daggerS.json (`base` plus the new samples, stops repeated as in `balanced`), S = `cfg.seed`.
    A later round aggregates by taking the previous round's mix as its `base`."""
    out = Path(data_dir)
    base_mix(out, base)
    planner = ModelPlanner(model, verify_stop=False)  # the raw policy's mistakes are what DAgger labels (and the shipped rounds ran it so)
    driven = Counter()

    def drive(image, instruction):
        action = planner.next_action(image, instruction, [])
        driven[action] += 1
        return action

    rng, env, samples, label_records = random.Random(cfg.seed), SimEnv(), [], []
    for scene_seed in tqdm(scene_seeds(cfg.seed, cfg.scenes), desc="dagger"):
        env.reset(seed=scene_seed)
        for e in range(cfg.nav_episodes_per_scene):
            samples += navigation_samples(rng, env, f"d{scene_seed}_n{e}", out, cfg, label_records, drive, expert_prob)
    env.close()
    written = write_round(out, f"dagger{cfg.seed}", samples, base, balanced(samples, seed=cfg.seed), cfg.seed)
    return {"scenes": cfg.scenes, "seed": cfg.seed, **written, "model_actions": dict(driven), "expert_prob": expert_prob}
