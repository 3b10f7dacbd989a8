"""The §3.1 mitigations on tiny random models: layer-wise lr (eq. 3), peft LoRA and our
importance-weighted anchoring — hand-checked math, error contracts, one real ESPnet
training run per new ``conf/train_*.yaml``, and the LoRA export."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Sequence

import pytest
import torch
import yaml
from helpers import REPO, build_speech_llm, load_state, run_train, text_batch, train_cmd

from espnet_ext.importance.params import canonical_name, select_parameters
from espnet_ext.importance.report import write_report
from espnet_ext.inference.speechllm import load_model
from espnet_ext.optim.anchor import AnchorConfig, ImportanceAnchor, _WeightedSquaredDistance
from espnet_ext.optim.layer_lr import LayerLRConfig, layer_lr_groups, layer_lr_scales
from espnet_ext.tasks.compose import compose_train_config, load_train_config, load_yaml, rebase_exp_path
from espnet_ext.tasks.speech_llm import SpeechLLMTask
from espnet_ext.tasks.systems import SystemInfo, read_system
from espnet_ext.utils.espnet_compat import abs_task_module

CONF = REPO / "conf"
STRATEGY_KEYS = {"layerlr": {"layer_lr_conf"}, "impanchor": {"anchor_conf"}, "lora": {"lora_conf", "optim_conf"}}
SHORT_RUN = ["--max_epoch", "1", "--num_iters_per_epoch", "2", "--batch_size", "4",
             "--valid_batch_size", "4", "--scheduler_conf", "total_steps=2"]


def _report(model: torch.nn.Module, out: Path, layer_sums: Sequence[float], seed: int = 0) -> Path:
    """A synthetic report over the model's layer parameters whose layer i sums to layer_sums[i]."""
    params = select_parameters(model, ("layers",))
    g = torch.Generator().manual_seed(seed)
    raw = {n: torch.rand(p.shape, generator=g) + 0.1 for n, p in params.items()}
    per_layer = {}
    for n in raw:
        per_layer.setdefault(int(n.split("layers.")[1].split(".")[0]), []).append(n)
    scores = {}
    for i, names in per_layer.items():
        total = sum(float(raw[n].sum()) for n in names)
        for n in names:
            scores[n] = raw[n] * (layer_sums[i] / total)
    write_report(out, scores)
    return out


# --------------------------------------------------------------------------------------
# layer-wise learning rates (eq. 3)
# --------------------------------------------------------------------------------------
def test_eq3_scales_hand_checked():
    sums = [2.0, 6.0, 4.0, 10.0]  # min 2, max 10: normalised 0, 0.5, 0.25, 1
    assert layer_lr_scales(sums, 0.4) == pytest.approx([1.0, 0.8, 0.9, 0.6])
    assert layer_lr_scales(sums, 0.0) == pytest.approx([1.0] * 4)  # λ = 0: full fine-tuning
    assert layer_lr_scales(sums, 1.0) == pytest.approx([1.0, 0.5, 0.75, 0.0])  # most important at 0
    with pytest.raises(ValueError, match="degenerate"):
        layer_lr_scales([3.0, 3.0, 3.0], 0.4)
    with pytest.raises(ValueError, match="non-finite"):
        layer_lr_scales([1.0, float("nan")], 0.4)
    with pytest.raises(ValueError, match="lambda_"):
        LayerLRConfig("r", lambda_=1.5)


def test_layer_lr_groups_partition_and_rates(make_speech_llm, tmp_path):
    model = make_speech_llm()
    model.llm.model.model.layers[2].mlp.up_proj.weight.requires_grad_(False)  # one frozen LLM tensor
    rep = _report(model, tmp_path / "rep", [2.0, 6.0, 4.0, 10.0])
    conf = LayerLRConfig(str(rep), lambda_=0.4, embeddings_lr=0.5)
    groups = layer_lr_groups(model, lr=1.0, adaptor_lr=3.0, config=conf)
    assert [g.name for g in groups] == ["adaptor", "llm.embeddings", "llm.layers.0", "llm.layers.1",
                                        "llm.layers.2", "llm.layers.3", "llm.other"]
    assert [g.lr for g in groups] == pytest.approx([3.0, 0.5, 1.0, 0.8, 0.9, 0.6, 1.0])
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids))  # every trainable parameter in exactly one group
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert not set(ids) & {id(p) for p in model.parameters() if not p.requires_grad}
    by_name = {g.name: {id(p) for p in g.params} for g in groups}
    assert by_name["llm.layers.1"] == {id(p) for p in model.llm.model.model.layers[1].parameters()}
    assert by_name["llm.other"] == {id(model.llm.model.model.norm.weight)}  # final norm


def test_one_sgd_step_moves_each_layer_by_its_ratio(make_speech_llm, speech_llm_args, tmp_path):
    model = make_speech_llm(encoder=False)
    rep = _report(model, tmp_path / "rep", [2.0, 6.0, 4.0, 10.0])
    args = speech_llm_args("--optim", "sgd", "--optim_conf", "{lr: 0.1, momentum: 0.0}",
                           "--layer_lr_conf", f"{{importance_report: {rep}}}", encoder=False)
    (opt,) = SpeechLLMTask.build_optimizers(args, model)
    _, batch = text_batch(model)
    model.train()
    loss, _, _ = model(**batch, modality="text")
    loss.backward()
    layers = model.llm.model.model.layers
    before = [[p.detach().clone() for p in layer.parameters()] for layer in layers]
    grads = [[p.grad.clone() for p in layer.parameters()] for layer in layers]
    opt.step()
    for i, scale in enumerate([1.0, 0.8, 0.9, 0.6]):
        for p, b, g in zip(layers[i].parameters(), before[i], grads[i]):
            assert g.abs().max() > 0
            # θ' = θ − (scale · lr) g; a step at another scale would be ≥ 0.1 · 0.1 · |g| away
            torch.testing.assert_close(p.detach(), b - 0.1 * scale * g, rtol=0, atol=1e-8)


