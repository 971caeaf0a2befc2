"""The `mobilevlm-agent` command line: one typed function per subcommand, help from their docstrings."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mobilevlm_agent.errors import InputError, MobileVLMError
from mobilevlm_agent.model.quant import QUANT_MODES, VISION_QUANT_MODES

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _dtype(name: str | None) -> torch.dtype | None:
    return DTYPES[name] if name else None


def cmd_ask(args: argparse.Namespace) -> int:
    """Ask a question about an image and stream the answer to stdout.

    Greedy with --temperature 0 (the default). --json prints one object instead:
    {"text", "token_ids", "prompt_tokens", "visual_tokens", "finish_reason", "timings"}.
    """
    from mobilevlm_agent.chat import ChatSession
    from mobilevlm_agent.generate import SamplingParams
    from mobilevlm_agent.model.checkpoint import load_model

    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, args.backend, dtype=_dtype(args.dtype), device=args.device, threads=args.threads,
                       quant=args.quant, group_size=args.group_size, vision_quant=args.vision_quant)
    chat = ChatSession(model, template=args.template)
    if args.json:
        answer = chat.ask(args.prompt, image=args.image, params=params)
        print(json.dumps({k: getattr(answer, k) for k in ("text", "token_ids", "prompt_tokens", "visual_tokens", "finish_reason", "timings")}))
        return 0
    answer = chat.ask(args.prompt, image=args.image, params=params, on_text=lambda t: print(t, end="", flush=True))
    print()
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print a model's architecture, parameter counts per part and visual-token count.

    TARGET is a checkpoint directory or the name of a config in models/ (see --list).
    """
    from mobilevlm_agent.model.config import MobileVLMConfig, available_configs
    from mobilevlm_agent.model.vlm import MobileVLM

    if args.list or args.target is None:
        print("\n".join(available_configs()))
        return 0
    if Path(args.target).is_dir():
        model = MobileVLM.from_pretrained(args.target, dtype=torch.bfloat16, device="cpu")
    else:
        with torch.device("meta"):
            model = MobileVLM(MobileVLMConfig.from_name(args.target))
    info = describe(model)
    print(json.dumps(info, indent=None if args.json else 2))
    return 0


def describe(model) -> dict:
    cfg = model.config

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    info = {
        "name": cfg.name,
        "llm": {"layers": cfg.llm.num_hidden_layers, "hidden": cfg.llm.hidden_size, "heads": cfg.llm.num_attention_heads,
                "kv_heads": cfg.llm.num_key_value_heads, "head_dim": cfg.llm.head_dim, "ffn": cfg.llm.intermediate_size,
                "vocab": cfg.llm.vocab_size, "context": cfg.llm.max_position_embeddings},
        "params": {"vision": count(model.vision), "projector": count(model.projector), "llm": count(model.llm), "total": count(model)},
        "visual_tokens": cfg.num_visual_tokens,
    }
    if cfg.vision is not None:
        v = cfg.vision
        info["vision"] = {"image_size": v.image_size, "patch": v.patch_size, "width": v.hidden_size, "layers_in_checkpoint": v.num_hidden_layers,
                          "layers_run": cfg.vision_layers_used, "heads": v.num_attention_heads}
        info["projector"] = cfg.projector_type
    if model.tokenizer is not None:
        info["tokenizer_vocab"] = model.tokenizer.vocab_size
    return info


