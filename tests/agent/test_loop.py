"""The agent loop drives the oracle to success through the governor; the model planner only emits grammar actions."""
from __future__ import annotations

import pytest

from mobilevlm_agent.agent.actions import ACTIONS
from mobilevlm_agent.agent.loop import Agent, run_episode
from mobilevlm_agent.agent.oracle_planner import OraclePlanner
from mobilevlm_agent.agent.planner import ModelPlanner, RandomPlanner
from mobilevlm_agent.agent.safety import SafetyGovernor
from mobilevlm_agent.chat import ChatSession
from mobilevlm_agent.eval.sim_eval import answer_all, evaluate, format_table, pope_metrics, question_set, wilson_interval
from mobilevlm_agent.sim.dataset import HELD_OUT
from mobilevlm_agent.sim.world import SimEnv


@pytest.fixture
def env():
    e = SimEnv()
    yield e
    e.close()


def test_loop_drives_the_oracle_to_success(env):
    env.reset(seed=4)
    target = env.scene.objects[0]
    agent = Agent(OraclePlanner(env, target), SafetyGovernor(dry_run=False))
    episode = run_episode(agent, env, f"go to the {target.label}")
    assert episode.status == "done" and env.nav_success(target)
    assert episode.history[-1] == "stop" and agent.governor.counts.get("ok", 0) > 0


def test_dry_run_governor_keeps_the_robot_still(env):
    start = env.reset(seed=4).odom
    target = env.scene.objects[0]
    agent = Agent(OraclePlanner(env, target), SafetyGovernor(), max_steps=5)  # dry_run by default
    run_episode(agent, env, "go")
    end = env.odometry()
    assert (end.x, end.y, end.yaw) == pytest.approx((start.x, start.y, start.yaw), abs=1e-6)
    assert agent.governor.counts == {"dry_run": 5}  # every one of the 5 decisions was held at zero


def test_model_planner_only_emits_grammar_actions(env, tiny_model):
    env.reset(seed=1)
    agent = Agent(ModelPlanner(tiny_model), SafetyGovernor(dry_run=False), max_steps=6)
    episode = run_episode(agent, env, "go to the red cube")
    assert episode.history and set(episode.history) <= set(ACTIONS)


def test_planner_scores_match_with_and_without_the_cached_prompt(env, tiny_model):
    from mobilevlm_agent.agent.planner import choose_action

    session = ChatSession(tiny_model)
    session.set_image(env.reset(seed=2).image)
    choose_action(session, "go to the blue ball")
    session.set_image(env.reset(seed=5).image)
    _, warm = choose_action(session, "go to the red cube")  # reuses the system prompt's positions
    tiny_model.llm.clear_cache()
    _, cold = choose_action(session, "go to the red cube")
    assert warm == pytest.approx(cold, abs=1e-4)


def test_answers_stream_about_the_current_view(env, tiny_model):
    obs = env.reset(seed=1)
    agent = Agent(RandomPlanner(), SafetyGovernor(), chat=ChatSession(tiny_model))
    agent.observe(obs)
    from mobilevlm_agent.generate import SamplingParams

    text = "".join(agent.answer("What do you see?", SamplingParams(max_new_tokens=5)))
    assert text.strip() == agent.chat.last_answer.text and agent.chat.last_answer.visual_tokens == 16


def test_pope_metrics_definitions():
    pairs = [("Yes", "Yes"), ("Yes", "No"), ("No", "Yes"), ("No", "No")]
    m = pope_metrics(pairs)
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (0.5, 0.5, 0.5, 0.5, 0.5)
    assert m["questions"] == 4 and m["accuracy_ci95"] == wilson_interval(2, 4)


def test_wilson_interval_matches_published_values():
    """Newcombe (1998), Statistics in Medicine 17: 81/263 -> 0.2553-0.3662; 0/10 -> 0-0.2775; 10/10 the mirror."""
    assert wilson_interval(81, 263) == pytest.approx([0.2553, 0.3662], abs=5e-5)
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=5e-5)
    assert wilson_interval(10, 10) == pytest.approx([0.7225, 1.0], abs=5e-5)
    assert wilson_interval(0, 0) == [0.0, 1.0]  # nothing measured: nothing known


def test_qa_by_size_scores_each_question_at_its_own_objects_size(env):
    """Each colour/shape question carries the pixel count of the object it asks about (the one with the answered
    colour or shape); an answerer that only gets objects of 500 px or more right scores 0 below and 1 above."""
    questions = question_set(3, seed=5)
    sized = [q for _, q in questions if q["kind"] in ("colour", "shape")]
    assert sized and all(q["pixels"] >= 38 for q in sized)  # visible: at least 1/2000 of the 320x240 frame
    assert {q["pixels"] < 500 for q in sized} == {True, False}  # both sides of the cut are exercised
    env.reset(seed=HELD_OUT + 5 * 1000)  # question_set's first scene; its questions come first
    by_name = {o.name: o for o in env.scene.objects}
    first_scene = [q for _, q in questions[: len(question_set(1, seed=5))] if "object" in q]
    assert first_scene and all(q["a"] == getattr(by_name[q["object"]], q["kind"]) for q in first_scene)
    report = answer_all(questions, lambda image, q: q["a"] if q.get("pixels", 0) >= 500 else "wrong")
    by_size = report["qa_by_size"]
    assert sum(b["questions"] for b in by_size.values()) == report["qa_questions"] == len(sized)
    for name, b in by_size.items():
        assert b["accuracy"] == (1.0 if name in ("500-1999 px", ">=2000 px") else 0.0)
    no_nav = {"success_rate": 0.0, "spl": 0.0, "collisions": 0, "mean_steps": 0.0, "decisions_per_s": 0.0}
    assert "QA by object size" in format_table({"model": {**report, "nav": no_nav}})