@pytest.mark.parametrize("scheduler,conf", [("warmupcosinelr", {"total_steps": 10, "warmup_ratio": 0.2}),
                                            ("warmuplr", {"warmup_steps": 3})])
def test_espnet_schedulers_keep_the_layer_ratios(make_speech_llm, speech_llm_args, tmp_path, scheduler, conf):
    model = make_speech_llm(encoder=False)
    rep = _report(model, tmp_path / "rep", [2.0, 6.0, 4.0, 10.0])
    args = speech_llm_args("--optim", "adamw", "--optim_conf", "lr=0.001", "--adaptor_lr", "0.01",
                           "--layer_lr_conf", f"importance_report={rep}", encoder=False)
    (opt,) = SpeechLLMTask.build_optimizers(args, model)
    sched = abs_task_module.scheduler_classes[scheduler](opt, **conf)
    initial = [g["initial_lr"] for g in opt.param_groups]
    for _ in range(6):
        factor = opt.param_groups[0]["lr"] / initial[0]
        assert 0 < factor <= 1.0 + 1e-9
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([factor * lr for lr in initial])
        opt.step()
        sched.step()
    names = [g["name"] for g in opt.param_groups]
    assert initial[names.index("llm.layers.3")] == pytest.approx(0.6e-3)  # (1 − 0.4) · lr
    assert initial[names.index("adaptor")] == pytest.approx(0.01)


def test_group_index_to_name_is_logged(make_speech_llm, speech_llm_args, tmp_path, caplog):
    model = make_speech_llm(encoder=False)
    rep = _report(model, tmp_path / "rep", [2.0, 6.0, 4.0, 10.0])
    args = speech_llm_args("--optim_conf", "lr=0.001", "--layer_lr_conf", f"importance_report={rep}",
                           encoder=False)
    with caplog.at_level("INFO"):
        (opt,) = SpeechLLMTask.build_optimizers(args, model)
    for j, g in enumerate(opt.param_groups):  # ESPnet reports group j as optim0_lr<j>
        assert any(f"optim0_lr{j} " in r.message and g["name"] in r.message for r in caplog.records), j


def test_layer_lr_report_errors(make_speech_llm, speech_llm_args, tmp_path):
    model = make_speech_llm(encoder=False)

    def build(rep, **conf):
        args = speech_llm_args("--optim_conf", "lr=0.001", encoder=False)
        args.layer_lr_conf = {"importance_report": str(rep), **conf}
        return SpeechLLMTask.build_optimizers(args, model)

    with pytest.raises(FileNotFoundError, match="stage 3"):
        build(tmp_path / "nothing")
    scores = select_parameters(model, ("layers",))
    three = {n: torch.ones(p.shape) * (1 + int(n.split("layers.")[1][0]))
             for n, p in scores.items() if "layers.3." not in n}
    write_report(tmp_path / "three", three)
    with pytest.raises(ValueError, match="3 layer sums but the model has 4"):
        build(tmp_path / "three")
    renamed = {n.replace("up_proj", "upper_proj"): torch.rand(p.shape) for n, p in scores.items()}
    write_report(tmp_path / "renamed", renamed)
    with pytest.raises(ValueError, match="does not match the model's layer parameters"):
        build(tmp_path / "renamed")
    reshaped = {n: torch.rand(p.shape[::-1]) for n, p in scores.items()}
    write_report(tmp_path / "reshaped", reshaped)
    with pytest.raises(ValueError, match="shape"):
        build(tmp_path / "reshaped")
    write_report(tmp_path / "flat", {n: torch.full(p.shape, 7.0 / p.numel() / 9) for n, p in scores.items()})
    with pytest.raises(ValueError, match="degenerate"):
        build(tmp_path / "flat")
    rep = _report(model, tmp_path / "ok", [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="layer_lr_conf: unknown key"):
        build(rep, lamda=0.3)


# --------------------------------------------------------------------------------------
# LoRA (peft)
# --------------------------------------------------------------------------------------
def test_lora_freezes_base_keeps_adaptor_and_matches_plain_model_at_init(make_speech_llm):
    plain = make_speech_llm(encoder=False)
    model = make_speech_llm("--lora_conf", "{r: 4, dropout: 0.0}", encoder=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("adaptor.") or ".lora_" in n}
    assert len([n for n in trainable if "lora_A" in n]) == 4 * 7  # 4 layers × q k v o gate up down
    assert model.llm.model.peft_config["default"].lora_alpha == 8  # alpha = 2r by default
    # B = 0 at init: the LoRA model computes exactly what the plain model does
    model.adaptor.load_state_dict(plain.adaptor.state_dict())
    _, batch = text_batch(model)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch, modality="text")[0], model(**batch, modality="text")[0])
    assert model.generate("text", max_new_tokens=3, text=batch["text"], text_lengths=batch["text_lengths"]) == \
        plain.generate("text", max_new_tokens=3, text=batch["text"], text_lengths=batch["text_lengths"])
    with pytest.raises(ValueError, match="target_modules"):
        make_speech_llm("--lora_conf", "{r: 4, target_modules: [qkv_proj]}", encoder=False)
    with pytest.raises(ValueError, match="lora_conf.r"):
        make_speech_llm("--lora_conf", "{r: 0}", encoder=False)