def cmd_convert(args: argparse.Namespace) -> int:
    """Load a checkpoint directory (official .bin, sharded, or safetensors) and write a clean safetensors one.

    The output has official key names, only the vision layers that are run, and the tokenizer.
    """
    from mobilevlm_agent.model.vlm import MobileVLM

    model = MobileVLM.from_pretrained(args.src, dtype=_dtype(args.dtype), device="cpu")
    model.save_pretrained(args.dst)
    print(f"wrote {args.dst} ({model.dtype}, {sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


def cmd_init_random(args: argparse.Namespace) -> int:
    """Write a random-weight checkpoint of a named config (gibberish answers; for tests and benchmarks)."""
    from mobilevlm_agent.model.random_init import random_checkpoint

    out = random_checkpoint(args.config, args.out, seed=args.seed, tokenizer=args.tokenizer, dtype=_dtype(args.dtype))
    print(f"wrote {out}")
    return 0


def cmd_data_tokenize(args: argparse.Namespace) -> int:
    """Tokenize raw text (.txt: a document per line; .jsonl: a `text` field; .gz accepted) into bucket files.

    Streams the corpus; bad lines are counted in the manifest, not fatal.
    """
    from mobilevlm_agent.train.tokenize_data import tokenize_corpus

    manifest = tokenize_corpus(args.inputs, args.tokenizer, args.out, workers=args.workers)
    print(json.dumps({k: manifest[k] for k in ("documents", "tokens", "bad_lines", "blank_lines", "buckets", "dtype")}))
    return 0


def cmd_data_train_tokenizer(args: argparse.Namespace) -> int:
    """Train a LLaMA-style SentencePiece BPE tokenizer (<unk>=0, <s>=1, </s>=2, byte fallback) on text files.

    .txt: a line per sentence; .json/.jsonl (LLaVA/ShareGPT): every conversation turn.
    """
    from mobilevlm_agent.tokenizer import train_tokenizer
    from mobilevlm_agent.train.datasets import read_records

    def texts():
        for path in args.inputs:
            if path.endswith(".txt"):
                yield from (line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())
            else:
                for record in read_records(path):
                    yield from (str(turn.get("value", "")).replace("<image>", "") for turn in record.get("conversations", []))

    print(f"wrote {train_tokenizer(texts(), args.out, vocab_size=args.vocab_size)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train one stage of the recipe in this process (use `torchrun -m mobilevlm_agent.train` for many).

    RECIPE is a YAML file or a shipped recipe name: stage0-pretrain-1.4b, stage1-sft-1.4b,
    stage2a-projector-1.7b, stage2b-finetune-1.7b, ..., and tiny-* ones for tests.
    """
    from mobilevlm_agent.train.loop import main as train_main

    argv = [args.recipe, "--out", args.out] + (["--resume"] if args.resume else []) + [f"--set={s}" for s in args.overrides]
    return train_main(argv)


def cmd_plot(args: argparse.Namespace) -> int:
    """Plot RUN_DIR/metrics.jsonl (loss and learning rate per step) to a PNG; several runs: their losses side by side."""
    from mobilevlm_agent.train.plot import plot_run, plot_stages

    if len(args.run_dir) > 1 and not args.out:
        raise InputError("plotting several runs needs --out")
    print(f"wrote {plot_run(args.run_dir[0], args.out) if len(args.run_dir) == 1 else plot_stages(args.run_dir, args.out)}")
    return 0


def cmd_sim_export_gazebo(args: argparse.Namespace) -> int:
    """Write a generated scene as a Gazebo (gz-sim) SDF world, a ros_gz_bridge config and the scene YAML."""
    from mobilevlm_agent.sim.gazebo import export_gazebo
    from mobilevlm_agent.sim.scene import SceneSpec, generate_scene

    scene = SceneSpec.load(args.scene) if args.scene else generate_scene(args.seed)
    world, bridge = export_gazebo(scene, args.out)
    scene.save(Path(args.out) / "scene.yaml")
    print(f"wrote {world}, {bridge}, {Path(args.out) / 'scene.yaml'}")
    return 0


def cmd_sim_dataset(args: argparse.Namespace) -> int:
    """Generate training data in the simulator: llava.json + images/ (QA and navigation steps), corpus.txt, sharegpt.json."""
    from mobilevlm_agent.sim.dataset import DatasetConfig, write_dataset

    manifest = write_dataset(args.out, DatasetConfig(scenes=args.scenes, seed=args.seed, views_per_scene=args.views, nav_episodes_per_scene=args.episodes))
    print(json.dumps(manifest))
    return 0


def cmd_sim_dagger(args: argparse.Namespace) -> int:
    """A DAgger round: the model drives in new training scenes, the camera-only oracle labels the views it reaches;
    writes DATA/daggerS.json and DATA/balanced_daggerS.json (the --base mix plus the new samples), S = --seed."""
    from mobilevlm_agent.model.vlm import MobileVLM
    from mobilevlm_agent.sim.dagger import write_dagger
    from mobilevlm_agent.sim.dataset import DatasetConfig

    model = MobileVLM.from_pretrained(args.model, device=args.device)
    print(json.dumps(write_dagger(args.data, model, DatasetConfig(scenes=args.scenes, seed=args.seed, nav_episodes_per_scene=args.episodes), expert_prob=args.expert_prob, base=args.base)))
    return 0


def cmd_sim_questions(args: argparse.Namespace) -> int:
    """Questions from more rooms: the colour and shape questions of another `sim dataset` directory, and as many of
    its POPE "Yes" as "No", added to a mix; writes DATA/questions.json and DATA/balanced_questions.json."""
    from mobilevlm_agent.sim.questions import write_questions

    print(json.dumps(write_questions(args.data, args.source, base=args.base, pope_per_answer=args.pope_per_answer, seed=args.seed)))
    return 0


def cmd_sim_labels(args: argparse.Namespace) -> int:
    """The labelled views of several `sim dataset` directories in one labels file, for the vision stage."""
    from mobilevlm_agent.sim.questions import merge_labels

    print(json.dumps(merge_labels(args.out, args.sources)))
    return 0


def cmd_sim_contrast(args: argparse.Namespace) -> int:
    """Contrast views: the robot in front of each object, that one view labelled for it and for another object;
    writes DATA/contrastS.json and DATA/balanced_contrastS.json (the --base mix plus the new samples), S = --seed."""
    from mobilevlm_agent.sim.contrast import write_contrast

    print(json.dumps(write_contrast(args.data, args.seed, args.scenes, base=args.base)))
    return 0


def cmd_eval_sim(args: argparse.Namespace) -> int:
    """Score a model on held-out simulator seeds (POPE per split, colour/shape QA, closed-loop navigation),
    beside the oracle (upper bound) and a random policy. --json prints one object."""
    from mobilevlm_agent.eval.sim_eval import evaluate, format_table
    from mobilevlm_agent.model.vlm import MobileVLM

    model = MobileVLM.from_pretrained(args.model, device=args.device) if args.model else None
    report = evaluate(model, args.episodes, args.seed, verify_stop=not args.no_stop_check, hold_turns=not args.no_turn_hold)
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def cmd_eval_vision(args: argparse.Namespace) -> int:
    """Score a vision-stage checkpoint: per object, the colour and shape its visual tokens tell (through the stage's
    head), on a labels.json of views it was not trained on (e.g. `sim dataset --seed 9 --episodes 0`)."""
    from mobilevlm_agent.eval.vision_probe import probe

    report = probe(args.checkpoint, args.labels, args.limit)
    if args.json:
        print(json.dumps(report))
        return 0

    def line(scores: dict) -> str:
        return "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items())

    print(line({k: v for k, v in report.items() if k != "by_size"}))
    for bucket, scores in report["by_size"].items():
        print(f"  {bucket:>12}: {line(scores)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the agent in the simulator: answer a question about the view, then drive to the target.

    Writes OUT/demo.mp4 (camera view beside a top-down map), OUT/trajectory.png and OUT/summary.json.
    """
    from mobilevlm_agent.model.vlm import MobileVLM
    from mobilevlm_agent.sim.demo import run_demo

    model = MobileVLM.from_pretrained(args.model, device=args.device) if args.model else None
    planner = args.planner or ("model" if model is not None else "oracle")
    run_demo(args.out, model, args.seed, args.instruction, args.question, planner, say=print)
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    """Run a ROS 2 YAML launch file without `ros2 launch`: one process per node, prefixed logs, Ctrl-C stops all.

    Example: mobilevlm-agent launch launch/sim.launch.yaml dry_run:=false
    Exits non-zero when a node marked `on_exit: shutdown` dies.
    """
    from mobilevlm_agent.launcher import launch_main

    return launch_main(args.file, args.assignments)


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure speed: decode (prefill + decode tok/s), encode (ViT + projector ms) or ttft (image + question).

    --config takes any config name in models/ (random weights, no download) or a checkpoint directory. --json prints
    one object with prefill_tok_s, decode_tok_s, encode_ms, ttft_ms, ttft_warm_ms (the image already prefilled),
    peak_rss_mb (null where not measured), the settings, and the raw run times.
    """
    from mobilevlm_agent.bench import run_bench

    result = run_bench(args.task, args.config, args.backend, args.quant, args.group_size, args.vision_quant, args.threads,
                       args.prompt_tokens, args.new_tokens, args.repeats, args.device)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    shown = {k: v for k, v in result.to_dict().items() if k != "runs" and v is not None}
    width = max(map(len, shown))
    for key, value in shown.items():
        print(f"{key:<{width}}  {value:.2f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return 0


def print_written(paths: list[Path]) -> int:
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_export_gguf(args: argparse.Namespace) -> int:
    """Export a checkpoint for llama.cpp: model-QUANT.gguf (MobileLLaMA) and mmproj-f16.gguf (ViT + LDP/LDPv2)."""
    from mobilevlm_agent.export.gguf import export_gguf

    return print_written(export_gguf(args.model_dir, args.out_dir, args.quant, args.llm_only))


def cmd_export_onnx(args: argparse.Namespace) -> int:
    """Export a checkpoint for onnxruntime (`--backend ort`): decoder.onnx with a KV cache, vision.onnx, embeddings."""
    from mobilevlm_agent.export.onnx import export_onnx

    return print_written(export_onnx(args.model_dir, args.out_dir, args.quant, args.group_size, args.vision_quant))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobilevlm-agent", description="On-board MobileVLM for robots: ask, inspect and convert models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn, parent=sub) -> argparse.ArgumentParser:
        """A subcommand whose help is its function's docstring."""
        doc = (fn.__doc__ or "").strip()
        p = parent.add_parser(name, help=doc.splitlines()[0], description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(fn=fn)
        return p

    def group(name: str, text: str):
        return sub.add_parser(name, help=text, description=text).add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    p = add("ask", cmd_ask)
    p.add_argument("--model", required=True, help="checkpoint directory (config.json, weights, tokenizer.model); with --backend ort, an `export onnx` directory")
    p.add_argument("--backend", choices=["torch", "ort"], default="torch", help="torch (default) or onnxruntime")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's default)")
    p.add_argument("--image", help="image file (any format OpenCV or PIL reads); omit for text-only chat")
    p.add_argument("--prompt", required=True, help="the question")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="HF-style penalty on seen tokens (1 = off)")
    p.add_argument("--seed", type=int, help="sampling seed, for reproducible sampled answers")
    p.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--template", help="conversation template: v1 (default for chat) or plain")
    p.add_argument("--quant", choices=QUANT_MODES, default="none", help="decoder weights (default: as loaded)")
    p.add_argument("--group-size", type=int, default=64, help="int4 group size (32, 64, 128, 256)")
    p.add_argument("--vision-quant", choices=VISION_QUANT_MODES, default="none", help="ViT weights (default: as loaded)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")

    p = add("info", cmd_info)
    p.add_argument("target", nargs="?", help="checkpoint directory or config name")
    p.add_argument("--list", action="store_true", help="list the named configs")
    p.add_argument("--json", action="store_true", help="one-line JSON")

    p = add("convert", cmd_convert)
    p.add_argument("src", help="source checkpoint directory")
    p.add_argument("dst", help="output directory (replaced atomically)")
    p.add_argument("--dtype", choices=DTYPES, default="bf16", help="dtype of the written weights (default bf16)")

    p = add("init-random", cmd_init_random)
    p.add_argument("config", help="config name from models/ (e.g. tiny-vlm) or a YAML path")
    p.add_argument("out", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", help="tokenizer.model to ship (default: train a small one offline)")
    p.add_argument("--dtype", choices=DTYPES, help="dtype of the written weights (default fp32)")

    data = group("data", "Prepare training data.")
    p = add("train-tokenizer", cmd_data_train_tokenizer, data)
    p.add_argument("inputs", nargs="+", help=".txt, .json or .jsonl files")
    p.add_argument("--out", required=True, help="tokenizer.model to write")
    p.add_argument("--vocab-size", type=int, default=1024)

    p = add("tokenize", cmd_data_tokenize, data)
    p.add_argument("inputs", nargs="+", help="corpus files")
    p.add_argument("--tokenizer", required=True, help="tokenizer.model")
    p.add_argument("--out", required=True, help="output directory for buckets, index and manifest")
    p.add_argument("--workers", type=int, default=1, help="tokenizer processes (default 1)")

    sim = group("sim", "The embedded MuJoCo simulator.")
    p = add("export-gazebo", cmd_sim_export_gazebo, sim)
    p.add_argument("--seed", type=int, default=0, help="procedural scene seed")
    p.add_argument("--scene", help="a scene YAML instead of a generated one")
    p.add_argument("--out", required=True, help="output directory")

    p = add("dataset", cmd_sim_dataset, sim)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--scenes", type=int, default=20, help="procedural scenes (default 20)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; scene seeds derive from it")
    p.add_argument("--views", type=int, default=8, help="camera views per scene for QA (default 8)")
    p.add_argument("--episodes", type=int, default=2, help="oracle navigation episodes per scene (default 2)")

    p = add("dagger", cmd_sim_dagger, sim)
    p.add_argument("--model", required=True, help="checkpoint directory: the model that drives")
    p.add_argument("--data", required=True, help="a `sim dataset` output directory")
    p.add_argument("--base", default="balanced.json", help="the mix in DATA to add to (default balanced.json; a previous round's balanced_daggerS.json aggregates)")
    p.add_argument("--scenes", type=int, default=40, help="procedural scenes (default 40)")
    p.add_argument("--seed", type=int, default=1, help="dataset seed of the new scenes (default 1; `sim dataset` used 0)")
    p.add_argument("--episodes", type=int, default=3, help="episodes per scene (default 3)")
    p.add_argument("--expert-prob", type=float, default=0.3, help="chance the oracle's action is executed instead of the model's (default 0.3)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")

    p = add("questions", cmd_sim_questions, sim)
    p.add_argument("--data", required=True, help="a `sim dataset` output directory, where the mix is written")
    p.add_argument("--source", required=True, help="another `sim dataset` output directory (other rooms, e.g. --episodes 0)")
    p.add_argument("--base", default="balanced.json", help="the mix in DATA to add to (default balanced.json)")
    p.add_argument("--pope-per-answer", type=int, default=4000, help="POPE questions added per answer, Yes and No (default 4000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the POPE sample and the shuffle (default 0)")

    p = add("labels", cmd_sim_labels, sim)
    p.add_argument("sources", nargs="+", help="`sim dataset` output directories")
    p.add_argument("--out", required=True, help="the labels file to write (paths in it are relative to its folder)")

    p = add("contrast", cmd_sim_contrast, sim)
    p.add_argument("--data", required=True, help="a `sim dataset` output directory")
    p.add_argument("--base", default="balanced.json", help="the mix in DATA to add to (default balanced.json)")
    p.add_argument("--scenes", type=int, default=120, help="procedural scenes (default 120)")
    p.add_argument("--seed", type=int, default=3, help="dataset seed of the new scenes (default 3; `sim dataset` used 0, DAgger 1 and 2)")

    eval_group = group("eval", "Evaluation harnesses.")
    p = add("sim", cmd_eval_sim, eval_group)
    p.add_argument("--model", help="checkpoint directory (omit to score only the oracle and random baselines)")
    p.add_argument("--episodes", type=int, default=20, help="navigation episodes (questions come from half as many scenes)")
    p.add_argument("--seed", type=int, default=0, help="held-out evaluation seed")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--no-stop-check", action="store_true", help="let the model planner stop without its goal questions")
    p.add_argument("--no-turn-hold", action="store_true", help="let the model planner reverse its previous turn (with --no-stop-check: the raw policy)")

    p = add("vision", cmd_eval_vision, eval_group)
    p.add_argument("checkpoint", help="a vision-stage checkpoint: RUN/checkpoints/step-N (model/ and head.safetensors)")
    p.add_argument("labels", help="labels.json of held-out views")
    p.add_argument("--limit", type=int, help="score only the first N views")
    p.add_argument("--json", action="store_true", help="one JSON object")

    p = add("demo", cmd_demo)
    p.add_argument("--model", help="checkpoint directory (answers the question; plans unless --planner oracle)")
    p.add_argument("--seed", type=int, default=0, help="scene seed")
    p.add_argument("--instruction", help="navigation instruction (default: go to the scene's target object)")
    # the demo model knows fixed phrasings: asked "What do you see?" it answers with a count
    p.add_argument("--question", default="Describe the scene.", help="question about the first view")
    p.add_argument("--planner", choices=["model", "oracle"], help="who plans (default: model when --model is given, else oracle)")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--out", default="build/demo", help="output directory (default build/demo)")

    p = add("launch", cmd_launch)
    p.add_argument("file", help="a YAML launch file (launch/*.launch.yaml)")
    p.add_argument("assignments", nargs="*", metavar="NAME:=VALUE", help="launch arguments")

    p = add("train", cmd_train)
    p.add_argument("recipe", help="recipe YAML or shipped recipe name")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field (repeatable)")

    p = add("bench", cmd_bench)
    p.add_argument("task", choices=["decode", "encode", "ttft"])
    p.add_argument("--config", required=True, help="config name in models/ (random weights) or a checkpoint directory")
    p.add_argument("--backend", choices=["torch", "ort"], default="torch", help="torch (default) or onnxruntime")
    p.add_argument("--quant", choices=QUANT_MODES, default="none", help="decoder weights (default none = fp32)")
    p.add_argument("--group-size", type=int, default=64, help="int4 group size: 32, 64 (default), 128 or 256")
    p.add_argument("--vision-quant", choices=VISION_QUANT_MODES, default="none", help="ViT weights (default none = fp32)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's default)")
    p.add_argument("--prompt-tokens", type=int, help="prompt length (default 200; 30 for ttft, plus the visual tokens)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens to decode (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up; the median is reported")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--json", action="store_true", help="one JSON object")

    export = group("export", "Export a checkpoint for other runtimes.")
    p = add("gguf", cmd_export_gguf, export)
    p.add_argument("model_dir", help="checkpoint directory or bundled model name (e.g. demo)")
    p.add_argument("out_dir", help="output directory")
    p.add_argument("--quant", choices=["q4_0", "q8_0", "f16"], default="q4_0", help="LLM weights (default q4_0); the mmproj is f16")
    p.add_argument("--llm-only", action="store_true", help="write the LLM file alone (no mmproj)")

    p = add("onnx", cmd_export_onnx, export)
    p.add_argument("model_dir", help="checkpoint directory or bundled model name (e.g. demo)")
    p.add_argument("out_dir", help="output directory")
    p.add_argument("--quant", choices=["none", "int8", "int4"], default="int4", help="decoder weights (default int4; lm_head int8)")
    p.add_argument("--group-size", type=int, default=32, help="quantisation block: 16, 32 (default), 64, 128, 256")
    p.add_argument("--vision-quant", choices=["none", "int8"], default="none", help="ViT + projector (default none = fp32)")

    p = add("plot", cmd_plot)
    p.add_argument("run_dir", nargs="+", help="a training run directory (several: one loss panel each)")
    p.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except MobileVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
