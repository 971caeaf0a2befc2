"""Official-layout checkpoints (safetensors, .bin, sharded) load exactly; every bad file gives a clear error."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import official_state_dict, write_official_checkpoint
from mobilevlm_agent.errors import CheckpointError
from mobilevlm_agent.model.vlm import MobileVLM


def outputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(1, 3, 112, 112, generator=g)
    ids = torch.randint(3, 300, (1, 20), generator=g)
    with torch.no_grad():
        return model.encode_images(pixels), model.llm(ids)


@pytest.mark.parametrize("fmt,shards", [("safetensors", 1), ("bin", 1), ("safetensors", 3), ("bin", 2)])
def test_official_layouts_load_exactly(tmp_path, tiny_model, tokenizer_path, fmt, shards):
    ckpt = write_official_checkpoint(tmp_path / "ckpt", tiny_model, tokenizer_path, fmt, shards)
    loaded = MobileVLM.from_pretrained(ckpt, dtype=torch.float32, device="cpu")
    assert loaded.config.vision.num_hidden_layers == 3 and loaded.config.vision_layers_used == 2  # inferred from keys
    assert loaded.config.vision.image_size == 112 and loaded.config.vision.patch_size == 14  # from the weights
    assert loaded.config.llm.num_attention_heads == 4  # not the stale n_head field
    assert loaded.tokenizer is not None
    for got, expected in zip(outputs(loaded), outputs(tiny_model)):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_save_and_reload_round_trip(tmp_path, official_checkpoint):
    model = MobileVLM.from_pretrained(official_checkpoint, dtype=torch.float32, device="cpu")
    model.save_pretrained(tmp_path / "clean")
    again = MobileVLM.from_pretrained(tmp_path / "clean", dtype=torch.float32, device="cpu")
    assert sorted(p.name for p in (tmp_path / "clean").iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]
    for got, expected in zip(outputs(again), outputs(model)):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_dtype_is_applied(official_checkpoint):
    model = MobileVLM.from_pretrained(official_checkpoint, dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_quantising_while_loading_matches_quantising_afterwards_and_reads_one_piece_at_a_time(tmp_path, tiny_model, tokenizer_path, fmt, monkeypatch):
    from mobilevlm_agent.model import checkpoint, quant

    ckpt = write_official_checkpoint(tmp_path / "ckpt", tiny_model, tokenizer_path, fmt, shards=2)
    later = quant.quantize_model(MobileVLM.from_pretrained(ckpt, dtype=torch.float32, device="cpu"), "int4", 32, "int8")
    read_before_piece, pieces = [], []
    opened = checkpoint.open_weight_file

    def counting_open(path):  # count the tensors read by the time each piece is quantised
        return {k: checkpoint.StoredTensor(t.shape, lambda t=t, k=k: (read_before_piece.append(k), t.read())[1]) for k, t in opened(path).items()}

    quantize_part = quant.quantize_part
    monkeypatch.setattr(checkpoint, "open_weight_file", counting_open)
    monkeypatch.setattr(quant, "quantize_part", lambda parent, attr, *a: (pieces.append(len(read_before_piece)), quantize_part(parent, attr, *a))[1])
    during = checkpoint.load_pretrained(ckpt, dtype=torch.float32, device="cpu", quant="int4", group_size=32, vision_quant="int8")
    assert len(pieces) > 8 and pieces == sorted(pieces) and pieces[0] < pieces[-1] // 4  # reads spread over the pieces
    assert len(read_before_piece) == len(set(read_before_piece))  # each tensor read once
    assert isinstance(during.llm.layers[0].mlp.gate_proj, quant.Int4Linear)
    for got, expected in zip(outputs(during), outputs(later)):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)


def rewrite(tmp_path, tiny_model, tokenizer_path, edit_state=None, edit_config=None):
    ckpt = tmp_path / "ckpt"
    sd = official_state_dict(tiny_model)
    if edit_state:
        edit_state(sd)
    write_official_checkpoint(ckpt, tiny_model, tokenizer_path)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, ckpt / "model.safetensors")
    if edit_config:
        cfg = json.loads((ckpt / "config.json").read_text())
        edit_config(cfg)
        (ckpt / "config.json").write_text(json.dumps(cfg))
    return ckpt


def test_missing_key_is_named(tmp_path, tiny_model, tokenizer_path):
    ckpt = rewrite(tmp_path, tiny_model, tokenizer_path, edit_state=lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): model\.layers\.1\.mlp\.up_proj\.weight"):
        MobileVLM.from_pretrained(ckpt, device="cpu")


def test_unexpected_key_is_named(tmp_path, tiny_model, tokenizer_path):
    ckpt = rewrite(tmp_path, tiny_model, tokenizer_path, edit_state=lambda sd: sd.__setitem__("model.extra_head.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): model\.extra_head\.weight"):
        MobileVLM.from_pretrained(ckpt, device="cpu")


def test_shape_mismatch_names_key_and_both_shapes(tmp_path, tiny_model, tokenizer_path):
    ckpt = rewrite(tmp_path, tiny_model, tokenizer_path, edit_state=lambda sd: sd.__setitem__("lm_head.weight", torch.zeros(512, 32)))
    with pytest.raises(CheckpointError, match=r"shape mismatch for lm_head\.weight: checkpoint \(512, 32\), model \(512, 64\)"):
        MobileVLM.from_pretrained(ckpt, device="cpu")


def test_unknown_projector_type(tmp_path, tiny_model, tokenizer_path):
    ckpt = rewrite(tmp_path, tiny_model, tokenizer_path, edit_config=lambda c: c.__setitem__("mm_projector_type", "qformer"))
    with pytest.raises(CheckpointError, match="config.json: unknown mm_projector_type 'qformer'"):
        MobileVLM.from_pretrained(ckpt, device="cpu")


def test_truncated_safetensors(tmp_path, official_checkpoint):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(official_checkpoint, ckpt)
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors file"):
        MobileVLM.from_pretrained(ckpt, device="cpu")


@pytest.mark.parametrize("damage", ["header length", "header json", "offsets", "trailing bytes"])
def test_damaged_safetensors_header(tmp_path, official_checkpoint, damage):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(official_checkpoint, ckpt)
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    n = int.from_bytes(data[:8], "little")
    if damage == "header length":
        data[:8] = (len(data) * 2).to_bytes(8, "little")
    elif damage == "header json":
        data[8:12] = b"\xff\xfe{["
    elif damage == "offsets":  # the first tensor claims twice its bytes
        header = json.loads(data[8 : 8 + n])
        key = next(k for k in header if k != "__metadata__")
        begin, end = header[key]["data_offsets"]
        header[key]["data_offsets"] = [begin, begin + 2 * (end - begin)]
        text = json.dumps(header).encode()
        data = bytearray(len(text).to_bytes(8, "little")) + text + data[8 + n :]
    else:
        data += b"\0" * 16
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors file"):
        MobileVLM.from_pretrained(ckpt, device="cpu")


def test_truncated_bin(tmp_path, tiny_model, tokenizer_path):
    ckpt = write_official_checkpoint(tmp_path / "ckpt", tiny_model, tokenizer_path, "bin")
    data = (ckpt / "pytorch_model.bin").read_bytes()
    (ckpt / "pytorch_model.bin").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt or truncated checkpoint file"):
        MobileVLM.from_pretrained(ckpt, device="cpu")


class Payload:
    """Stands in for a malicious object: unpickling it must never be attempted."""

    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_in_bin_are_refused(tmp_path, tiny_model, tokenizer_path, capsys):
    ckpt = write_official_checkpoint(tmp_path / "ckpt", tiny_model, tokenizer_path, "bin")
    sd = official_state_dict(tiny_model)
    sd["model.payload"] = Payload()
    torch.save(sd, ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load .*pickled objects"):
        MobileVLM.from_pretrained(ckpt, device="cpu")
    assert "pwned" not in capsys.readouterr().out


def test_missing_things(tmp_path, official_checkpoint):
    with pytest.raises(CheckpointError, match="model directory not found"):
        MobileVLM.from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        MobileVLM.from_pretrained(empty)
    shutil.copy(official_checkpoint / "config.json", empty)
    with pytest.raises(CheckpointError, match="no weights in"):
        MobileVLM.from_pretrained(empty)
    (empty / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        MobileVLM.from_pretrained(empty)


def test_shard_index_pointing_at_missing_file(tmp_path, tiny_model, tokenizer_path):
    ckpt = write_official_checkpoint(tmp_path / "ckpt", tiny_model, tokenizer_path, "safetensors", shards=2)
    next(ckpt.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="weight file listed in the index is missing"):
        MobileVLM.from_pretrained(ckpt, device="cpu")