def test_lora_export_adapter_and_merged_model_agree(make_speech_llm, speech_llm_args, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from espnet_ext.models.lora import export_lora

    model = make_speech_llm("--lora_conf", "{r: 4, dropout: 0.0}", encoder=False)
    torch.manual_seed(3)
    with torch.no_grad():  # a clearly non-zero low-rank update
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    ids = torch.tensor([[5, 17, 42, 99, 3, 250], [7, 7, 120, 8, 9, 11]])
    with torch.no_grad():
        ref = model.llm.model(input_ids=ids).logits
        base_llm = AutoModelForCausalLM.from_pretrained(model.llm.model_name_or_path).eval()
        assert (base_llm(input_ids=ids).logits - ref).abs().max() > 1e-2
    adaptor_state = {k: v.clone() for k, v in model.adaptor.state_dict().items()}
    paths = export_lora(model.eval(), tmp_path / "export", adaptor_conf={"hidden_size": 32})
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(base_llm, paths["adapter"]).eval()
        from_adapter = adapted(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(paths["merged"]).eval()
        from_merged = merged(input_ids=ids).logits
    torch.testing.assert_close(from_adapter, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(from_merged, from_adapter, rtol=0, atol=1e-5)
    assert not any("lora" in k for k in merged.state_dict())
    saved = load_file(paths["adaptor"])
    assert saved.keys() == adaptor_state.keys() and all(torch.equal(saved[k], adaptor_state[k]) for k in saved)
    assert (paths["merged"] / "tokenizer_config.json").is_file()
    with pytest.raises(ValueError, match="no LoRA adapter"):
        export_lora(make_speech_llm(encoder=False), tmp_path / "x")


# --------------------------------------------------------------------------------------
# importance-weighted anchoring (ours)
# --------------------------------------------------------------------------------------
class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))


def test_anchor_penalty_and_gradient_hand_checked():
    toy = _Toy()
    importance = torch.tensor([1.0, 3.0])  # mean 2 → ŵ = [0.5, 1.5]
    anchor = ImportanceAnchor({"w": toy.w.detach().clone()}, {"w": importance / importance.mean()}, mu=4.0)
    pen = anchor(toy)
    pen.backward()
    assert float(pen.detach()) == 0.0 and toy.w.grad.tolist() == [0.0, 0.0]  # zero at the base weights
    with torch.no_grad():
        toy.w.copy_(torch.tensor([2.0, 0.0]))  # Δθ = [1, −2]
    toy.w.grad = None
    pen = anchor(toy)
    pen.backward()
    # μ/2 · (0.5·1² + 1.5·(−2)²) = 2 · 6.5 ; gradient μ ŵ Δθ = 4 · [0.5, −3]
    assert float(pen.detach()) == pytest.approx(13.0)
    assert toy.w.grad.tolist() == pytest.approx([2.0, -12.0])
    # the custom backward equals autograd of the plain expression
    p, b, w = (torch.randn(3, 4, dtype=torch.double, requires_grad=i == 0) for i in range(3))
    assert torch.autograd.gradcheck(_WeightedSquaredDistance.apply, (p, b, w.abs()))


def test_anchor_on_the_speech_llm(make_speech_llm, speech_llm_args, tmp_path):
    plain = make_speech_llm(encoder=False)
    rep = _report(plain, tmp_path / "rep", [2.0, 6.0, 4.0, 10.0])
    model = make_speech_llm("--anchor_conf", f"{{importance_report: {rep}, mu: 3.0}}", encoder=False)
    assert len(model.anchor.names) == len(select_parameters(model, ("layers",)))
    assert not any("anchor" in k for k in model.state_dict())  # nothing extra in checkpoints
    _, batch = text_batch(model)
    model.train()
    loss0, stats0, _ = model(**batch, modality="text")
    assert float(stats0["anchor"]) == 0.0
    # move one weight matrix: penalty = μ/2 · Σ ŵ δ² with ŵ = I / mean(I)
    from safetensors.torch import load_file

    scores = load_file(str(rep / "scores.safetensors"))
    mean = sum(float(s.double().sum()) for s in scores.values()) / sum(s.numel() for s in scores.values())
    q = model.llm.model.model.layers[1].self_attn.q_proj.weight
    with torch.no_grad():
        q.add_(0.01)
    loss, stats, _ = model(**batch, modality="text")
    expected = 1.5 * float((scores["llm.model.model.layers.1.self_attn.q_proj.weight"].double() / mean).sum()) * 1e-4
    assert float(stats["anchor"]) == pytest.approx(expected, rel=1e-4)
    torch.testing.assert_close(loss.reshape(()), (stats["loss"] + stats["anchor"]).reshape(()))
    model.eval()  # evaluation (and importance scoring) never sees the penalty
    _, stats_eval, _ = model(**batch, modality="text")
    assert "anchor" not in stats_eval
    with pytest.raises(ValueError, match="exclude each other"):
        make_speech_llm("--anchor_conf", f"importance_report={rep}", "--lora_conf", "r=4", encoder=False)
    adaptor_scores = {"adaptor.linear1.weight": torch.rand(plain.adaptor.linear1.weight.shape)}
    write_report(tmp_path / "adaptor", adaptor_scores)
    with pytest.raises(ValueError, match="adaptor"):
        make_speech_llm("--anchor_conf", f"importance_report={tmp_path / 'adaptor'}", encoder=False)
    write_report(tmp_path / "other", {"llm.model.model.layers.9.mlp.up_proj.weight": torch.rand(2, 2)})
    with pytest.raises(ValueError, match="not in the model"):
        make_speech_llm("--anchor_conf", f"importance_report={tmp_path / 'other'}", encoder=False)
    with pytest.raises(ValueError, match="anchor_conf.mu"):
        AnchorConfig(str(rep), mu=-1.0)


# --------------------------------------------------------------------------------------
# configs and recipe glue
# --------------------------------------------------------------------------------------
def test_train_configs_share_one_base_and_hold_only_their_strategy():
    """Every conf/train_<strategy>.yaml extends conf/train_base.yaml and holds only its own keys."""
    base = load_yaml(CONF / "train_base.yaml")
    configs = sorted(p for p in CONF.glob("train_*.yaml") if p.stem != "train_base")
    assert {p.stem for p in configs} == {"train_full", "train_layerlr", "train_lora", "train_impanchor",
                                         "train_lora_r16", "train_lora_r24"}
    roles = {}
    for path in configs:
        own = load_yaml(path)
        assert own.get("base") in ("train_base.yaml", "train_lora.yaml"), path.name
        kind = next((k for k in STRATEGY_KEYS if path.stem.startswith(f"train_{k}")), None)
        allowed = STRATEGY_KEYS.get(kind, set()) | {"base", "system"}
        assert set(own) <= allowed, (path.name, sorted(set(own) - allowed))
        conf = load_train_config(path)
        roles[path.stem] = conf["system"]["role"]
        for key in set(base) | set(conf):
            if key not in allowed:
                assert conf.get(key) == base.get(key), (path.name, key)
        if kind == "lora":
            assert {k: v for k, v in conf["optim_conf"].items() if k != "lr"} == \
                {k: v for k, v in base["optim_conf"].items() if k != "lr"}
            assert conf["lora_conf"]["alpha"] == 2 * conf["lora_conf"]["r"]  # alpha = 2r (paper)
            rank = 8 if path.stem == "train_lora" else int(path.stem.split("_r")[-1])  # paper 1B: r = 8
            assert conf["lora_conf"]["r"] == rank, path.name
        lines = path.read_text().splitlines()
        assert lines[0].startswith("# ") and lines[1].lstrip("# ").startswith("./run.sh"), path.name
    assert roles == {"train_full": "full_ft", "train_layerlr": "layer_lr", "train_lora": "lora",
                     "train_impanchor": "anchor", "train_lora_r16": "lora", "train_lora_r24": "lora"}


def test_train_config_base_chain_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nsystem: {name: A, role: full_ft}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="'base' chain loops"):
        load_train_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("max_epochz: 3\n")
    with pytest.raises(ValueError, match=r"b.yaml: unknown config key\(s\) \['max_epochz'\]"):
        compose_train_config(CONF / "model/tiny_random.yaml", tmp_path / "a.yaml", tmp_path / "o.yaml")
    (tmp_path / "b.yaml").write_text(f"base: {CONF / 'train_base.yaml'}\n")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ValueError, match="a.yaml: no 'system' section"):
        compose_train_config(CONF / "model/tiny_random.yaml", tmp_path / "a.yaml", tmp_path / "o.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\nsystem: {name: A, role: fine}\n")
    with pytest.raises(ValueError, match="a.yaml: system: system.role must be one of"):
        compose_train_config(CONF / "model/tiny_random.yaml", tmp_path / "a.yaml", tmp_path / "o.yaml")
    assert not (tmp_path / "o.yaml").exists()
    (tmp_path / "a.yaml").write_text("base: b.yaml\nsystem: {name: Mine, role: full_ft}\n")
    compose_train_config(CONF / "model/tiny_random.yaml", tmp_path / "a.yaml", tmp_path / "x" / "train.yaml")
    assert read_system(tmp_path, "x") == SystemInfo("Mine", "full_ft")


