"""The `mobilevlm-agent` CLI contract: ask (streamed and --json), info, convert, init-random, help, errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mobilevlm_agent.chat import ChatSession
from mobilevlm_agent.cli import build_parser, main
from mobilevlm_agent.generate import SamplingParams
from mobilevlm_agent.model.vlm import MobileVLM


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ask_json_greedy_matches_library(capsys, official_checkpoint, scene_image):
    code, out, _ = run_cli(capsys, "ask", "--model", official_checkpoint, "--image", scene_image, "--prompt", "What is this?", "--max-new-tokens", 12, "--temperature", 0, "--json", "--dtype", "fp32", "--device", "cpu")
    assert code == 0
    result = json.loads(out)
    assert set(result) >= {"text", "token_ids", "prompt_tokens", "visual_tokens", "timings"}
    model = MobileVLM.from_pretrained(official_checkpoint, device="cpu")
    expected = ChatSession(model).ask("What is this?", image=scene_image, params=SamplingParams(max_new_tokens=12))
    assert result["token_ids"] == expected.token_ids
    assert result["visual_tokens"] == 16 and result["prompt_tokens"] == expected.prompt_tokens
    assert result["timings"]["ttft_ms"] > 0


def test_ask_streams_text(capsys, official_checkpoint, scene_image):
    code, out, _ = run_cli(capsys, "ask", "--model", official_checkpoint, "--image", scene_image, "--prompt", "Hi", "--max-new-tokens", 8, "--temperature", 0.8, "--seed", 3)
    assert code == 0 and out.endswith("\n")


def test_ask_errors_are_one_line(capsys, official_checkpoint, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("no")
    code, _, err = run_cli(capsys, "ask", "--model", official_checkpoint, "--image", bad, "--prompt", "Hi")
    assert code == 1 and err.startswith("error: cannot decode image") and err.count("\n") == 1
    code, _, err = run_cli(capsys, "ask", "--model", tmp_path / "none", "--prompt", "Hi")
    assert code == 1 and "model directory not found" in err


def test_info_and_convert(capsys, official_checkpoint, tmp_path):
    code, out, _ = run_cli(capsys, "info", "MobileVLM_V2-1.7B", "--json")
    info = json.loads(out)
    assert code == 0 and info["params"]["projector"] == 6_316_032 and info["visual_tokens"] == 144
    assert info["vision"]["layers_run"] == 23
    code, out, _ = run_cli(capsys, "convert", official_checkpoint, tmp_path / "st", "--dtype", "bf16")
    assert code == 0
    code, out, _ = run_cli(capsys, "info", tmp_path / "st", "--json")
    assert json.loads(out)["params"]["total"] > 0


def test_init_random_writes_a_loadable_checkpoint(capsys, tmp_path):
    assert main(["init-random", "tiny-vlm-v2", str(tmp_path / "m")]) == 0
    model = MobileVLM.from_pretrained(tmp_path / "m", device="cpu")
    assert model.config.projector_type == "ldpnetv2" and model.tokenizer is not None


@pytest.mark.parametrize("command", [None, "ask", "info", "convert", "init-random", "train", "plot"])
def test_help_at_every_level(command):
    argv = [command, "--help"] if command else ["--help"]
    proc = subprocess.run([sys.executable, "-m", "mobilevlm_agent.cli", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage: mobilevlm-agent" in proc.stdout
    if command:
        assert build_parser()._subparsers._group_actions[0].choices[command].description.split("\n")[0] in proc.stdout


def test_library_never_imports_transformers_or_rclpy(official_checkpoint, scene_image):
    code = (
        "import sys; from mobilevlm_agent.cli import main; "
        f"main(['ask', '--model', {str(official_checkpoint)!r}, '--image', {str(scene_image)!r}, '--prompt', 'x', '--max-new-tokens', '2']); "
        "bad = [m for m in ('transformers', 'rclpy') if m in sys.modules]; assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_sim_export_gazebo_command(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "sim", "export-gazebo", "--seed", 2, "--out", tmp_path)
    assert code == 0 and {"world.sdf", "bridge.yaml", "scene.yaml"} <= {p.name for p in tmp_path.iterdir()}


def test_train_tokenizer_from_text_and_conversations(capsys, tmp_path):
    (tmp_path / "c.txt").write_text("the red cube is ahead\nthe blue ball is on the left\n" * 20)
    (tmp_path / "d.json").write_text(json.dumps([{"conversations": [{"from": "human", "value": "<image>\nWhat colour is the cube?"}, {"from": "gpt", "value": "red"}]}] * 20))
    code, out, _ = run_cli(capsys, "data", "train-tokenizer", tmp_path / "c.txt", tmp_path / "d.json", "--out", tmp_path / "tok.model", "--vocab-size", 300)
    assert code == 0
    from mobilevlm_agent.tokenizer import Tokenizer

    tok = Tokenizer(tmp_path / "tok.model")
    assert (tok.bos_id, tok.eos_id) == (1, 2) and tok.decode(tok.encode("What colour is the cube?")) == "What colour is the cube?"
    assert "<image>" not in tok.sp.id_to_piece(list(range(tok.vocab_size)))
