"""`eval sim`: POPE (per split), colour/shape QA and closed-loop navigation on held-out simulator seeds.

The model, the oracle (ground truth: the upper bound) and a seeded random policy are scored on the same episodes.
"""
from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

import numpy as np
from tqdm import tqdm

from mobilevlm_agent.agent.loop import Agent, reached, run_episode
from mobilevlm_agent.agent.oracle_planner import OraclePlanner
from mobilevlm_agent.agent.planner import ModelPlanner, RandomPlanner, likeliest_choice
from mobilevlm_agent.agent.safety import SafetyGovernor, SafetyLimits
from mobilevlm_agent.chat import ChatSession
from mobilevlm_agent.eval.vision_probe import size_bucket
from mobilevlm_agent.model.vlm import MobileVLM
from mobilevlm_agent.sim.dataset import HELD_OUT, NAV_TEMPLATES, qa_samples, random_pose, view_towards
from mobilevlm_agent.sim.oracle import ARRIVE
from mobilevlm_agent.sim.scene import COLOURS, SHAPES
from mobilevlm_agent.sim.world import SimEnv


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> list[float]:
    """The 95 % Wilson score interval of a rate: how far a score on this many episodes or questions can be trusted.
    Unlike p +- 1.96 sd it stays inside [0, 1] and is not zero-width at 0/n or n/n."""
    if trials == 0:
        return [0.0, 1.0]
    p, z2 = successes / trials, z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def pope_metrics(pairs: list[tuple[str, str]]) -> dict:
    """(truth, prediction) of Yes/No -> accuracy (with its 95 % interval and the number of questions), precision,
    recall, F1, yes-ratio (POPE's definitions)."""
    tp = sum(t == "Yes" and p == "Yes" for t, p in pairs)
    fp = sum(t == "No" and p == "Yes" for t, p in pairs)
    fn = sum(t == "Yes" and p == "No" for t, p in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    right = sum(t == p for t, p in pairs)
    return {
        "accuracy": right / len(pairs),
        "accuracy_ci95": wilson_interval(right, len(pairs)),
        "questions": len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(p == "Yes" for _, p in pairs) / len(pairs),
    }


CHOICES = {"pope": ("Yes", "No"), "colour": tuple(COLOURS), "shape": SHAPES}


def question_set(episodes: int, seed: int) -> list[tuple[np.ndarray, dict]]:
    """(image, question) pairs from held-out scenes; POPE positives are balanced with each split's negatives.
    A colour or shape question also carries `pixels`: how much of the image its object covers."""
    rng, env, out = random.Random(seed), SimEnv(), []
    for e in range(episodes):
        env.reset(seed=HELD_OUT + seed * 1000 + e)
        for _ in range(3):
            env.teleport(*view_towards(rng, env))
            visible = env.visible_objects()
            if visible:
                image, pixels = env.render(), env.object_pixels()
                out += [(image, {**qa, "pixels": pixels[qa["object"]]} if "object" in qa else qa)
                        for qa in qa_samples(rng, env, visible, popular=[]) if qa["kind"] in CHOICES]
    env.close()
    return out


def accuracy_by_size(scored: list[tuple[int, bool]]) -> dict:
    """(pixels, right) of each question -> {bucket: {questions, accuracy}}, in size order, empty ones left out.
    The buckets are `eval vision`'s: most errors left are on small objects, seen in a patch or less."""
    bins: dict[str, list[bool]] = {}
    for pixels, right in sorted(scored):
        bins.setdefault(size_bucket(pixels), []).append(right)
    return {name: {"questions": len(rights), "accuracy": sum(rights) / len(rights)} for name, rights in bins.items()}


def answer_all(questions, answer) -> dict:
    """Score an answering function on the question set: POPE per split, colour/shape accuracy."""
    pope: dict[str, list] = defaultdict(list)
    positives, qa, sized = [], [], []
    for image, q in questions:
        prediction = answer(image, q)
        if q["kind"] == "pope":
            (positives if q["split"] == "positive" else pope[q["split"]]).append((q["a"], prediction))
        else:
            qa.append(prediction == q["a"])
            if "pixels" in q:
                sized.append((q["pixels"], qa[-1]))
    return {"pope": {split: pope_metrics(pairs + positives[: len(pairs)]) for split, pairs in pope.items()},
            "qa_accuracy": sum(qa) / max(1, len(qa)), "qa_ci95": wilson_interval(sum(qa), len(qa)), "qa_questions": len(qa),
            "qa_by_size": accuracy_by_size(sized)}


def nav_outcome(env, target, episode) -> str:
    """Why an episode ended as it did: success, collision, timeout, or where the robot stopped. `wrong_*` means it
    stopped facing another object within reach: one of the target's colour, its shape, or neither."""
    if reached(env, target, episode):
        return "success"
    if env.collisions:
        return "collision"
    if episode.status == "timeout":
        return "timeout"
    near = [o for o in env.scene.objects if env.distance_to(o) <= ARRIVE + 0.4 and abs(env.bearing_to(o)) <= math.radians(30)]
    faced = min(near, key=env.distance_to, default=None)
    if faced is not None and faced is not target:
        return "wrong_same_colour" if faced.colour == target.colour else "wrong_same_shape" if faced.shape == target.shape else "wrong_other"
    return "misaligned" if env.distance_to(target) <= ARRIVE else "stopped_short"


def navigate_all(episodes: int, seed: int, make_planner) -> dict:
    rng, env = random.Random(seed), SimEnv()
    success, spl, collisions, steps, latency_ms, vetoed, held = [], [], 0, [], [], 0, 0
    outcomes: Counter[str] = Counter()
    for e in tqdm(range(episodes), desc="nav", leave=False):
        env.reset(seed=HELD_OUT + seed * 1000 + e)
        env.teleport(*random_pose(rng, env))
        target = env.scene.objects[0]
        shortest = max(0.0, env.distance_to(target) - ARRIVE)
        travelled, last = 0.0, env.odometry()

        def track(obs, decision):
            nonlocal travelled, last
            travelled += math.hypot(obs.odom.x - last.x, obs.odom.y - last.y)
            last = obs.odom
            latency_ms.append(decision.latency_ms)

        planner = make_planner(env, target)
        agent = Agent(planner, SafetyGovernor(SafetyLimits(max_linear=0.6, max_angular=1.5, max_linear_accel=10, max_angular_accel=20), dry_run=False), max_steps=80)
        episode = run_episode(agent, env, rng.choice(NAV_TEMPLATES).format(target.label), on_step=track)
        outcome = nav_outcome(env, target, episode)
        outcomes[outcome] += 1
        ok = outcome == "success"
        success.append(ok)
        spl.append(ok * shortest / max(travelled, shortest, 1e-6))
        collisions += env.collisions > 0
        steps.append(episode.steps)
        vetoed += getattr(planner, "stops_vetoed", 0)
        held += getattr(planner, "turns_held", 0)
    env.close()
    return {"success_rate": float(np.mean(success)), "success_ci95": wilson_interval(sum(success), len(success)), "episodes": len(success),
            "spl": float(np.mean(spl)), "collisions": collisions, "mean_steps": float(np.mean(steps)),
            "decisions_per_s": 1000.0 / max(float(np.mean(latency_ms)), 1e-6),  # planning + governor, rendering excluded
            "outcomes": dict(sorted(outcomes.items())), "stops_vetoed": vetoed, "turns_held": held}


def evaluate(model: MobileVLM | None, episodes: int, seed: int, verify_stop: bool = True, hold_turns: bool = True) -> dict:
    questions = question_set(max(1, episodes // 2), seed)
    rng = random.Random(seed)
    report = {
        "episodes": episodes, "seed": seed, "questions": len(questions),
        "oracle": {**answer_all(questions, lambda image, q: q["a"]), "nav": navigate_all(episodes, seed, lambda env, t: OraclePlanner(env, t)),
                   # the labels the model imitates: the target's bearing only while it is in view
                   "nav_camera_only": navigate_all(episodes, seed, lambda env, t: OraclePlanner(env, t, camera_only=True))},
        "random": {**answer_all(questions, lambda image, q: rng.choice(CHOICES[q["kind"]])), "nav": navigate_all(episodes, seed, lambda env, t: RandomPlanner(seed))},
    }
    if model is not None:
        session = ChatSession(model)

        def model_answer(image, q):
            session.set_image(image)
            return likeliest_choice(session, q["q"], CHOICES[q["kind"]])

        report["model"] = {**answer_all(questions, model_answer), "nav": navigate_all(episodes, seed, lambda env, t: ModelPlanner(model, verify_stop, hold_turns))}
    return report


def with_interval(rate: float, interval: list[float] | None) -> str:
    return f"{rate:.2f}" + (f" [{interval[0]:.2f}-{interval[1]:.2f}]" if interval else "")


def nav_cells(n: dict) -> tuple[str, ...]:
    return with_interval(n["success_rate"], n.get("success_ci95")), f"{n['spl']:.2f}", str(n["collisions"]), f"{n['mean_steps']:.1f}", f"{n['decisions_per_s']:.0f}"


def format_table(report: dict) -> str:
    rows = [("policy", "POPE F1 rand/pop/adv", "QA acc [95% interval]", "nav success [95% interval]", "SPL", "collisions", "steps", "decisions/s")]
    for name in ("model", "oracle", "random"):
        if name in report:
            r = report[name]
            f1 = "/".join(f"{r['pope'][s]['f1']:.2f}" for s in ("random", "popular", "adversarial") if s in r["pope"])
            n = r["nav"]
            rows.append((name, f1, with_interval(r["qa_accuracy"], r.get("qa_ci95")), *nav_cells(n)))
            if "nav_camera_only" in r:
                rows.append((f"{name} (camera only)", "", "", *nav_cells(r["nav_camera_only"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    if report.get("model", {}).get("qa_by_size"):
        lines.append("model QA by object size: " + ", ".join(f"{b} {r['accuracy']:.2f} ({r['questions']})" for b, r in report["model"]["qa_by_size"].items()))
    for name in ("model", "oracle", "random"):
        if "outcomes" in report.get(name, {}).get("nav", {}):
            lines.append(f"{name} episodes ended: " + ", ".join(f"{k} {v}" for k, v in report[name]["nav"]["outcomes"].items()))
    return "\n".join(lines)