def test_compose_rebases_importance_reports_onto_expdir(tmp_path):
    assert rebase_exp_path("exp/importance/base", "/x/exp2") == "/x/exp2/importance/base"
    assert rebase_exp_path("/abs/exp/importance/base", "/x") == "/abs/exp/importance/base"
    assert rebase_exp_path("other/importance/base", "/x") == "other/importance/base"
    for name, key in (("train_layerlr", "layer_lr_conf"), ("train_impanchor", "anchor_conf")):
        merged = compose_train_config(CONF / "model/tiny_random.yaml", CONF / f"{name}.yaml",
                                      tmp_path / f"{name}.yaml", tmp_path / "e/pretrained", tmp_path / "e")
        assert merged[key]["importance_report"] == str(tmp_path / "e/importance/base")
        assert yaml.safe_load((tmp_path / f"{name}.yaml").read_text())[key] == merged[key]


def test_recipe_presets_set_the_step_budget(tmp_path):
    """conf/preset/<name>.yaml: its train: section is merged over every training config."""
    from espnet_ext.bin import compose_config

    quick = load_yaml(CONF / "preset/quick.yaml")
    assert quick["recipe"]["adaptor_warmup"] is True
    assert load_yaml(CONF / "preset/full.yaml")["recipe"]["adaptor_warmup"] is False
    outs = [tmp_path / "full.yaml", tmp_path / "lora.yaml"]
    compose_config.main(["--preset", str(CONF / "model/tiny_random.yaml"), "--recipe_preset",
                         str(CONF / "preset/quick.yaml"), "--train_config", str(CONF / "train_full.yaml"),
                         "--out", str(outs[0]), "--train_config", str(CONF / "train_lora.yaml"),
                         "--out", str(outs[1])])
    for out, src in zip(outs, ("train_full", "train_lora")):
        conf = yaml.safe_load(out.read_text())
        assert (conf["max_epoch"], conf["num_iters_per_epoch"], conf["scheduler_conf"]["total_steps"]) == (2, 20, 40)
        assert conf["scheduler_conf"]["warmup_ratio"] == 0.03  # merged one level deep, not replaced
        demo = compose_train_config(CONF / "model/tiny_random.yaml", CONF / f"{src}.yaml", tmp_path / "d.yaml")
        # the budget leaves the rates alone; quick's lr_scale multiplies the LLM's (an addition)
        assert conf["optim_conf"]["lr"] == pytest.approx(quick["lr_scale"] * demo["optim_conf"]["lr"])
        assert {k: v for k, v in conf["optim_conf"].items() if k != "lr"} == \
            {k: v for k, v in demo["optim_conf"].items() if k != "lr"}
        assert conf["adaptor_lr"] == demo["adaptor_lr"]
    assert quick["lr_scale"] == 10
    strong = load_yaml(CONF / "preset/strong.yaml")
    assert strong["recipe"]["seeds"] == "0 1 2"  # strong = quick with three seeds
    assert {k: v for k, v in strong.items() if k != "recipe"} == {k: v for k, v in quick.items() if k != "recipe"}
    assert {k: v for k, v in strong["recipe"].items() if k != "seeds"} == quick["recipe"]
    # the full preset leaves the configs' own budget
    merged = compose_train_config(CONF / "model/tiny_random.yaml", CONF / "train_full.yaml", tmp_path / "f.yaml",
                                  recipe_preset=CONF / "preset/full.yaml")
    assert (merged["max_epoch"], merged["scheduler_conf"]["total_steps"]) == (3, 120)