@pytest.mark.slow
def test_eval_scores_oracle_at_the_top_and_random_below(tiny_model):
    report = evaluate(tiny_model, episodes=2, seed=3)
    assert report["oracle"]["nav"]["success_rate"] == 1.0 and report["oracle"]["qa_accuracy"] == 1.0
    assert all(s["f1"] == 1.0 for s in report["oracle"]["pope"].values())
    assert report["random"]["nav"]["success_rate"] < 1.0
    for policy in ("oracle", "random", "model"):
        nav, (low, high) = report[policy]["nav"], report[policy]["nav"]["success_ci95"]
        assert nav["episodes"] == 2 and low <= nav["success_rate"] <= high
        assert report[policy]["qa_ci95"][0] <= report[policy]["qa_accuracy"] <= report[policy]["qa_ci95"][1]
    assert {"random", "popular", "adversarial"} == set(report["model"]["pope"])
    assert "oracle" in format_table(report)


@pytest.mark.parametrize("robot_x, faced_object, expected", [
    (-1.0, "red ball", "success"),
    (1.0, "red cube", "wrong_same_colour"),
    (1.0, "blue ball", "wrong_same_shape"),
    (1.0, "green cylinder", "wrong_other"),
    (-1.6, "red ball", "stopped_short"),
])
def test_nav_outcome_names_where_the_robot_stopped(env, robot_x, faced_object, expected):
    from mobilevlm_agent.agent.loop import EpisodeState
    from mobilevlm_agent.eval.sim_eval import nav_outcome
    from mobilevlm_agent.sim.scene import ObjectSpec, SceneSpec

    colour, shape = faced_object.split()
    target = ObjectSpec("target", "ball", "red", 0.15, -0.5, 0.0)
    other = ObjectSpec("other", shape if faced_object != "red ball" else "cube", colour, 0.15, 1.5, 0.0)
    env.reset(scene=SceneSpec(objects=(target, other), robot_start=(0.0, 2.0, 0.0)))
    env.teleport(robot_x, 0.0, 0.0)  # facing +x: the target from its left, the other object from its left too
    assert nav_outcome(env, env.scene.objects[0], EpisodeState(instruction="go to the red ball", status="done")) == expected


def test_a_timeout_in_front_of_the_target_is_not_a_success(env):
    from mobilevlm_agent.agent.loop import EpisodeState
    from mobilevlm_agent.eval.sim_eval import nav_outcome
    from mobilevlm_agent.sim.scene import ObjectSpec, SceneSpec

    env.reset(scene=SceneSpec(objects=(ObjectSpec("target", "ball", "red", 0.15, -0.5, 0.0),), robot_start=(0.0, 2.0, 0.0)))
    env.teleport(-1.0, 0.0, 0.0)  # at rest, facing the target within reach
    assert env.nav_success(env.scene.objects[0])
    outcomes = [nav_outcome(env, env.scene.objects[0], EpisodeState(instruction="go to the red ball", status=s)) for s in ("done", "timeout")]
    assert outcomes == ["success", "timeout"]


def test_goal_questions_come_from_the_instruction():
    from mobilevlm_agent.agent.planner import goal_questions

    (shape_q, shapes, shape), (colour_q, colours, colour) = goal_questions("Go to the RED cube, then stop.")
    assert (shape_q, shape, colour_q, colour) == ("What shape is the red object?", "cube", "What colour is the cube?", "red")
    assert shape in shapes and colour in colours
    assert goal_questions("go home") == [] and goal_questions("go to the red thing") == []


@pytest.mark.parametrize("answers, vetoed", [({"shape": "cube", "colour": "red"}, False), ({"shape": "ball", "colour": "red"}, True),
                                             ({"shape": "cube", "colour": "blue"}, True)])
def test_a_stop_needs_the_models_answers_to_agree(monkeypatch, env, tiny_model, answers, vetoed):
    from mobilevlm_agent.agent import planner

    def fake_scores(session, prompt, choices):  # the nav prompt prefers stop; each goal question gets `answers`
        want = "stop" if "stop" in choices else answers["shape" if "shape" in prompt else "colour"]
        return [float(c == want) for c in choices]

    monkeypatch.setattr(planner, "score_choices", fake_scores)
    model_planner = ModelPlanner(tiny_model)
    action = model_planner.next_action(env.reset(seed=1).image, "go to the red cube", [])
    assert (action, model_planner.stops_vetoed) == (("turn_left", 1) if vetoed else ("stop", 0))
    assert ModelPlanner(tiny_model, verify_stop=False).next_action(env.reset(seed=1).image, "go to the red cube", []) == "stop"


@pytest.mark.parametrize("previous, expected, held", [("turn_left", "turn_left", 1), ("turn_right", "turn_right", 0), ("forward", "turn_right", 0)])
def test_a_turn_straight_back_is_held(monkeypatch, env, tiny_model, previous, expected, held):
    from mobilevlm_agent.agent import planner

    monkeypatch.setattr(planner, "score_choices", lambda session, prompt, choices: [float(c == "turn_right") for c in choices])
    model_planner = ModelPlanner(tiny_model)
    image = env.reset(seed=1).image
    assert model_planner.next_action(image, "go to the red cube", ["forward", previous]) == expected
    assert model_planner.turns_held == held
    assert model_planner.next_action(image, "go to the red cube", []) == "turn_right"  # the first decision has nothing to hold
    assert ModelPlanner(tiny_model, hold_turns=False).next_action(image, "go to the red cube", ["turn_left"]) == "turn_right"
