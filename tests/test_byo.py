"""Bring your own checkpoints (``espnet_ext.bin.compare_checkpoints``): decoder layouts of
several Hugging Face families, the architecture check, peft adapters, plain-text and
JSONL data, torchrun, and equality with the recipe's stage-6 numbers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from espnet_ext.convert.tiny import TINY_FAMILIES, build_tiny_causal_lm
from espnet_ext.importance.layout import discover_layout
from espnet_ext.importance.params import layer_index, module_type, select_parameters
from espnet_ext.models.hf_folder import CheckpointMismatch, check_adapter, check_same_architecture

pytestmark = pytest.mark.usefixtures("one_thread")

QA = [("What is the capital of France?", "The capital of France is Paris."),
      ("How many days are in a week?", "There are seven days in a week."),
      ("What is two plus three?", "Two plus three is 5."),
      ("Which planet is red?", "Mars is the red planet."),
      ("Who wrote Hamlet?", "Shakespeare wrote it."),
      ("What color is the sky?", "The sky is blue.")]
IMPORTANCE_YAML = ("scoring: {num_utts: 4, batch_size: 2}\n"
                   "deactivation: {num_utts: 2, batch_size: 2}\n"
                   "analysis: {n_null: 3, max_px: 16}\n")


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict:
    """A random 3-layer model of every family in ``TINY_FAMILIES`` (hidden 32)."""
    root = tmp_path_factory.mktemp("families")
    return {f: build_tiny_causal_lm(root / f, f) for f in TINY_FAMILIES}


def _perturbed(src: Path, dst: Path, layer: str = "layers.1.", scale: float = 0.05, seed: int = 1) -> Path:
    """A copy of ``src`` with every weight of one layer moved (a "fine-tuned" model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if layer in n:
                p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=gen))
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def _lora_adapter(base: Path, out: Path, targets, seed: int = 2) -> Path:
    """A peft LoRA r=4 adapter on ``base`` with non-zero B (saved in peft's format)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=targets))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=gen)
    model.save_pretrained(out)
    return out


def _jsonl(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": f"u{i}", "prompt": q, "response": a}) + "\n"
                            for i, (q, a) in enumerate(QA)))
    return path


def _compare(out: Path, base: Path, tuned: dict, data: Path, *extra: str) -> dict:
    from espnet_ext.bin.compare_checkpoints import main

    conf = out.parent / "importance.yaml"
    conf.write_text(IMPORTANCE_YAML)
    argv = ["--base", str(base), "--data", str(data), "--config", str(conf), "--out_dir", str(out), *extra]
    for name, path in tuned.items():
        argv += ["--tuned", f"{name}={path}"]
    main(argv)
    return json.loads((out / "compare.json").read_text())


def _scores(report: Path) -> dict:
    from espnet_ext.importance.report import load_scores

    return load_scores(report)


# --------------------------------------------------------------------------------------
# decoder layouts
# --------------------------------------------------------------------------------------
FUSED = {"phi3": ("qkv", "o", "gate_up", "down"), "gpt_neox": ("qkv", "o", "up", "down"),
         "gpt2": ("qkv", "o", "up", "down")}
LAYER_LISTS = {"gpt_neox": "llm.model.gpt_neox.layers", "gpt2": "llm.model.transformer.h"}


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_layout_finds_every_family_s_layers_and_module_types(family_dirs, family):
    from espnet_ext.models.text_lm import load_text_lm

    model = load_text_lm(family_dirs[family], prompt_style=None)
    layout = discover_layout(model.llm["model"])
    hf = model.llm["model"]
    assert layout.family == family and layout.n_layers == hf.config.num_hidden_layers == 3
    assert layout.layers_path == LAYER_LISTS.get(family, "llm.model.model.layers")
    assert layout.module_types == FUSED.get(family, ("q", "k", "v", "o", "gate", "up", "down"))
    scored = select_parameters(model, ("layers",), layout)
    in_layers = [n for n, _ in hf.named_parameters() if n.startswith(layout.layers_path[len("llm.model."):] + ".")]
    assert len(scored) == len(in_layers) > 0  # every parameter of the layer list, nothing else
    assert sorted({layout.layer_index(n) for n in scored}) == [0, 1, 2]
    typed = [n for n in scored if layout.module_type(n) is not None]
    assert {layout.module_type(n) for n in typed} == set(layout.module_types)
    matrices = [n for n in typed if n.endswith(".weight")]  # (biases of typed modules share their type)
    assert all(scored[n].dim() == 2 for n in matrices) and len(matrices) == 3 * len(layout.module_types)
    emb = select_parameters(model, ("embeddings",), layout)
    assert list(emb) == list(layout.embeddings) and emb[layout.embeddings[0]] is hf.get_input_embeddings().weight


def test_llama_layout_reads_names_as_the_recipe_s_fixed_pattern(tiny_llm_dir):
    # the recipe's speech LLM keeps the fixed Llama pattern; a layout found from the same
    # LLM must read every name the same way, so both paths give equal reports
    from espnet_ext.models.text_lm import load_text_lm

    model = load_text_lm(tiny_llm_dir, prompt_style=None)
    layout = discover_layout(model.llm["model"])
    names = [n for n, _ in model.named_parameters()]
    assert [layer_index(n, layout) for n in names] == [layer_index(n) for n in names]
    assert [module_type(n, layout) for n in names] == [module_type(n) for n in names]
    assert list(select_parameters(model, ("layers",), layout)) == list(select_parameters(model, ("layers",)))


def test_unlisted_family_falls_back_to_llama_names_or_one_type_per_matrix(family_dirs, monkeypatch):
    from espnet_ext.importance import layout as layout_mod
    from espnet_ext.models.text_lm import load_text_lm

    qwen = load_text_lm(family_dirs["qwen2"], prompt_style=None)
    neox = load_text_lm(family_dirs["gpt_neox"], prompt_style=None)
    monkeypatch.delitem(layout_mod.FAMILY_MODULE_TYPES, "qwen2")
    monkeypatch.delitem(layout_mod.FAMILY_MODULE_TYPES, "gpt_neox")
    assert discover_layout(qwen.llm["model"]).table == "llama"
    generic = discover_layout(neox.llm["model"])
    assert generic.table == "per-matrix" and set(generic.module_types) == {
        "attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"}
    # a listed family whose table names a module the model lacks is refused, naming it
    monkeypatch.setitem(layout_mod.FAMILY_MODULE_TYPES, "qwen2", {"self_attn.qkv_proj": "qkv"})
    with pytest.raises(ValueError, match="qwen2.*self_attn.qkv_proj"):
        discover_layout(qwen.llm["model"])


# --------------------------------------------------------------------------------------
# the architecture check
# --------------------------------------------------------------------------------------
def test_mismatch_error_names_the_first_mismatching_tensor(family_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    base = family_dirs["llama"]

    def variant(name: str, edit) -> Path:
        d = tmp_path / name
        d.mkdir()
        for f in base.iterdir():
            if f.name != "model.safetensors":
                (d / f.name).write_bytes(f.read_bytes())
        state = load_file(str(base / "model.safetensors"))
        edit(state)
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
        return d

    check_same_architecture(base, variant("same", lambda s: None))
    # natural order: layer 2 comes before layer 10, so the first mismatch is layer 1's
    wide = variant("shape", lambda s: s.update({
        "model.layers.2.mlp.up_proj.weight": torch.zeros(80, 32),
        "model.layers.1.mlp.up_proj.weight": torch.zeros(96, 32)}))
    with pytest.raises(CheckpointMismatch, match=r"tensor model\.layers\.1\.mlp\.up_proj\.weight has shape "
                                                 r"\[96, 32\], the base's is \[64, 32\]"):
        check_same_architecture(base, wide)
    gone = variant("missing", lambda s: s.pop("model.layers.2.self_attn.k_proj.weight"))
    with pytest.raises(CheckpointMismatch, match=r"model\.layers\.2\.self_attn\.k_proj\.weight \[16, 32\] is missing"):
        check_same_architecture(base, gone)
    extra = variant("extra", lambda s: s.update({"model.layers.0.self_attn.q_norm.weight": torch.ones(8)}))
    with pytest.raises(CheckpointMismatch, match=r"tensor model\.layers\.0\.self_attn\.q_norm\.weight \[8\] is not "
                                                 "in the base"):
        check_same_architecture(base, extra)
    half = variant("dtype", lambda s: s.update({k: v.to(torch.bfloat16) for k, v in s.items()}))
    with pytest.raises(CheckpointMismatch, match=r"tensor lm_head\.weight is bfloat16, the base's is float32"):
        check_same_architecture(base, half)
    check_same_architecture(base, half, check_dtype=False)  # compared after loading in one dtype
    with pytest.raises(CheckpointMismatch, match="model_type 'qwen2' vs the base's 'llama'"):
        check_same_architecture(base, family_dirs["qwen2"])
    # an adapter made for another base: its first factor that does not fit is named
    check_adapter(base, _lora_adapter(base, tmp_path / "fits", ["q_proj"]))
    other = _lora_adapter(family_dirs["mistral"], tmp_path / "other", ["up_proj"])
    with pytest.raises(CheckpointMismatch, match=r"layers\.0\.mlp\.up_proj\.lora_A\.weight"):
        check_adapter(build_tiny_causal_lm(tmp_path / "wider", "llama", hidden_size=48), other)
    # the job stops before loading any model, naming the tensor
    with pytest.raises(CheckpointMismatch, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        _compare(tmp_path / "out", base, {"ft": wide}, _jsonl(tmp_path / "qa.jsonl"))
    assert not (tmp_path / "out" / "importance").exists()


# --------------------------------------------------------------------------------------
# the job on three families and three data sources
# --------------------------------------------------------------------------------------
def _check_report(out: Path, summary: dict, names, n_layers: int = 3) -> None:
    a = summary["analysis"]
    layout = a["layout"]
    assert a["systems"] == list(names) and a["n_layers"] == n_layers
    for name in ("base", *names):
        s = json.loads((out / "importance" / name / "summary.json").read_text())
        assert len(s["layer_sums"]) == n_layers and all(x > 0 for x in s["layer_sums"])
        assert list(s["module_type_sums"]) == layout["module_types"]
        assert all(v > 0 for v in s["module_type_sums"].values())
        assert s["meta"]["n_utts"] == 4
    for name in names:
        assert set(a["shift"][name]) == {"js", "pearson", "peak_move", "mass_ratio"}
        conc = a["change"][name]["concentration"]
        assert not conc or set(conc) <= {*layout["module_types"], "all"}
    assert set(a["rank_clustering"]["base"]) == {*layout["module_types"], "all"}
    for fig in ("fig1_rank_clustering.png", "fig2_layer_shift_text.png", "fig4_param_change.png"):
        assert (out / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "RESULTS.md").read_text()
    assert f"| Importance of | {' | '.join(layout['module_types'])} | all |" in md  # the family's own columns
    assert "JS divergence" in md and "![Fig. 1: rank clustering](figures/fig1_rank_clustering.png)" in md
    assert (out / "utt_list").read_text().split() == sorted((out / "utt_list").read_text().split())


def test_llama_fine_tuned_folder_peft_adapter_merged_and_identical_copy(family_dirs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = family_dirs["llama"]
    ft = _perturbed(base, tmp_path / "ft")
    adapter = _lora_adapter(base, tmp_path / "adapter", ["q_proj", "v_proj", "down_proj"])
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "merged")
    out = tmp_path / "out"
    data = _jsonl(tmp_path / "qa.jsonl")
    tuned = {"ft": ft, "lora": adapter, "merged": tmp_path / "merged", "same": base}
    summary = _compare(out, base, tuned, data, "--eval_data", str(data))
    _check_report(out, summary, tuned)
    a = summary["analysis"]
    # identical weights: no shift at all, no change
    assert a["shift"]["same"] == {"js": 0.0, "pearson": pytest.approx(1.0), "peak_move": 0, "mass_ratio": 1.0}
    assert a["change"]["same"]["relative_change_per_layer"] == [0.0, 0.0, 0.0]
    assert a["change"]["same"]["n_unchanged_matrices"] == 21
    # only layer 1 of "ft" moved
    rel = a["change"]["ft"]["relative_change_per_layer"]
    assert rel[0] == rel[2] == 0.0 < rel[1]
    # the adapter scores as its merged folder (eq. 2 on the effective weight W + s·BA)
    lora, merged_scores = _scores(out / "importance" / "lora"), _scores(out / "importance" / "merged")
    assert lora.keys() == merged_scores.keys()
    for n, s in merged_scores.items():  # (x W + (x A) B vs x (W + BA): rounding; the floor covers
        # entries whose gradient sum cancels to ~1e-6 of the mean score)
        torch.testing.assert_close(lora[n], s, rtol=1e-4, atol=1e-5 * float(s.mean()))
    assert a["shift"]["lora"]["js"] == pytest.approx(a["shift"]["merged"]["js"], rel=1e-3)
    # Table 1 of every model on the held-out data
    assert set(summary["table1"]) == {"base", *tuned}
    assert list(summary["table1"]["lora"]["table"]) == ["text"]
    # a rerun scores nothing again: the reports are up to date
    before = {n: (out / "importance" / n / "scores.safetensors").stat().st_mtime_ns for n in ("base", *tuned)}
    _compare(out, base, tuned, data, "--eval_data", str(data))
    assert before == {n: (out / "importance" / n / "scores.safetensors").stat().st_mtime_ns for n in before}


@pytest.mark.parametrize("family,source", [("qwen2", "kaldi"), ("gpt_neox", "text"), ("phi3", "jsonl")])
def test_other_families_and_data_sources(family_dirs, tmp_path, family, source):
    base = family_dirs[family]
    ft = _perturbed(base, tmp_path / "ft")
    if source == "kaldi":
        data = tmp_path / "data"
        data.mkdir()
        (data / "text").write_text("".join(f"utt{i} {q}\n" for i, (q, _) in enumerate(QA)))
        (data / "answer").write_text("".join(f"utt{i} {json.dumps([a, 'x'])}\n" for i, (_, a) in enumerate(QA)))
    elif source == "text":  # plain text: language-model loss, no chat template involved
        data = tmp_path / "lm.txt"
        data.write_text("".join(f"{q} {a}\n\n" for q, a in QA))
    else:
        data = _jsonl(tmp_path / "qa.jsonl")
    out = tmp_path / "out"
    summary = _compare(out, base, {"ft": ft}, data, "--prompt", "recipe")
    _check_report(out, summary, ["ft"])
    assert summary["analysis"]["shift"]["ft"]["js"] > 0
    assert summary["meta"]["prompt"] == ("none (plain text: language-model loss)" if source == "text" else "recipe")
    rel = summary["analysis"]["change"]["ft"]["relative_change_per_layer"]
    assert rel[0] == rel[2] == 0.0 < rel[1]


def test_subset_is_the_seeded_choice_an_id_list_or_a_report_s(tmp_path, tiny_dumps, monkeypatch):
    from espnet_ext.analysis.compare import choose_subset
    from espnet_ext.analysis.settings import AnalysisConfig, DeactivationConfig, ImportanceFileConfig
    from espnet_ext.data.kaldi_dir import DataError
    from espnet_ext.data.text_source import read_text_source
    from espnet_ext.importance.scoring import ImportanceConfig
    from espnet_ext.train.batches import pick_subset, subset_ids

    settings = ImportanceFileConfig(ImportanceConfig(num_utts=4), DeactivationConfig(), AnalysisConfig())
    data = _jsonl(tmp_path / "qa.jsonl")
    items = read_text_source(data)
    seeded = choose_subset(items, settings, data)
    assert seeded == pick_subset([f"u{i}" for i in range(len(QA))], num_utts=4, seed=0) and len(seeded) == 4
    listed = tmp_path / "ids"
    listed.write_text("u5\nu0\nu3\nu1\n")
    assert choose_subset(items, settings, data, utt_list=listed) == ["u0", "u1", "u3", "u5"]
    # a report of this job names its id list
    report = tmp_path / "report"
    report.mkdir()
    (report / "summary.json").write_text(json.dumps({"meta": {"utt_list": str(listed), "config": {}}}))
    assert choose_subset(items, settings, data, reuse_subset_from=report) == ["u0", "u1", "u3", "u5"]
    # a recipe report: its seeded subset of its (relative) dump dir, drawn again
    monkeypatch.chdir(tiny_dumps)
    (report / "summary.json").write_text(json.dumps({"meta": {
        "data_dir": "dump/train", "n_utts": 5, "config": {**vars(ImportanceConfig(num_utts=5, seed=3))}}}))
    dump = read_text_source("dump/train")
    assert choose_subset(dump, settings, "dump/train", reuse_subset_from=report) == subset_ids(
        "dump/train", num_utts=5, seed=3)
    listed.write_text("u0\nnope\n")
    with pytest.raises(DataError, match="utterance nope of the chosen subset is not in the data"):
        choose_subset(items, settings, data, utt_list=listed)


# --------------------------------------------------------------------------------------
# torchrun: two processes score what one does
# --------------------------------------------------------------------------------------
def _dist_worker(rank: int, world: int, init_file: str, argv: list) -> None:
    import os

    import torch.distributed as dist

    from espnet_ext.bin.compare_checkpoints import main

    torch.set_num_threads(1)
    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank)})
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    main(argv)
    dist.destroy_process_group()


def test_two_processes_give_the_one_process_scores(family_dirs, tmp_path):
    # each rank scores every other batch and the gradient sums are all-reduced; rank 0 alone
    # writes the reports and the analysis
    import torch.multiprocessing as mp

    from espnet_ext.importance.scoring import ImportanceConfig, score_importance
    from espnet_ext.models.text_lm import load_text_lm
    from espnet_ext.train.batches import text_batches

    base = family_dirs["gpt_neox"]
    ft = _perturbed(base, tmp_path / "ft")
    data = _jsonl(tmp_path / "qa.jsonl")
    (tmp_path / "importance.yaml").write_text(IMPORTANCE_YAML.replace("batch_size: 2}", "batch_size: 1}", 1))
    argv = ["--base", str(base), "--tuned", f"ft={ft}", "--data", str(data),
            "--config", str(tmp_path / "importance.yaml"), "--out_dir", str(tmp_path / "two")]
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "pg"), argv), nprocs=2, join=True)
    ids = (tmp_path / "two" / "utt_list").read_text().split()
    for name, path in (("base", base), ("ft", ft)):
        model = load_text_lm(path)
        batches = text_batches(model, {f"u{i}": qa for i, qa in enumerate(QA) if f"u{i}" in ids}, 1)
        one = score_importance(model, batches, ImportanceConfig(batch_size=1), layout=discover_layout(
            model.llm["model"])).scores
        two = _scores(tmp_path / "two" / "importance" / name)
        for n, s in one.items():
            torch.testing.assert_close(two[n], s, rtol=1e-4, atol=1e-6 * float(s.mean()))
        meta = json.loads((tmp_path / "two" / "importance" / name / "summary.json").read_text())["meta"]
        assert (meta["n_utts"], meta["n_batches"]) == (4, 4)  # 2 ranks × 2 batches of 1
    assert json.loads((tmp_path / "two" / "analysis.json").read_text())["shift"]["ft"]["js"] > 0


def test_shared_prefix_computation_equals_the_model_s_own_forward_in_fp32(tiny_llm_dir):
    # the two ways of computing a batch (the speech LLM's: prompt prefix once, LM head alone;
    # the model's own forward with logits_to_keep) give the same loss and gradients in fp32
    from espnet_ext.importance.scoring import ImportanceConfig, score_importance
    from espnet_ext.models.text_lm import load_text_lm
    from espnet_ext.train.batches import text_batches

    samples = {f"u{i}": qa for i, qa in enumerate(QA)}
    got = {}
    for shared in (False, True):
        model = load_text_lm(tiny_llm_dir, prompt_style="recipe", share_prompt_prefix=shared)
        assert model.share_prompt_prefix is shared
        batches = text_batches(model, samples, 3)
        with torch.no_grad():
            loss = float(model(**batches[0])[0])
        got[shared] = (loss, score_importance(model, batches, ImportanceConfig()).scores)
    assert got[True][0] == pytest.approx(got[False][0], rel=1e-6)
    for n, s in got[False][1].items():  # (the floor: entries whose gradient sum cancels to ~1e-6 of the mean)
        torch.testing.assert_close(got[True][1][n], s, rtol=1e-4, atol=1e-5 * float(s.mean()))


def test_shared_prefix_is_refused_for_a_model_that_soft_caps_its_logits(family_dirs):
    from espnet_ext.models.text_lm import load_text_lm

    with pytest.raises(ValueError, match="gemma2 soft-caps its logits"):
        load_text_lm(family_dirs["gemma2"], prompt_style="recipe", share_prompt_prefix=True)
    assert not load_text_lm(family_dirs["gemma2"], prompt_style="recipe").share_prompt_prefix


# --------------------------------------------------------------------------------------
# the recipe's stage 6 and this command agree on the recipe's own systems
# --------------------------------------------------------------------------------------
def _tiny_exp(root: Path, llm_dir: Path, whisper_dir: Path, train: Path) -> tuple:
    """A recipe-style exp: ``pretrained/{llm,model.yaml}`` (bf16 autocast, as the demo preset's
    ``auto`` on a CPU with bf16), stage 3's base report of ``train``, a Full-FT and a LoRA
    system; returns ``(exp, model.yaml, importance.yaml)``."""
    import yaml

    from espnet_ext.analysis.score import run_importance
    from espnet_ext.importance.scoring import ImportanceConfig
    from espnet_ext.inference.speechllm import load_model
    from espnet_ext.tasks.speech_llm import SpeechLLMTask
    from espnet_ext.tasks.systems import SystemInfo, write_system

    parts = {"encoder": "whisper", "encoder_conf": {"model_name_or_path": str(whisper_dir)},
             "adaptor": "concat", "adaptor_conf": {"downsample_rate": 5, "hidden_size": 32},
             "llm": "hf", "llm_conf": {"model_name_or_path": str(llm_dir)},
             "model_conf": {"mixed_precision": "bf16"}}
    exp = root / "exp"
    (exp / "pretrained").mkdir(parents=True)
    (exp / "pretrained" / "llm").symlink_to(llm_dir)
    model_yaml = exp / "pretrained" / "model.yaml"
    model_yaml.write_text(yaml.safe_dump(parts))
    imp_yaml = root / "importance.yaml"
    imp_yaml.write_text(yaml.safe_dump({"scoring": {"num_utts": 4, "batch_size": 2},
                                        "analysis": {"layers": [0, 3], "change_layer": 1, "max_px": 16,
                                                     "n_null": 3}}))
    run_importance(load_model(model_yaml), train, exp / "importance" / "base",
                   ImportanceConfig(num_utts=4, batch_size=2), provenance={"model_config": str(model_yaml)})
    gen = torch.Generator().manual_seed(0)

    def system(tag: str, conf: dict, edit) -> None:
        model = SpeechLLMTask.build_model(argparse.Namespace(**{**SpeechLLMTask.default_args(), **conf}))
        (exp / tag).mkdir(parents=True)
        args = {**SpeechLLMTask.default_args(), **conf}
        (exp / tag / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(args, default=str))))
        torch.save({k: edit(k, v) for k, v in model.state_dict().items()}, exp / tag / "valid.loss.best.pth")
        lora = "lora_conf" in conf
        write_system(exp / tag, SystemInfo("LoRA" if lora else "Full-FT", "lora" if lora else "full_ft"))

    system("full", parts, lambda k, v: v + 0.01 * v.abs().mean() * torch.randn(v.shape, generator=gen)
           if "layers." in k else v)
    system("lora", {**parts, "lora_conf": {"r": 4}},
           lambda k, v: 0.05 * torch.randn(v.shape, generator=gen) if "lora_B" in k else v)
    return exp, model_yaml, imp_yaml


def test_recipe_systems_exported_give_stage_6_s_numbers(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    # stage 6 on a tiny exp; then the systems' LLMs exported as HF folders (Full-FT: its
    # LLM, LoRA: its peft adapter) and the command with the recipe's prompt on the base
    # report's utterances, as local/compare_checkpoints.sh runs it
    from espnet_ext.analysis.analyze import run_analysis
    from espnet_ext.bin.compare_checkpoints import main
    from espnet_ext.data.text_source import read_text_source
    from espnet_ext.importance.report import layer_sums
    from espnet_ext.importance.scoring import ImportanceConfig, score_importance
    from espnet_ext.inference.speechllm import load_model
    from espnet_ext.models.lora import export_llm, export_lora
    from espnet_ext.models.text_lm import load_text_lm
    from espnet_ext.tasks.speech_llm import SpeechLLMTask
    from espnet_ext.train.batches import text_batches

    train = tiny_dumps / "dump" / "train"
    exp, model_yaml, imp_yaml = _tiny_exp(tmp_path, tiny_llm_dir, tiny_whisper_dir, train)
    recipe = run_analysis(exp, ["full", "lora"], imp_yaml, model_yaml, train)
    export_llm(load_model(exp / "full/config.yaml", exp / "full/valid.loss.best.pth"), exp / "full" / "hf")
    lora, _ = SpeechLLMTask.build_model_from_file(exp / "lora/config.yaml", exp / "lora/valid.loss.best.pth")
    adapter = export_lora(lora, exp / "lora" / "export")["adapter"]
    out = exp / "compare"
    main(["--config", str(imp_yaml), "--base", str(exp / "pretrained/llm"), "--tuned", f"full={exp / 'full/hf'}",
          "--tuned", f"lora={adapter}", "--data", str(train), "--prompt", "recipe",
          "--reuse_subset_from", str(exp / "importance/base"), "--mixed_precision", "bf16", "--out_dir", str(out),
          "--speech_exp_dir", str(exp / "full"), "--speech_data_dir", str(train)])
    byo = json.loads((out / "analysis.json").read_text())
    # the same utterances, prompt, batches and computation (bf16 autocast included): the same numbers
    assert byo["shift"] == recipe["shift"] and byo["curves"] == recipe["curves"]
    for tag in ("full", "lora"):
        assert byo["change"][tag]["relative_change_per_layer"] == pytest.approx(
            recipe["change"][tag]["relative_change_per_layer"], rel=1e-6)
    assert byo["shift"]["full"]["js"] > 0 and byo["shift"]["lora"]["js"] > 0
    # the report keys are the speech LLM's
    assert _scores(out / "importance" / "base").keys() == _scores(exp / "importance" / "base").keys()
    # the speech LLM's speech-input importance on the same utterances equals stage 6's
    speech = json.loads((out / "importance" / "full" / "speech" / "summary.json").read_text())
    want = json.loads((exp / "importance" / "full" / "speech" / "summary.json").read_text())
    assert speech["layer_sums"] == want["layer_sums"]
    assert set(byo["rank_clustering"]) == {"base", "full", "lora", "full:speech"}
    # the prompt is what makes them equal: the model's own template gives another base curve
    ids = (out / "utt_list").read_text().split()
    own = load_text_lm(tiny_llm_dir, prompt_style="own", mixed_precision="bf16")
    items = read_text_source(train)
    scores = score_importance(own, text_batches(own, {u: (items[u].prompt, items[u].response) for u in ids}, 2),
                              ImportanceConfig(), layout=discover_layout(own.llm["model"])).scores
    assert layer_sums(scores) != pytest.approx(byo["curves"]["base"], rel=1e-3)


def test_local_script_exports_each_system_once_and_runs_the_recipe_comparison(tmp_path):
    # local/compare_checkpoints.sh with a stand-in python that records the jobs it is asked to
    # run (conf_get's YAML reads go to the real one): what it exports and how it compares
    import os
    import subprocess
    import sys

    import yaml

    recipe_dir = Path(__file__).resolve().parents[1] / "egs2" / "speechimp"
    exp = tmp_path / "exp"
    for tag, conf in (("full", {"lora_conf": None}), ("lora", {"lora_conf": {"r": 4}})):
        (exp / tag).mkdir(parents=True)
        (exp / tag / "config.yaml").write_text(yaml.safe_dump(conf))
        (exp / tag / "valid.loss.best.pth").write_bytes(b"")
    (exp / "pretrained").mkdir()
    (exp / "pretrained" / "model.yaml").write_text(yaml.safe_dump({"model_conf": {"mixed_precision": "bf16"}}))
    log = tmp_path / "jobs.log"
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "python").write_text(
        f"#!/usr/bin/env bash\nif [ \"$1\" = -c ]; then exec {sys.executable} \"$@\"; fi\n"
        f"echo \"$*\" >> {log}\n"
        # an export writes its marker file, as the real one does
        "for ((i = 1; i < $#; i++)); do a=${!i}; j=$((i + 1))\n"
        "  [ \"$a\" = --out_dir ] && mkdir -p \"${!j}/adapter\" && touch \"${!j}/config.json\" "
        "\"${!j}/adapter/adapter_config.json\"\ndone\nexit 0\n")
    (stub / "python").chmod(0o755)
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{stub}:{venv_bin}:{os.environ['PATH']}", "SPEECHIMP_VENV": str(venv_bin.parent)}

    def run():
        p = subprocess.run(["./local/compare_checkpoints.sh", "--expdir", str(exp), "--systems", "full lora"],
                           cwd=recipe_dir, capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        jobs = log.read_text().splitlines()
        log.unlink()
        return jobs

    jobs = run()
    assert [j.split()[1] for j in jobs] == ["espnet_ext.bin.export_llm", "espnet_ext.bin.export_lora",
                                            "espnet_ext.bin.compare_checkpoints"]
    compare = jobs[-1].split()
    assert " ".join(compare[compare.index("--tuned"):compare.index("--data")]) == (
        f"--tuned full={exp}/full/hf --tuned lora={exp}/lora/export/adapter")
    for opt, value in (("--prompt", "recipe"), ("--reuse_subset_from", f"{exp}/importance/base"),
                       ("--mixed_precision", "bf16"), ("--base", f"{exp}/pretrained/llm"), ("--device", "cpu")):
        assert compare[compare.index(opt) + 1] == value, opt
    assert [j.split()[1] for j in run()] == ["espnet_ext.bin.compare_checkpoints"]  # exports up to date
    os.utime(exp / "lora" / "valid.loss.best.pth", (2e9, 2e9))  # retrained: exported again
    assert [j.split()[1] for j in run()] == ["espnet_ext.bin.export_lora", "espnet_ext.bin.compare_checkpoints"]