def test_recipe_preset_lr_scale_keeps_each_strategys_ratio(tmp_path):
    preset = tmp_path / "strong.yaml"
    preset.write_text("lr_scale: 10\ntrain: {}\n")
    rates = {}
    for name in ("train_full", "train_lora", "train_layerlr"):
        merged = compose_train_config(CONF / "model/tiny_random.yaml", CONF / f"{name}.yaml", tmp_path / f"{name}.yaml",
                                      recipe_preset=preset)
        own = compose_train_config(CONF / "model/tiny_random.yaml", CONF / f"{name}.yaml", tmp_path / "own.yaml")
        assert merged["optim_conf"]["lr"] == pytest.approx(10 * own["optim_conf"]["lr"])
        assert merged["adaptor_lr"] == own["adaptor_lr"]
        assert "lr x 10" in (tmp_path / f"{name}.yaml").read_text().splitlines()[0]
        rates[name] = merged["optim_conf"]["lr"]
    assert rates["train_lora"] / rates["train_full"] == pytest.approx(10)
    for bad in ("0", "-1", "true", "ten"):
        preset.write_text(f"lr_scale: {bad}\n")
        with pytest.raises(ValueError, match=f"{preset}: lr_scale must be a positive number"):
            compose_train_config(CONF / "model/tiny_random.yaml", CONF / "train_full.yaml", tmp_path / "x.yaml",
                                 recipe_preset=preset)


def test_recipe_preset_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_epoch: 5\n")
    with pytest.raises(ValueError,
                       match=r"scheduler_conf.total_steps is 120 but max_epoch × \(num_iters_per_epoch "
                             r"// accum_grad\) is 5 × \(40 // 1\) = 200"):
        compose_train_config(CONF / "model/tiny_random.yaml", CONF / "train_full.yaml", tmp_path / "o.yaml",
                             recipe_preset=bad)
    bad.write_text("train:\n  max_epochs: 5\n")
    with pytest.raises(ValueError, match=r"bad.yaml \(train:\): unknown config key\(s\) \['max_epochs'\]"):
        compose_train_config(CONF / "model/tiny_random.yaml", CONF / "train_full.yaml", tmp_path / "o.yaml",
                             recipe_preset=bad)
    assert not (tmp_path / "o.yaml").exists()
    p = subprocess.run(["./run.sh", "--preset", "nope", "--stage", "1", "--stop_stage", "1"],
                       cwd=REPO / "egs2/speechimp", capture_output=True, text=True)
    assert p.returncode != 0 and "conf/preset/nope.yaml" in p.stderr and "quick" in p.stderr


@pytest.fixture(scope="module")
def recipe_exp(tmp_path_factory, tiny_llm_dir, tiny_whisper_dir, tiny_dumps):
    """exp/{pretrained,importance/base} as stages 2-3 leave them, for the real train configs."""
    exp = tmp_path_factory.mktemp("mitig") / "exp"
    (exp / "pretrained").mkdir(parents=True)
    (exp / "pretrained/llm").symlink_to(tiny_llm_dir)
    (exp / "pretrained/whisper").symlink_to(tiny_whisper_dir)
    _report(build_speech_llm(tiny_llm_dir), exp / "importance/base", [2.0, 6.0, 4.0, 10.0])
    return exp


def _train_real_config(recipe_exp, tiny_dumps, name):
    out = recipe_exp / name.removeprefix("train_")
    conf = compose_train_config(CONF / "model/tiny_random.yaml", CONF / f"{name}.yaml", out / "train.yaml",
                                recipe_exp / "pretrained", recipe_exp)
    p = run_train(train_cmd(tiny_dumps, out / "train.yaml", out, *SHORT_RUN))
    assert (out / "valid.loss.best.pth").is_file()
    return out, conf, p


