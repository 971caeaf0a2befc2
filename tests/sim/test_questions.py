"""Questions from more rooms: another dataset's colour, shape and POPE questions added to a mix, images resolvable."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from mobilevlm_agent.cli import main
from mobilevlm_agent.errors import ConfigError
from mobilevlm_agent.sim.questions import write_questions
from mobilevlm_agent.train.datasets import ConversationDataset


@pytest.fixture(scope="module")
def other_rooms(tmp_path_factory):
    out = tmp_path_factory.mktemp("other_rooms")
    assert main(["sim", "dataset", "--out", str(out), "--scenes", "2", "--views", "4", "--episodes", "0", "--seed", "6"]) == 0
    return out


def test_questions_command_adds_the_other_rooms_questions(sim_data, other_rooms, capsys, tokenizer):
    base = json.loads((sim_data / "balanced.json").read_text())
    source = json.loads((other_rooms / "llava.json").read_text())
    assert main(["sim", "questions", "--data", str(sim_data), "--source", str(other_rooms), "--pope-per-answer", "3"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    added = json.loads((sim_data / "questions.json").read_text())
    mix = json.loads((sim_data / "balanced_questions.json").read_text())
    assert report["samples"] == len(added) and report["mix"] == len(mix) == len(base) + len(added)
    kinds = Counter(r["kind"] for r in added)
    assert kinds["colour"] == sum(r["kind"] == "colour" for r in source) > 0
    assert kinds["shape"] == sum(r["kind"] == "shape" for r in source) > 0
    assert Counter(r["conversations"][1]["value"] for r in added if r["kind"] == "pope") == {"Yes": 3, "No": 3}
    assert set(kinds) == {"colour", "shape", "pope"}
    # every added image resolves from the mix's own directory, as the training loader reads it
    assert all((sim_data / r["image"]).is_file() and r["image"].startswith("..") for r in added)
    loaded = ConversationDataset(sim_data / "balanced_questions.json", tokenizer, "v1", 256, image_size=112, visual_tokens=16)
    index = next(i for i, r in enumerate(mix) if r["image"].startswith(".."))
    assert loaded[index]["pixels"].shape == (3, 112, 112)


def test_questions_refuses_what_it_cannot_do(sim_data, other_rooms):
    with pytest.raises(ConfigError, match="pope-per-answer 100000"):
        write_questions(sim_data, other_rooms, pope_per_answer=100_000)
    with pytest.raises(ConfigError, match="another"):
        write_questions(sim_data, sim_data)
    with pytest.raises(ConfigError, match="not found"):
        write_questions(sim_data, other_rooms, base="nothing.json")
