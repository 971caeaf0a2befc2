"""CUDA paths: bf16 by default on GPU, agreement with the CPU fp32 reference. Skipped where there is no GPU."""
from __future__ import annotations

import pytest
import torch

from mobilevlm_agent.chat import ChatSession
from mobilevlm_agent.generate import SamplingParams
from mobilevlm_agent.model.vlm import MobileVLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_defaults_to_bf16_and_matches_cpu(official_checkpoint):
    cpu = MobileVLM.from_pretrained(official_checkpoint, device="cpu")
    gpu = MobileVLM.from_pretrained(official_checkpoint, device="cuda")
    assert gpu.dtype == torch.bfloat16 and gpu.device.type == "cuda"
    pixels = torch.randn(1, 3, 112, 112)
    ids = torch.randint(3, 300, (1, 30))
    with torch.no_grad():
        ref_feats, ref_logits = cpu.encode_images(pixels), cpu.llm(ids)
        feats, logits = gpu.encode_images(pixels.cuda()), gpu.llm(ids.cuda())
    cos = torch.nn.functional.cosine_similarity
    assert cos(feats.float().cpu().flatten(), ref_feats.flatten(), dim=0) > 0.99
    assert cos(logits.float().cpu().flatten(), ref_logits.flatten(), dim=0) > 0.99


def test_gpu_fp32_greedy_chat_matches_cpu(official_checkpoint, scene_image):
    params = SamplingParams(max_new_tokens=16)
    answers = []
    for device in ("cpu", "cuda"):
        model = MobileVLM.from_pretrained(official_checkpoint, dtype=torch.float32, device=device)
        chat = ChatSession(model)
        answers.append([chat.ask("What is it?", image=scene_image, params=params).token_ids, chat.ask("Where?", params=params).token_ids])
    assert answers[0] == answers[1]