def test_train_layerlr_config(recipe_exp, tiny_dumps):
    out, conf, p = _train_real_config(recipe_exp, tiny_dumps, "train_layerlr")
    assert "optim0_lr5   llm.layers.3" in p.stderr  # the group behind the reporter key is logged
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["layer_lr_conf"]["importance_report"] == str(recipe_exp / "importance/base")
    assert "optim0_lr5=" in p.stderr  # ESPnet reports every group's lr
    load_model(out / "config.yaml", out / "valid.loss.best.pth")


def test_train_impanchor_config(recipe_exp, tiny_dumps):
    out, conf, p = _train_real_config(recipe_exp, tiny_dumps, "train_impanchor")
    assert "importance anchor: mu=1" in p.stderr and "anchor=" in p.stderr  # a train stat
    model = load_model(out / "config.yaml", out / "valid.loss.best.pth")  # strict, no anchor needed
    assert model.anchor is None


def test_train_lora_config_keeps_base_weights_and_exports(recipe_exp, tiny_dumps, tiny_llm_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from espnet_ext.bin.export_lora import main as export_main

    out, conf, _ = _train_real_config(recipe_exp, tiny_dumps, "train_lora")
    state = load_state(out / "valid.loss.best.pth")
    base = AutoModelForCausalLM.from_pretrained(tiny_llm_dir).state_dict()
    llm_keys = [k for k in state if k.startswith("llm.") and "lora_" not in k]
    assert len(llm_keys) == len(base)
    for k in llm_keys:  # frozen base weights are bit-identical after training
        assert torch.equal(state[k], base[canonical_name(k).removeprefix("llm.model.")]), k
    lora_b = [k for k in state if "lora_B" in k]
    assert lora_b and any(state[k].abs().max() > 0 for k in lora_b)  # the update trained
    optim = load_state(out / "checkpoint.pth")["optimizers"][0]
    adaptor = optim["param_groups"][0]
    assert adaptor["name"] == "adaptor" and len(adaptor["params"]) == 4  # the adaptor trains fully
    assert all(optim["state"][i]["exp_avg"].abs().max() > 0 for i in adaptor["params"])
    trained = load_model(out / "config.yaml", out / "valid.loss.best.pth")  # strict round trip
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with torch.no_grad():
        ref = trained.llm.model(input_ids=ids).logits
    export_main(["--config", str(out / "config.yaml"), "--model_file", str(out / "valid.loss.best.pth"),
                 "--out_dir", str(out / "export")])
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llm_dir), out / "export/adapter")
        merged = AutoModelForCausalLM.from_pretrained(out / "export/merged")
        torch.testing.assert_close(adapted.eval()(input_ids=ids).logits, ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(merged.eval()(input_ids=ids).logits, ref, rtol=0, atol=1e-5)
    assert json.loads((out / "export/adapter/adapter_config.json").read_text())["r"] == 8


def test_merge_lora_for_inference_keeps_the_function(make_speech_llm):
    """Decoding folds LoRA into the base weights: same logits, no LoRA layer left live."""
    from espnet_ext.importance.params import lora_layers
    from espnet_ext.models.lora import merge_lora_for_inference

    model = make_speech_llm("--lora_conf", "{r: 4, dropout: 0.1}", encoder=False).eval()
    torch.manual_seed(4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with torch.no_grad():
        ref = model.llm.model(input_ids=ids).logits
        n_live = len(lora_layers(model))
        assert n_live > 0 and merge_lora_for_inference(model) == n_live
        torch.testing.assert_close(model.llm.model(input_ids=ids).logits, ref, rtol=1e-5, atol=1e-5)
    assert lora_layers(model) == {} and merge_lora_for_inference(model) == 0


# --------------------------------------------------------------------------------------
# the paper-size presets: the paper's hyperparameters, schedules that keep eq. 3, the
# run's step count, a pinned chat-template date
# --------------------------------------------------------------------------------------
PAPER_PRESETS = {"llama32_1b_whisper_large_v3": "train_lora", "llama31_8b_whisper_large_v3": "train_lora_r16"}


@pytest.mark.parametrize("preset", sorted(PAPER_PRESETS))
@pytest.mark.parametrize("recipe", [None, "quick", "full", "strong"])
def test_paper_presets_compose_to_the_papers_hyperparameters(tmp_path, preset, recipe):
    """LLaMA-Omni stage 1: lr 2e-5 for adaptor and LLM, batch 32, 3 full epochs, cosine with
    3 % warm-up; LoRA (paper §3.1.2) r 8 (1B) / 16 (8B), alpha 2r, every attention and MLP
    projection, at the recipe's lr 2e-5 (the paper gives none).  No CPU-demo value leaks in."""
    rp = None if recipe is None else CONF / f"preset/{recipe}.yaml"
    for name in ("train_full", "train_layerlr", "train_lora", "train_lora_r16", "train_impanchor"):
        out = tmp_path / name / "train.yaml"
        conf = compose_train_config(CONF / f"model/{preset}.yaml", CONF / f"{name}.yaml", out, recipe_preset=rp)
        assert conf["optim_conf"]["lr"] == 2e-5 and conf["adaptor_lr"] is None, name  # None = optim_conf.lr
        assert (conf["batch_size"], conf["max_epoch"], conf["num_iters_per_epoch"]) == (32, 3, None), name
        assert conf["scheduler"] == "warmupcosinelr"
        assert conf["scheduler_conf"] == {"total_steps": "auto", "warmup_ratio": 0.03}, name
        assert conf["llm_conf"]["torch_dtype"] == "float32", name  # fp32 master weights
        assert "demo_overlay" not in out.read_text().splitlines()[0]
    lora = compose_train_config(CONF / f"model/{preset}.yaml", CONF / f"{PAPER_PRESETS[preset]}.yaml",
                                tmp_path / "lora.yaml", recipe_preset=rp)["lora_conf"]
    assert (lora["r"], lora["alpha"]) == ((8, 16) if "1b" in preset else (16, 32))
    assert set(lora["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                           "down_proj"}


def test_demo_presets_keep_the_cpu_budget(tmp_path):
    """The demo-size presets bring conf/demo_overlay.yaml: the CPU demo's budget and rates."""
    for preset in ("tiny_random", "smollm2_135m_whisper_tiny"):
        full = compose_train_config(CONF / f"model/{preset}.yaml", CONF / "train_full.yaml", tmp_path / "f.yaml")
        assert (full["adaptor_lr"], full["batch_size"], full["num_iters_per_epoch"]) == (1e-3, 8, 40)
        assert (full["optim_conf"]["lr"], full["scheduler_conf"]["total_steps"]) == (2e-5, 120)
        for name in ("train_lora", "train_lora_r16", "train_lora_r24"):
            lora = compose_train_config(CONF / f"model/{preset}.yaml", CONF / f"{name}.yaml", tmp_path / "l.yaml")
            assert lora["optim_conf"]["lr"] == 2e-4, name
    bad = tmp_path / "preset.yaml"
    bad.write_text(f"train_overlay: {tmp_path / 'o.yaml'}\n")
    (tmp_path / "o.yaml").write_text("roles: {loraa: {batch_size: 2}}\n")
    with pytest.raises(ValueError, match=r"o.yaml: roles.loraa: not a system role"):
        compose_train_config(bad, CONF / "train_full.yaml", tmp_path / "x.yaml")
    (tmp_path / "o.yaml").write_text("batch_sise: 2\n")
    with pytest.raises(ValueError, match=r"o.yaml: unknown config key\(s\) \['batch_sise'\]"):
        compose_train_config(bad, CONF / "train_full.yaml", tmp_path / "x.yaml")


@pytest.mark.parametrize("scheduler,conf", [("cosineannealingwarmuprestarts", {"first_cycle_steps": 10}),
                                            ("onecyclelr", {"max_lr": 1e-3, "total_steps": 10}),
                                            ("cosineannealinglr", {"T_max": 10, "eta_min": 1e-6})])
def test_schedulers_that_write_one_lr_are_refused_with_group_rates(make_speech_llm, speech_llm_args, tmp_path,
                                                                    scheduler, conf):
    model = make_speech_llm(encoder=False)
    rep = _report(model, tmp_path / "rep", [2.0, 6.0, 4.0, 10.0])
    sched = ["--scheduler", scheduler, "--scheduler_conf", json.dumps(conf)]
    for extra in (["--adaptor_lr", "0.01"], ["--layer_lr_conf", f"importance_report={rep}"]):
        args = speech_llm_args("--optim_conf", "lr=0.001", *extra, *sched, encoder=False)
        with pytest.raises(ValueError, match=f"scheduler '{scheduler}' sets one lr for every parameter group"):
            SpeechLLMTask.build_optimizers(args, model)
    # one rate for every group: nothing to erase
    (opt,) = SpeechLLMTask.build_optimizers(speech_llm_args("--optim_conf", "lr=0.001", *sched, encoder=False), model)
    assert len({g["lr"] for g in opt.param_groups}) == 1


def test_total_steps_auto_is_the_runs_optimizer_step_count(tmp_path, monkeypatch):
    """auto = max_epoch × (iterations per epoch // accum_grad): num_iters_per_epoch when set,
    else the training iterator's batch count; set by SpeechLLMTrainer.run before training."""
    import espnet2.train.trainer as espnet_trainer
    from espnet2.iterators.sequence_iter_factory import SequenceIterFactory

    from espnet_ext.optim.schedulers import WarmupCosineLR, warmup_cosine_factor
    from espnet_ext.train.trainer import SpeechLLMTrainer

    def scheduler(total="auto"):
        groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (1e-3, 4e-4)]
        return WarmupCosineLR(torch.optim.SGD(groups), total_steps=total, warmup_ratio=0.5)

    seen = {}

    def espnet_run(cls, model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
                   plot_attention_iter_factory, trainer_options, distributed_option):
        seen.update(total=schedulers[0].total_steps, lrs=[g["lr"] for g in optimizers[0].param_groups])

    monkeypatch.setattr(espnet_trainer.Trainer, "run", classmethod(espnet_run))
    for num_iters, accum, expected in ((None, 1, 3 * 10), (None, 4, 3 * 2), (7, 2, 3 * 3)):
        factory = SequenceIterFactory(dataset=None, batches=[[f"u{i}"] for i in range(10)],
                                      num_iters_per_epoch=num_iters)
        sched = scheduler()
        options = argparse.Namespace(max_epoch=3, accum_grad=accum)
        SpeechLLMTrainer.run(model=None, optimizers=[sched.optimizer], schedulers=[sched],
                             train_iter_factory=factory, valid_iter_factory=None, plot_attention_iter_factory=None,
                             trainer_options=options, distributed_option=None)
        factor = warmup_cosine_factor(0, expected, 0.5, 0.0)
        assert seen == {"total": expected, "lrs": pytest.approx([1e-3 * factor, 4e-4 * factor])}
    with pytest.raises(RuntimeError, match="total_steps is 'auto'"):
        scheduler().step()  # outside the trainer nothing sets the length
    # the composer: auto always; an integer checked against max_epoch × (iterations // accum_grad)
    (tmp_path / "t.yaml").write_text(f"base: {CONF / 'train_base.yaml'}\nsystem: {{name: X, role: full_ft}}\n"
                                     "num_iters_per_epoch: 40\naccum_grad: 4\nscheduler_conf: {total_steps: 30}\n")
    assert compose_train_config(CONF / "model/llama32_1b_whisper_large_v3.yaml", tmp_path / "t.yaml",
                                tmp_path / "o.yaml")["scheduler_conf"]["total_steps"] == 30
    (tmp_path / "t.yaml").write_text(f"base: {CONF / 'train_base.yaml'}\nsystem: {{name: X, role: full_ft}}\n"
                                     "num_iters_per_epoch: 40\naccum_grad: 4\nscheduler_conf: {total_steps: 120}\n")
    with pytest.raises(ValueError, match=r"total_steps is 120 but .* is 3 × \(40 // 4\) = 30"):
        compose_train_config(CONF / "model/llama32_1b_whisper_large_v3.yaml", tmp_path / "t.yaml", tmp_path / "o.yaml")



def test_warmup_cosine_is_stepped_once_per_optimizer_step_only():
    """ESPnet's trainer also steps every AbsEpochStepScheduler (LambdaLR is registered as one)
    at each epoch's end: the cosine must be a batch-step scheduler only, or a 2-epoch run of
    N steps would end at step N + 2, past its schedule."""
    from espnet2.schedulers.abs_scheduler import AbsBatchStepScheduler, AbsEpochStepScheduler

    from espnet_ext.optim.schedulers import WarmupCosineLR, warmup_cosine_factor

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosineLR(opt, total_steps=8, warmup_ratio=0.25)
    assert isinstance(sched, AbsBatchStepScheduler) and not isinstance(sched, AbsEpochStepScheduler)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([warmup_cosine_factor(i, 8, 0.25, 0.0) for i in range(8)])
    # state round trip (checkpoints): same step, same lr
    again = WarmupCosineLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), total_steps=8,
                           warmup_ratio=0.25)
    again.load_state_dict(sched.state_dict())
    assert again.last_epoch == 8 and again.get_last_lr() == sched.get_last_lr()

# a Llama-3.2-Instruct-style template: the date of the system block comes from date_string
# or, when unset, the clock (strftime_now), as in the released chat template (the tiny
# tokenizer's <|im_start|> / <|im_end|> stand in for Llama's header and end-of-turn tokens)
LLAMA32_STYLE_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}"
    "{%- endif %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|im_start|>system\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|im_end|>' }}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n\\n' + message['content'] | trim"
    " + '<|im_end|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n\\n' }}{%- endif %}"
)


