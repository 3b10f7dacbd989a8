"""benchmarks/memory_plan.py: exact parameter counts, hand-checked memory terms, the measured fit."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plan():
    spec = importlib.util.spec_from_file_location("memory_plan", REPO / "benchmarks" / "memory_plan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_plan"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_parameter_counts_are_the_published_ones(plan):
    one_b = plan.llama_counts("llama-3.2-1b")
    assert one_b.llm_params == 1_235_814_400  # Llama-3.2-1B (tied embeddings)
    # LoRA r 8 on q k v o gate up down of 16 layers: r * (in + out) per projection
    per_layer = 8 * ((2048 + 2048) * 2 + (2048 + 512) * 2 + (2048 + 8192) * 3)
    assert one_b.lora_params == 16 * per_layer
    assert one_b.adaptor_params == 1280 * 5 * 2048 + 2048 + 2048 * 2048 + 2048
    assert plan.llama_counts("llama-3.1-8b").llm_params == 8_030_261_248


def test_plan_row_terms_by_hand(plan):
    counts = plan.ModelCounts(name="toy", hidden=10, intermediate=40, layers=2, vocab=100,
                              llm_params=1000, largest_layer_params=300, lora_params=50,
                              adaptor_params=20, encoder_params=0)
    row = plan.plan_row(counts, "full", "fsdp2", gpus=4, micro_batch=2, seq_len=5, response_tokens=3,
                        act_coef=(1.0, 0.5), checkpointing=False, gpu_gb=1.0)
    assert row.weights_and_optimizer_gb == round(16 * 1020 / 4 / 1e9, 2)
    tokens, per_token_layer = 2 * 5, 1.0 * 10 + 0.5 * 40
    total = 16 * 1020 / 4 + 2 * 2 * 300 + tokens * 2 * per_token_layer + 2 * 3 * 100 * 10
    assert row.total_gb == round(total / 1e9, 1) and row.fits
    lora = plan.plan_row(counts, "lora", "ddp", gpus=4, micro_batch=2, seq_len=5, response_tokens=3,
                         act_coef=(1.0, 0.5), checkpointing=True, gpu_gb=1.0)
    assert lora.weights_and_optimizer_gb == round((16 * 70 + 4 * 1000) / 1e9, 2)
    assert lora.activations_gb == round(tokens * (2 * 2 * 10 + per_token_layer) / 1e9, 2)
    with pytest.raises(ValueError, match="strategy"):
        plan.plan_row(counts, "adapter", "ddp", 1, 1, 1, 1, (1.0, 1.0), False, 1.0)


def test_activation_bytes_grow_with_width_and_the_fit_holds(plan):
    narrow, wide = plan.saved_bytes_per_token(32, 128), plan.saved_bytes_per_token(64, 128)
    assert 0 < narrow < wide
    a, b, worst = plan.fit_activation_model([(32, 128), (64, 128), (64, 256)])
    assert a > 0 and b > 0 and worst < 0.05


def test_main_writes_json(plan, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert plan.main(["--widths", "32x128,64x128,64x256", "--gpus", "1,8", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {(r["model"], r["strategy"], r["engine"], r["gpus"], r["checkpointing"]): r for r in data["rows"]}
    # 8B full fine-tuning: 16 bytes per parameter does not fit one 80 GB GPU, and fits 8 with sharding
    assert not rows[("llama-3.1-8b", "full", "ddp", 1, True)]["fits"]
    assert rows[("llama-3.1-8b", "full", "fsdp2", 8, True)]["fits"]
    assert "| llama-3.1-8b | full | fsdp2 | 8 |" in capsys.readouterr().out
