"""ONNX export + the onnxruntime backend: logits and visual tokens match the torch path (a cached prefix continued,
one-token decode), chat and the planner give the same answers, and bad exports are clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mobilevlm_agent.chat import ChatSession  # noqa: E402
from mobilevlm_agent.errors import CheckpointError, ConfigError, InputError  # noqa: E402
from mobilevlm_agent.export.onnx import export_model  # noqa: E402
from mobilevlm_agent.generate import SamplingParams  # noqa: E402
from mobilevlm_agent.model.ort import OrtEmbedding, OrtMobileVLM  # noqa: E402
from mobilevlm_agent.model.quant import quantize_model  # noqa: E402
from mobilevlm_agent.model.random_init import random_model  # noqa: E402
from mobilevlm_agent.model.vlm import MobileVLM  # noqa: E402


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


@pytest.fixture(scope="module")
def torch_model():
    model = random_model("tiny-vlm-v2", seed=4)
    with torch.no_grad():  # sharp attention: a wrong RoPE layout or causal mask changes the logits
        for layer in model.llm.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def exports(torch_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    for quant in ("none", "int8", "int4"):
        export_model(torch_model, root / quant, quant, group_size=32, vision_quant="int8" if quant == "int8" else "none")
    return root


def three_calls(llm, embeds: torch.Tensor) -> list[torch.Tensor]:
    """A 12-token prompt, its 8-token continuation on the cached prefix, then one decoded token."""
    llm.setup_cache(1, 32)
    with torch.inference_mode():
        return [llm.prefill(embeds[:, :12], 0), llm.prefill(embeds[:, 12:20], 12), llm.decode_one(torch.tensor([7]), 20)]


# int8 runs MatMulNBits at accuracy level 4 (int8 activations too) against fp32 torch, under sharpened attention
@pytest.mark.parametrize("quant, floor", [("none", 0.99999), ("int8", 0.995), ("int4", 0.995)])
def test_decoder_matches_torch(torch_model, exports, quant, floor):
    ort_model = OrtMobileVLM(exports / quant, threads=1)
    ids = torch.randint(3, torch_model.config.llm.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        embeds = torch_model.llm.embed_tokens(ids)
    reference = torch_model
    if quant == "int4":  # same quantiser on both backends: compare with torch's own int4 model
        reference = quantize_model(random_model("tiny-vlm-v2", seed=4), "none")
        reference.load_state_dict(torch_model.state_dict())
        quantize_model(reference, "int4", group_size=32)
    reference.llm.clear_cache()
    expected = three_calls(reference.llm, embeds)
    got = three_calls(ort_model.llm, embeds)
    for e, g in zip(expected, got):
        assert g.shape == e.shape == (1, torch_model.config.llm.vocab_size)
        assert cosine(e, g) > floor, [round(cosine(a, b), 5) for a, b in zip(expected, got)]
    assert int(got[-1].argmax()) == int(expected[-1].argmax()) or quant != "none"


def test_decoder_weights_are_streamed_to_page_aligned_external_data(exports):
    import onnx

    graph = onnx.load(exports / "none" / "decoder.onnx", load_external_data=False).graph
    external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    inline = [t for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert external and all(len(t.raw_data) < 1024 for t in inline)
    data_size = (exports / "none" / "decoder.onnx.data").stat().st_size
    for tensor in external:
        entry = {e.key: e.value for e in tensor.external_data}
        assert entry["location"] == "decoder.onnx.data" and int(entry["offset"]) % 4096 == 0
        assert int(entry["offset"]) + int(entry["length"]) <= data_size


def test_continuing_a_prefix_equals_one_prefill(exports, torch_model):
    ort_model = OrtMobileVLM(exports / "none", threads=1)
    embeds = torch.randn(1, 20, torch_model.config.llm.hidden_size) * 0.02
    ort_model.llm.setup_cache(1, 32)
    whole = ort_model.llm.prefill(embeds, 0)
    ort_model.llm.prefill(embeds[:, :5], 0)
    continued = ort_model.llm.prefill(embeds[:, 5:], 5)
    assert torch.allclose(whole, continued, atol=1e-4)
    shuffled = ort_model.llm.prefill(embeds[:, torch.randperm(20)][:, 5:], 5)  # different positions 5.. -> different logits
    assert not torch.allclose(whole, shuffled, atol=1e-3)


def test_vision_matches_torch(torch_model, exports):
    size = torch_model.config.vision.image_size
    pixels = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        expected = torch_model.encode_images(pixels)
    assert cosine(OrtMobileVLM(exports / "none").encode_images(pixels), expected) > 0.99999
    assert cosine(OrtMobileVLM(exports / "int8").encode_images(pixels), expected) > 0.99


@pytest.fixture(scope="module")
def demo_pair(tmp_path_factory):
    torch_model = MobileVLM.from_pretrained("demo", dtype=torch.float32, device="cpu")
    out = tmp_path_factory.mktemp("demo-onnx")
    export_model(torch_model, out, "none")
    return torch_model, OrtMobileVLM(out, threads=1)


def demo_frame() -> np.ndarray:
    from mobilevlm_agent.sim.world import SimEnv

    env = SimEnv()
    try:
        return env.reset(seed=505).image
    finally:
        env.close()


def test_chat_answers_match_across_backends(demo_pair):
    frame = demo_frame()
    answers = {}
    for name, model in zip(("torch", "ort"), demo_pair):
        chat = ChatSession(model)
        chat.set_image(frame)
        chat.prefill_image()  # the system prompt and the image, before the question
        params = SamplingParams(max_new_tokens=24)
        first = chat.ask("Describe the scene.", params=params)
        second = chat.ask("What colour is the ball?", params=params)  # reuses the cached first turn
        answers[name] = (first.token_ids, second.token_ids, first.timings["prefill_tokens"], second.timings["prefill_tokens"])
    assert answers["torch"] == answers["ort"]
    assert answers["ort"][2] < 20  # the question alone: the image was prefilled already
    assert answers["ort"][3] < 40  # only the new turn was prefilled, not the image and the first turn again


def test_planner_scores_match_across_backends(demo_pair):
    from mobilevlm_agent.agent.planner import choose_action

    frame = demo_frame()
    results = []
    for model in demo_pair:
        chat = ChatSession(model)
        chat.set_image(frame)
        results.append(choose_action(chat, "go to the red ball"))
    (action_t, scores_t), (action_o, scores_o) = results
    assert action_t == action_o
    assert all(abs(scores_t[a] - scores_o[a]) < 1e-3 for a in scores_t)


def test_cli_export_and_ask_on_ort(tmp_path, capsys):
    from mobilevlm_agent.cli import main

    out = tmp_path / "demo-int4"
    assert main(["export", "onnx", "demo", str(out), "--quant", "int4"]) == 0
    manifest = json.loads((out / "onnx_model.json").read_text())
    assert manifest["quant"] == "int4" and manifest["config"]["llm"]["vocab_size"] == 1024
    capsys.readouterr()
    assert main(["ask", "--model", str(out), "--backend", "ort", "--prompt", "Hello", "--max-new-tokens", "5", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert 1 <= len(answer["token_ids"]) <= 5 and answer["timings"]["ttft_ms"] > 0


def test_embedding_rows_equal_safetensors_own_read(exports):
    from safetensors.numpy import load_file

    for quant in ("none", "int4"):
        path = exports / quant / "embed_tokens.safetensors"
        table, read = OrtEmbedding(path), load_file(str(path))
        expected = read["embed_tokens"].astype(np.float32)
        if quant == "int4":  # int8 rows and a scale per row
            assert "embed_scale" in read and read["embed_tokens"].dtype == np.int8
            expected *= read["embed_scale"][:, None]
        assert np.array_equal(table(torch.arange(len(expected))).numpy(), expected)
        ids = torch.tensor([[len(expected) - 1, 5, 0], [5, 5, 1]])
        assert np.array_equal(table(ids).numpy(), expected[ids.numpy()])
        with pytest.raises(InputError, match="token ids must be in"):
            table(torch.tensor([[1, len(expected)]]))


def test_embedding_file_truncated_after_load_is_a_clear_error(tmp_path, exports):
    path = tmp_path / "embed_tokens.safetensors"
    path.write_bytes((exports / "int4" / "embed_tokens.safetensors").read_bytes())
    table = OrtEmbedding(path)
    before = table(torch.tensor([[0]]))
    with open(path, "r+b") as f:
        f.truncate(table._offset + table._row_bytes)  # row 0 survives, row 1 does not
    assert torch.equal(table(torch.tensor([[0]])), before)
    with pytest.raises(CheckpointError, match="truncated after it was opened"):
        table(torch.tensor([[0, 1]]))


def test_bad_exports_are_clear_errors(tmp_path, exports, capsys):
    from mobilevlm_agent.cli import main

    with pytest.raises(CheckpointError, match="not an ONNX export"):
        OrtMobileVLM(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("onnx_model.json", "embed_tokens.safetensors", "vision.onnx"):
        (broken / name).write_bytes((exports / "none" / name).read_bytes())
    (broken / "decoder.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(CheckpointError, match="onnxruntime cannot load"):
        OrtMobileVLM(broken)
    table = (exports / "none" / "embed_tokens.safetensors").read_bytes()
    for damaged in (table[:-100], table[:8] + b"{not json" + table[17:], b"\xff" * 8 + table[8:]):  # truncated, bad header, bad length
        (broken / "embed_tokens.safetensors").write_bytes(damaged)
        with pytest.raises(CheckpointError, match="not a readable safetensors file"):
            OrtEmbedding(broken / "embed_tokens.safetensors")
    with pytest.raises(ConfigError, match="supports --quant"):
        export_model(random_model("tiny-vlm-v2"), tmp_path / "x", "int3")
    assert main(["ask", "--model", "demo", "--backend", "ort", "--prompt", "hi"]) == 1
    assert "not an ONNX export" in capsys.readouterr().err


def test_bench_json_contract_on_ort(capsys, exports):
    from mobilevlm_agent.cli import main

    assert main(["bench", "decode", "--config", str(exports / "int4"), "--backend", "ort", "--threads", "1",
                 "--prompt-tokens", "12", "--new-tokens", "4", "--repeats", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == "ort" and result["quant"] == "int4" and result["threads"] == 1
    assert result["prefill_tok_s"] > 0 and result["decode_tok_s"] > 0 and result["peak_rss_mb"] > 0
    assert result["encode_ms"] is None and result["ttft_ms"] is None


def test_vision_only_export_encodes_and_is_refused_for_generation(torch_model, tmp_path, capsys):
    from mobilevlm_agent.cli import main
    from mobilevlm_agent.model.checkpoint import load_model

    out = tmp_path / "vision-only"
    export_model(torch_model, out, "int4", group_size=32, decoder=False)
    assert sorted(p.name for p in out.iterdir()) == ["onnx_model.json", "vision.onnx"]
    size = torch_model.config.vision.image_size
    pixels = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.inference_mode():
        expected = torch_model.encode_images(pixels)
    assert cosine(OrtMobileVLM(out).encode_images(pixels), expected) > 0.99999
    with pytest.raises(CheckpointError, match="vision-only"):
        load_model(out, backend="ort")
    assert main(["bench", "encode", "--config", str(out), "--backend", "ort", "--threads", "1", "--repeats", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["encode_ms"] > 0 and result["decode_tok_s"] is None and result["llm_weight_mb"] == 0
