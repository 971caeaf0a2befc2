"""The trainer: overfitting in each stage, what each stage freezes, torchrun equivalence, exact resume, LoRA."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import overrides
from mobilevlm_agent.errors import ConfigError
from mobilevlm_agent.model.vlm import MobileVLM
from mobilevlm_agent.train.datasets import DOMINANT
from mobilevlm_agent.train.loop import main as train_main
from mobilevlm_agent.train.recipe import load_recipe


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def train(recipe: str, run: Path, world: dict, *extra: str, **kw) -> Path:
    assert train_main([recipe, "--out", str(run), *[f"--set={o}" for o in overrides(world, **kw)], *[f"--set={e}" for e in extra]]) == 0
    return run


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, data_world):
    """Stage 0 -> 1 -> 2a -> 2b on the small world, each starting from the previous stage's model."""
    root = tmp_path_factory.mktemp("runs")
    s0 = train("tiny-stage0", root / "s0", data_world, data__path=data_world["tokens"], max_steps=60)
    s1 = train("tiny-stage1", root / "s1", data_world, f"model={s0 / 'model'}", data__path=data_world["sft"])
    s2a = train("tiny-stage2a", root / "s2a", data_world, "init_from={llm: %s}" % (s1 / "model"), data__path=data_world["pretrain"], max_steps=60)
    s2b = train("tiny-stage2b", root / "s2b", data_world, f"model={s2a / 'model'}", data__path=data_world["finetune"], data__num_workers=2)
    return {"s0": s0, "s1": s1, "s2a": s2a, "s2b": s2b}


@pytest.mark.parametrize("stage,ratio", [("s0", 0.5), ("s1", 0.5), ("s2a", 0.7), ("s2b", 0.5)])
def test_each_stage_overfits_its_small_corpus(pipeline, stage, ratio):
    curve = losses(pipeline[stage])
    start, end = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    print(f"{stage}: loss {start:.3f} -> {end:.3f}")
    assert end < ratio * start


def state(path: Path) -> dict[str, torch.Tensor]:
    return MobileVLM.from_pretrained(path, dtype=torch.float32, device="cpu").state_dict()


def test_stage_2a_trains_only_the_projector(pipeline):
    before, after = state(pipeline["s1"] / "model"), state(pipeline["s2a"] / "model")
    for key, value in after.items():
        if key.startswith("projector."):
            continue
        if key.startswith("llm."):
            assert torch.equal(value, before[key]), key
    first = MobileVLM.from_pretrained(pipeline["s2a"] / "checkpoints" / "step-0000060" / "model", device="cpu").state_dict()
    assert all(torch.equal(first[k], after[k]) for k in after)  # the checkpoint holds the final weights
    changed = [k for k in after if k.startswith("projector.") and not torch.equal(after[k], random_init_state()[k])]
    assert changed


def random_init_state():
    from mobilevlm_agent.model.random_init import random_model

    return random_model("tiny-vlm", seed=0).state_dict()


def test_stage_2a_keeps_the_vision_tower_of_its_init(pipeline):
    init, after = random_init_state(), state(pipeline["s2a"] / "model")
    assert all(torch.equal(after[k], init[k]) for k in after if k.startswith("vision."))


def test_stage_2b_leaves_vision_bit_identical_and_trains_llm_and_projector(pipeline):
    before, after = state(pipeline["s2a"] / "model"), state(pipeline["s2b"] / "model")
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("vision."))
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("llm."))
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("projector."))


def test_trained_model_answers_through_ask(pipeline):
    from mobilevlm_agent.cli import main

    assert main(["ask", "--model", str(pipeline["s2b"] / "model"), "--prompt", "What colour is it?", "--max-new-tokens", "4", "--json"]) == 0


def torchrun_cmd(nproc: int, run: Path, world: dict, *extra: str, port: int) -> list[str]:
    args = [f"--set={o}" for o in overrides(world, data__path=world["tokens"], max_steps=6)] + [f"--set={e}" for e in extra]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}", "-m", "mobilevlm_agent.train", "tiny-stage0", "--out", str(run), *args]


def rank_errors(run: subprocess.CompletedProcess) -> str:
    """The ranks' own error lines; torchrun's closing summary would fill a plain stderr tail."""
    lines = [l for l in run.stderr.splitlines() if re.search(r"error|terminate|fatal|exception|signal", l, re.I)]
    return "\n".join(lines[-40:])


