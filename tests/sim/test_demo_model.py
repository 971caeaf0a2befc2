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


def test_quantised_decoders_keep_the_demo_models_answers(sim_data):
    """llm_quality scores the model on its own task (answers given image and question), where its fp32 perplexity is
    low; a quantised decoder must stay close to it."""
    from mobilevlm_agent.bench import llm_quality

    demo_model()  # skips when models/demo is not built
    quality = llm_quality(str(resolve_model_dir("demo")), str(sim_data / "llava.json"), ["int8", "int4"], group_size=32, limit=40)
    assert 1.0 < quality["none"]["ppl"] < 3.0  # held-out scene seeds: low, but not memorised
    for mode in ("int8", "int4"):
        assert quality[mode]["logits_cosine"] > 0.99
        assert abs(quality[mode]["ppl_delta"]) < 0.05 * quality["none"]["ppl"]
    assert quality["int4"]["logits_cosine"] != quality["int8"]["logits_cosine"]  # int4 really ran (group 32 fits)
