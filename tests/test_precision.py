"""fp32 master weights on the paper-size presets: an AdamW step at LLaMA-Omni's lr really
moves the weights, training refuses bf16/fp16 trainable weights, and LoRA merges in fp32."""

from __future__ import annotations

import pytest
import torch
from helpers import REPO

from espnet_ext.tasks.compose import compose_train_config
from espnet_ext.tasks.speech_llm import SpeechLLMTask

CONF = REPO / "conf"
PAPER_PRESETS = ["llama32_1b_whisper_large_v3", "llama31_8b_whisper_large_v3"]


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_one_adamw_step_at_the_presets_dtype_moves_every_weight_by_lr(preset, tmp_path):
    """Adam's first step is lr · g / (|g| + eps) ≈ lr · sign(g) per element; in bf16 a step
    of 2e-5 is below half a unit in the last place for |w| >= 2^-7 and rounds to nothing."""
    conf = compose_train_config(CONF / f"model/{preset}.yaml", CONF / "train_full.yaml", tmp_path / "t.yaml")
    dtype = getattr(torch, conf["llm_conf"]["torch_dtype"])
    optim_conf = dict(conf["optim_conf"])
    lr = optim_conf.pop("lr")
    assert (conf["optim"], lr) == ("adamw", 2e-5)
    g = torch.Generator().manual_seed(0)
    magnitude = torch.rand(64, 64, generator=g) * 0.5 + 0.01  # typical LLM weights: 0.01-0.5
    sign = torch.randint(0, 2, (64, 64), generator=g) * 2 - 1
    w = torch.nn.Parameter((magnitude * sign).to(dtype))
    before = w.detach().clone()
    w.grad = torch.randn(64, 64, generator=g).to(dtype)
    torch.optim.AdamW([w], lr=lr, **optim_conf).step()
    step = (w.detach() - before).float()
    torch.testing.assert_close(step, -lr * torch.sign(w.grad.float()), rtol=0.02, atol=0.0)


def test_training_refuses_low_precision_trainable_weights(make_speech_llm, speech_llm_args):
    args = speech_llm_args("--optim", "adamw", "--optim_conf", "lr=0.00002", encoder=False)
    model = make_speech_llm(encoder=False)
    model.llm.to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"llm_conf.torch_dtype: float32.*--train_dtype float32"):
        SpeechLLMTask.build_optimizers(args, model)
    for p in model.llm.parameters():  # frozen bf16 weights (e.g. a LoRA base) are fine
        p.requires_grad_(False)
    (opt,) = SpeechLLMTask.build_optimizers(args, model)
    assert all(p.dtype == torch.float32 for g in opt.param_groups for p in g["params"])


def _bf16_lora_linear(b1: float, b2: float):
    """A peft LoRA Linear(2 → 1) of a bf16 base W = [1, 1] with B A · scaling = b1 + b2 per weight."""
    from peft import LoraConfig, get_peft_model

    base = torch.nn.Sequential()
    base.add_module("proj", torch.nn.Linear(2, 1, bias=False))
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=2, target_modules=["proj"]))  # scaling 1
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.base_layer.weight.fill_(1.0)
        layer.lora_A["default"].weight.fill_(1.0)
        layer.lora_B["default"].weight.copy_(torch.tensor([[b1, b2]]))
    return model.to(torch.bfloat16), layer


def test_lora_merge_of_a_bf16_base_is_formed_in_fp32():
    from espnet_ext.models.lora import merge_lora_for_inference

    # B A = 2^-8 + 2^-17, just above half a bf16 unit of 1.0 (2^-8); rounded to bf16 first
    # (peft's merge of bf16 factors) it becomes exactly the half, and the tie rounds to 1.0
    b1, b2 = 2.0**-8, 2.0**-17
    peft_model, layer = _bf16_lora_linear(b1, b2)
    layer.merge()
    assert layer.base_layer.weight.float().unique().tolist() == [1.0]  # the update is lost
    model, layer = _bf16_lora_linear(b1, b2)
    assert merge_lora_for_inference(model) == 1 and layer.merged
    merged = layer.base_layer.weight
    assert merged.dtype == torch.bfloat16  # stored as the model is
    assert merged.float().unique().tolist() == [torch.tensor(1.0 + b1 + b2).bfloat16().item()] == [1.0 + 2.0**-7]
    # kept in fp32 on request: an update far below half a bf16 unit survives exactly
    model, layer = _bf16_lora_linear(1e-3, 1e-3)
    merge_lora_for_inference(model, dtype=torch.float32)
    expected = 1.0 + 2 * torch.tensor(1e-3).bfloat16().float().item()
    assert layer.base_layer.weight.dtype == torch.float32
    torch.testing.assert_close(layer.base_layer.weight, torch.full((1, 2), expected), rtol=0, atol=1e-7)
    x = torch.ones(1, 2)
    torch.testing.assert_close(model(x), torch.full((1, 1), 2 * expected), rtol=0, atol=1e-6)