def torchrun(nproc: int, run: Path, world: dict, *extra: str, port: int) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_cmd(nproc, run, world, *extra, port=port), capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "zero1", "fsdp"])
def test_two_processes_equal_one_process_with_accumulation(tmp_path, data_world, strategy):
    port = 29600 + os.getpid() % 300 + 4 * ("ddp", "zero1", "fsdp").index(strategy)
    one = torchrun(1, tmp_path / "one", data_world, "global_batch=4", "micro_batch=2", port=port)
    two = torchrun(2, tmp_path / "two", data_world, "global_batch=4", "micro_batch=2", f"strategy={strategy}", port=port + 2)
    assert one.returncode == 0 and two.returncode == 0, rank_errors(one) + rank_errors(two)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 6
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-5)
    one_model, two_model = state(tmp_path / "one" / "model"), state(tmp_path / "two" / "model")
    for k in one_model:  # the exported model, gathered from shards where there are any
        torch.testing.assert_close(two_model[k], one_model[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fsdp_run_resumes_exactly(tmp_path, data_world):
    port = 29700 + os.getpid() % 200
    args = ("global_batch=4", "micro_batch=2", "strategy=fsdp", "save_every=3")
    full = torchrun(2, tmp_path / "full", data_world, *args, port=port)
    assert full.returncode == 0, rank_errors(full)
    run = tmp_path / "part"
    part = torchrun(2, run, data_world, *args, "max_steps=3", port=port + 2)
    assert part.returncode == 0, rank_errors(part)
    shutil.rmtree(run / "model")
    resumed = subprocess.run([*torchrun_cmd(2, run, data_world, *args, port=port + 4), "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, rank_errors(resumed)
    assert losses(run) == losses(tmp_path / "full")


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path, data_world):
    args = [f"--set={o}" for o in overrides(data_world, data__path=data_world["tokens"], max_steps=400, save_every=20, data__seq_len=64)]
    cmd = [sys.executable, "-m", "mobilevlm_agent.train", "tiny-stage0", *args]
    subprocess.run([*cmd, "--out", str(tmp_path / "full")], check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "checkpoints" / "step-0000040").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model").exists(), "the run finished before it could be killed"
    logged = len(losses(tmp_path / "killed"))
    subprocess.run([*cmd, "--out", str(tmp_path / "killed"), "--resume"], check=True, capture_output=True, timeout=300)
    resumed, full = losses(tmp_path / "killed"), losses(tmp_path / "full")
    print(f"killed after {logged} logged steps; resumed to {len(resumed)}")
    assert len(resumed) == len(full) == 400
    assert resumed == full  # bit-exact: same data order, optimizer state and RNG


def test_checkpoints_are_pruned_and_atomic(tmp_path, data_world):
    run = train("tiny-stage0", tmp_path / "r", data_world, data__path=data_world["tokens"], max_steps=10, save_every=2, keep_last=2)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-0000008", "step-0000010"]
    assert sorted(p.name for p in (run / "checkpoints" / "step-0000010").iterdir()) == ["model", "optimizer.safetensors", "rng-0.safetensors", "trainer.json"]


def test_lora_trains_adapters_and_merges(tmp_path, data_world, pipeline):
    run = train("tiny-stage1", tmp_path / "lora", data_world, f"model={pipeline['s0'] / 'model'}", "lora={r: 4, alpha: 8, dropout: 0.0}", data__path=data_world["sft"], max_steps=30)
    curve = losses(run)
    assert curve[-1] < curve[0]
    merged, base = state(run / "model"), state(pipeline["s0"] / "model")
    assert any(not torch.equal(merged[k], base[k]) for k in merged if k.endswith("q_proj.weight"))
    assert all(torch.equal(merged[k], base[k]) for k in merged if k.endswith("norm.weight"))  # only LoRA targets move
    assert (run / "checkpoints" / "step-0000030" / "lora.safetensors").is_file()


def test_recipe_errors_are_clear(tmp_path, data_world):
    with pytest.raises(ConfigError, match=r"unknown recipe key\(s\) optim.lrr"):
        load_recipe("tiny-stage0", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="no recipe file 'nope'"):
        load_recipe("nope")
    with pytest.raises(ConfigError, match="data.path .* does not exist.*global_batch 3 is not a multiple"):
        load_recipe("tiny-stage0", ["data.path=/no/such", "global_batch=3"]).resolve(1)
    with pytest.raises(ConfigError, match="optim.lr must be a number, got 'fast'"):
        load_recipe("tiny-stage0", ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="only the vision stage has that term"):
        load_recipe("tiny-stage0", [f"data.path={data_world['tokens']}", "vision_pooled_weight=1"]).resolve(1)


def test_exponent_without_a_dot_is_a_float():
    # YAML 1.1 reads 6e-4 as a string; a user typing it on the command line means the number
    assert load_recipe("tiny-stage0", ["optim.lr=6e-4"]).optim.lr == pytest.approx(6e-4)


def test_every_shipped_recipe_parses():
    shipped = Path(__file__).parents[2] / "mobilevlm_agent" / "train" / "recipes"
    for path in shipped.glob("*.yaml"):
        recipe = load_recipe(path)
        assert recipe.stage in ("pretrain", "sft", "projector", "finetune", "vision"), path


def test_plot_writes_a_png(pipeline, tmp_path):
    from mobilevlm_agent.cli import main

    assert main(["plot", str(pipeline["s0"])]) == 0
    assert (pipeline["s0"] / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", str(pipeline["s0"]), str(pipeline["s1"]), "--out", str(tmp_path / "stages.png")]) == 0
    assert (tmp_path / "stages.png").read_bytes()[:4] == b"\x89PNG"


def test_vision_stage_learns_labels_and_trains_only_vision_and_projector(data_world, tmp_path):
    """The stand-in for CLIP pretraining: the labels become predictable; the LLM is untouched; the head is dropped."""
    import json

    from mobilevlm_agent.model.checkpoint import read_state_dict
    from mobilevlm_agent.train.loop import fit
    from mobilevlm_agent.train.recipe import load_recipe

    # unmirrored: the mirror doubles the 32 images (tested on its own) and would halve the epochs of these 60 steps
    recipe = load_recipe("demo-stagev", overrides(data_world, model="tiny-vlm-v2", data__path=data_world["labels"], max_steps=60, data__mirror=False,
                                                    micro_batch=8, global_batch=8, save_every=30, data__num_workers=0, optim__warmup_steps=5))
    out = fit(recipe, tmp_path / "sv")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "sv" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.3 * losses[0]
    after = read_state_dict(out)
    assert not any(k.startswith("head.") for k in after)
    from mobilevlm_agent.model.random_init import random_model

    init = random_model("tiny-vlm-v2", seed=0).state_dict()
    assert all(torch.equal(after[k], init[k]) for k in after if k.startswith("llm."))
    assert any(not torch.equal(after[k], init[k]) for k in after if k.startswith("vision."))
    assert any(not torch.equal(after[k], init[k]) for k in after if k.startswith("projector."))


def test_vision_stage_at_a_new_image_size_saves_a_model_that_loads_at_that_size(data_world, tmp_path):
    """`image_size` fine-tunes at a new resolution: 112 px (8 x 8 patches, 16 visual tokens) -> 140 px (10 x 10, 25)."""
    from mobilevlm_agent.train.loop import fit

    recipe = load_recipe("demo-stagev", overrides(data_world, model="tiny-vlm-v2", data__path=data_world["labels"], max_steps=4, data__mirror=False,
                                                    micro_batch=4, global_batch=4, data__num_workers=0, optim__warmup_steps=1, image_size=140))
    model = MobileVLM.from_pretrained(fit(recipe, tmp_path / "sv"))
    assert model.config.vision.image_size == 140 and model.config.num_visual_tokens == 25
    assert model.encode_images(torch.zeros(1, 3, 140, 140)).shape == (1, 25, model.config.llm.hidden_size)
    with pytest.raises(ConfigError, match="image_size -1"):
        load_recipe("demo-stagev", overrides(data_world, data__path=data_world["labels"], image_size=-1)).resolve(1)


def test_vision_probe_scores_what_the_tokens_learned(data_world, tmp_path):
    """`eval vision` on a vision stage trained with class groups: each object's colour and shape are read back from
    its own cells; a blank head (every class alike) reads only the first class of each group; a labels file without
    groups is refused."""
    from mobilevlm_agent.errors import InputError
    from mobilevlm_agent.eval.vision_probe import probe
    from mobilevlm_agent.train.loop import fit

    recipe = load_recipe("demo-stagev", overrides(data_world, model="tiny-vlm-v2", data__path=data_world["labels_grouped"], max_steps=60, data__mirror=False,
                                                    micro_batch=8, global_batch=8, save_every=60, data__num_workers=0, optim__warmup_steps=5))
    fit(recipe, tmp_path / "sv")
    trained = probe(tmp_path / "sv" / "checkpoints" / "step-0000060", data_world["labels_grouped"])
    assert trained["objects"] == 8 and trained["colour"] >= 0.75 and trained["shape"] >= 0.75, trained
    from safetensors.torch import load_file, save_file

    blank = tmp_path / "blank"
    shutil.copytree(tmp_path / "sv" / "checkpoints" / "step-0000060", blank)
    save_file({k: torch.zeros_like(v) for k, v in load_file(blank / "head.safetensors").items()}, blank / "head.safetensors")
    report = probe(blank, data_world["labels_grouped"])
    by_size = report.pop("by_size")
    assert report == {"objects": 8, "colour": 0.25, "shape": 0.5}
    assert sum(bucket["objects"] for bucket in by_size.values()) == 8  # every scored object in one size bucket
    assert all(set(bucket) == {"objects", "colour", "shape"} and bucket["objects"] > 0 for bucket in by_size.values())
    with pytest.raises(InputError, match="no class groups"):
        probe(tmp_path / "sv" / "checkpoints" / "step-0000060", data_world["labels"])


def test_vision_probe_size_buckets_meet_at_their_bounds():
    from mobilevlm_agent.eval.vision_probe import size_bucket

    assert [size_bucket(p) for p in (150, 499, 500, 1999, 2000, 90000)] == \
        ["150-499 px", "150-499 px", "500-1999 px", "500-1999 px", ">=2000 px", ">=2000 px"]


def test_vision_group_term_teaches_the_class_of_mostly_covered_cells_only():
    """Within a group (say, shapes) a cell an object mostly covers gets a softmax over the group: the gradient raises
    its true class against the others. A sliver (under DOMINANT) adds nothing beyond the presence term."""
    from mobilevlm_agent.model.random_init import random_model
    from mobilevlm_agent.train.loop import VisionForward

    model = random_model("tiny-vlm-v2", seed=0)
    tokens, pixels = model.config.num_visual_tokens, torch.randn(1, 3, model.config.vision.image_size, model.config.vision.image_size)
    plain, grouped = VisionForward(model, 3), VisionForward(model, 3, groups={"g": [0, 1]})
    grouped.head.load_state_dict(plain.head.state_dict())

    def loss_and_bias_grad(forward, cover: float):
        target = torch.zeros(tokens, 3)
        target[0, 1] = cover  # cell 0 shows class 1 of the group [0, 1], and class 2 (outside every group)
        target[0, 2] = cover
        forward.zero_grad()
        loss, _ = forward(None, [target], pixels)
        loss.backward()
        return loss.item(), forward.head.bias.grad.clone()

    sliver = DOMINANT / 2
    assert loss_and_bias_grad(grouped, sliver)[0] == pytest.approx(loss_and_bias_grad(plain, sliver)[0])
    (l_plain, g_plain), (l_grouped, g_grouped) = loss_and_bias_grad(plain, 0.8), loss_and_bias_grad(grouped, 0.8)
    assert l_grouped > l_plain
    extra = g_grouped - g_plain  # the group term's own gradient: descent raises class 1, lowers class 0, leaves 2
    assert extra[1] < 0 < extra[0] and extra[2] == pytest.approx(0.0, abs=1e-7)


def test_vision_pooled_term_scores_the_mean_logits_of_each_single_class_region():
    """The pooled term is the cross-entropy of each class's region mean; cells two classes of the group share, and
    slivers, are not part of any region, and the term is added only with a weight."""
    from mobilevlm_agent.model.random_init import random_model
    from mobilevlm_agent.train.loop import VisionForward

    forward = VisionForward(random_model("tiny-vlm-v2", seed=0), 3, groups={"g": [0, 1]}, pooled_weight=1.0)
    part = torch.zeros(1, 5, 2)
    part[0, 0, 0] = part[0, 1, 0] = 0.8  # a region of class 0: cells 0 and 1
    part[0, 2] = torch.tensor([0.5, 0.5])  # shared by both classes: in neither region
    part[0, 3, 1] = DOMINANT / 2  # a sliver of class 1
    part[0, 4, 1] = 0.9  # a region of class 1: cell 4
    logits = torch.randn(1, 5, 2, requires_grad=True)
    term = forward.pooled_term(logits, part, part.sum(-1))
    by_hand = (F.cross_entropy(logits[0, :2].mean(0, keepdim=True), torch.tensor([0]))
               + F.cross_entropy(logits[0, 4:5], torch.tensor([1]))) / 2
    assert term.item() == pytest.approx(by_hand.item(), rel=1e-6)
    term.backward()
    assert logits.grad[0, 2:4].abs().sum() == 0 and logits.grad[0, [0, 1, 4]].abs().sum() > 0
    empty = forward.pooled_term(logits, torch.zeros(1, 5, 2), torch.zeros(1, 5))
    assert empty.item() == 0.0


def test_gradient_checkpointing_gives_the_same_gradients():
    from mobilevlm_agent.model.random_init import random_model

    grads = []
    for enabled in (False, True):
        model = random_model("tiny-mobilellama", seed=5).train()
        model.llm.grad_checkpointing = enabled
        ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
        model.llm(ids).logsumexp(-1).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])
