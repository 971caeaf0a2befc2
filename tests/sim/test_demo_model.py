"""The bundled demo model loads and beats the random policy on held-out simulator seeds."""
from __future__ import annotations

import pytest

from mobilevlm_agent.model.checkpoint import resolve_model_dir
from mobilevlm_agent.errors import CheckpointError


def demo_model():
    from mobilevlm_agent.model.vlm import MobileVLM

    try:
        return MobileVLM.from_pretrained(resolve_model_dir("demo"))
    except CheckpointError:
        pytest.skip("models/demo is not built (make demo-model)")


def test_demo_model_is_small_and_complete():
    model = demo_model()
    directory = resolve_model_dir("demo")
    assert sum(p.stat().st_size for p in directory.iterdir()) < 30 * 2**20
    assert model.tokenizer is not None and (directory / "MODEL_CARD.md").is_file()


@pytest.mark.slow
def test_demo_model_beats_chance_on_held_out_seeds():
    """What the bundled model can do today (see its MODEL_CARD): colour/shape answers and POPE above chance, with
    POPE answers that depend on the image (neither always Yes nor always No).

    Navigation is printed, not asserted: the model misses that target (issue 4 stays open).
    """
    from mobilevlm_agent.eval.sim_eval import evaluate, format_table

    report = evaluate(demo_model(), episodes=6, seed=11)  # seed 11: not the model card's seed
    print(format_table(report))
    assert report["model"]["qa_accuracy"] > report["random"]["qa_accuracy"] + 0.1
    for split, pope in report["model"]["pope"].items():
        assert pope["accuracy"] > report["random"]["pope"][split]["accuracy"] + 0.1
        assert 0.1 < pope["yes_ratio"] < 0.9