def test_prompt_prefix_does_not_follow_the_clock(monkeypatch, tmp_path):
    import datetime

    import transformers.utils.chat_template_utils as chat_utils

    from espnet_ext.convert.tiny import build_tiny_tokenizer
    from espnet_ext.models.llm import ChatPrompt, task_prompts_from_conf

    tok = build_tiny_tokenizer()
    tok.chat_template = LLAMA32_STYLE_TEMPLATE
    llm_conf = load_yaml(CONF / "model/llama32_1b_whisper_large_v3.yaml")["llm_conf"]
    assert load_yaml(CONF / "model/llama31_8b_whisper_large_v3.yaml")["llm_conf"]["chat_template_kwargs"] == \
        llm_conf["chat_template_kwargs"] == {"date_string": "26 Jul 2024"}

    def on(day: datetime.datetime):
        class Clock(datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                return day

        monkeypatch.setattr(chat_utils, "datetime", Clock)
        return (ChatPrompt.from_tokenizer(tok), ChatPrompt.from_tokenizer(tok, chat_template_kwargs={}),
                task_prompts_from_conf(tok, llm_conf)["qa"])

    train_day, decode_day = on(datetime.datetime(2025, 3, 1)), on(datetime.datetime(2026, 12, 2))
    assert train_day[1].prefix != decode_day[1].prefix  # unpinned, the template reads the clock
    assert train_day[0] == decode_day[0] and train_day[2] == decode_day[2]  # pinned: one prompt
    assert "Today Date: 26 Jul 2024" in tok.decode(train_day[2].prefix)


def test_a_seeded_run_replaces_the_seed_and_names_it(tmp_path):
    """run.sh --seeds: each run's composed config trains with its seed, and its system says so."""
    merged = compose_train_config(CONF / "model/tiny_random.yaml", CONF / "train_full.yaml",
                                  tmp_path / "full_seed3" / "train.yaml", seed=3)
    assert merged["seed"] == 3
    assert read_system(tmp_path, "full_seed3") == SystemInfo("Full-FT (seed 3)", "full_ft", seed=3)
    plain = compose_train_config(CONF / "model/tiny_random.yaml", CONF / "train_full.yaml",
                                 tmp_path / "full" / "train.yaml")
    assert plain["seed"] == 0 and read_system(tmp_path, "full").seed is None
    with pytest.raises(ValueError, match="a seed applies to a training run"):
        compose_train_config(CONF / "model/tiny_random.yaml", None, tmp_path / "m.yaml", seed=1)
