"""The importance analysis on an FSDP2-sharded model equals the one-process analysis.

Two gloo processes (this file run as a script, ``RANK``/``WORLD_SIZE`` set) run the
recipe's stage-3 job (``espnet_ext.bin.importance_score``: the base model, text report and
Table 1's text row) and stage-6 job (``espnet_ext.bin.importance_analyze``: a Full-FT
system with text and speech reports and a two-row Table 1, a LoRA system, the shift and
change analysis) with ``--sharding_conf``; the reference is the same jobs in this process,
unsharded, on the same batches.  fp32 throughout, so the two differ by float rounding only:

* eq. 2 scores within a stated relative tolerance, the summaries' sums and thresholds
  alike, Table 1's masks equal and its perplexities within 1e-5; against a one-process
  run without the shared prompt-prefix cache (which the sharded path turns off) the
  scores and Table 1 are bit-identical;
* on the *same* scores (a sharded report's, and a tie-heavy variant of them, laid out in
  FSDP2's dim-0 chunks), the sharded thresholds, the top / bottom / random masks of both
  scopes (ties and coin flips included) and the summary thresholds are identical to the
  one-process code's; the report rewritten from the shards is bit-identical;
* zeroing the top 3 % on the shards changes the perplexity, and the restore leaves every
  shard and the perplexity bit-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORLD = 2
FRACTION, SEED = 0.03, 3
WHICH = ("top", "bottom", "random")
SCOPES = ("global", "per_matrix")
# fp32 summation order (the ranks' gradients summed per step by the reduce-scatter, against
# one running sum): relative 1e-4, with an absolute floor of 1e-5 of the tensor's mean score
# for the entries whose gradient sum cancels to ~0, where the order decides the last digits
# (measured: one entry in 8192 of a matrix differs by 1e-3 relative, 1.4e-10 absolute, at
# 1.5e-6 of the mean)
SCORE_RTOL, SCORE_FLOOR = 1e-4, 1e-5
PPL_RTOL = 1e-5


def write_inputs(root: Path, llm_dir: str, whisper_dir: str) -> dict:
    """The base model's YAML, the options, and an exp dir (``root/single``) with two trained
    systems (seeded perturbations of the tiny speech LLM): Full-FT and LoRA r 4."""
    import shutil

    import yaml

    from espnet_ext.tasks.speech_llm import SpeechLLMTask
    from espnet_ext.tasks.systems import SystemInfo, write_system

    parts = {"encoder": "whisper", "encoder_conf": {"model_name_or_path": whisper_dir},
             "adaptor": "concat", "adaptor_conf": {"downsample_rate": 5, "hidden_size": 32},
             "llm": "hf", "llm_conf": {"model_name_or_path": llm_dir}}
    (root / "model.yaml").write_text(yaml.safe_dump(parts))
    # the sharded path runs every sample's prompt prefix itself (no shared prefix cache)
    (root / "model_noprefix.yaml").write_text(yaml.safe_dump({**parts, "model_conf": {"share_prompt_prefix": False}}))
    # 12 utterances in batches of 5: 3 batches, so the ranks take 2 and 1 (and a stand-in step)
    (root / "importance.yaml").write_text(yaml.safe_dump({
        "scoring": {"num_utts": 12, "batch_size": 5},
        "deactivation": {"fraction": FRACTION, "num_utts": 4, "batch_size": 3},
        "analysis": {"layers": [0, 3], "change_layer": 1, "max_px": 16, "n_null": 4}}))
    gen = torch.Generator().manual_seed(0)
    for tag, extra in (("full", {}), ("lora", {"lora_conf": {"r": 4}})):
        conf = {**parts, **extra}
        args = {**SpeechLLMTask.default_args(), **conf}
        torch.manual_seed(0)
        model = SpeechLLMTask.build_model(argparse.Namespace(**args))
        state = {k: (v + 0.02 * v.abs().mean() * torch.randn(v.shape, generator=gen) if "layers." in k
                     and "lora_" not in k else 0.05 * torch.randn(v.shape, generator=gen) if "lora_B" in k else v)
                 for k, v in model.state_dict().items()}
        (root / "single" / tag).mkdir(parents=True)
        (root / "single" / tag / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(args, default=str))))
        torch.save(state, root / "single" / tag / "valid.loss.best.pth")
        write_system(root / "single" / tag, SystemInfo("LoRA" if extra else "Full-FT", "lora" if extra else "full_ft"))
    shutil.copytree(root / "single", root / "sharded")


def stage3_args(root: Path, dumps: Path, exp: str, model: str = "model.yaml") -> list:
    return ["--config", str(root / "importance.yaml"), "--model_config", str(root / model),
            "--data_dir", str(dumps / "dump" / "train"), "--eval_dir", str(dumps / "dump" / "dev"),
            "--output_dir", str(root / exp / "importance" / "base")]


def stage6_args(root: Path, dumps: Path, exp: str) -> list:
    return ["--config", str(root / "importance.yaml"), "--exp_dir", str(root / exp), "--systems", "full lora",
            "--base_model_config", str(root / "model.yaml"), "--data_dir", str(dumps / "dump" / "train"),
            "--eval_dir", str(dumps / "dump" / "dev")]


def tie_heavy(scores: dict) -> dict:
    """Scores rounded to 2 significant bits with a tenth set to zero: most values tie."""
    out = {}
    for n, s in scores.items():
        m, e = torch.frexp(s)
        t = torch.ldexp(torch.round(m * 4) / 4, e)
        t[torch.arange(t.numel()).reshape(t.shape) % 10 == 0] = 0.0
        out[n] = t
    return out


# --------------------------------------------------------------------------------------
# the sharded worker
# --------------------------------------------------------------------------------------
def worker(llm_dir: str, whisper_dir: str, dumps: str, root: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import load_file
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from espnet_ext.analysis.score import shard_for_analysis
    from espnet_ext.bin.importance_analyze import main as analyze_cli
    from espnet_ext.bin.importance_score import main as importance_cli
    from espnet_ext.importance.params import select_parameters
    from espnet_ext.importance.sharded import (
        deactivated_shards,
        like,
        local,
        perplexity_sharded,
        sharded_masks,
        summarize_sharded,
        write_report_sharded,
    )
    from espnet_ext.inference.speechllm import load_model
    from espnet_ext.train.batches import dump_batches, preprocessor_for
    from espnet_ext.train.sharding import ShardingConfig

    torch.set_num_threads(1)
    root, dumps = Path(root), Path(dumps)
    sharding = ["--sharding_conf", "param_dtype=float32"]
    start = time.perf_counter()
    # 1. stages 3 and 6, sharded (the jobs join the process group themselves)
    importance_cli(stage3_args(root, dumps, "sharded") + sharding)
    analyze_cli(stage6_args(root, dumps, "sharded") + sharding)
    seconds = time.perf_counter() - start
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (WORLD,))
    result = {"job_seconds": seconds}
    # 2. thresholds, masks, summary and the report from the same scores as the reference code
    scores = load_file(root / "sharded" / "importance" / "full" / "scores.safetensors")
    for variant, full in (("same", scores), ("ties", tie_heavy(scores))):
        shards = {n: distribute_tensor(s, mesh, [Shard(0)]) for n, s in full.items()}
        masks = {}
        for which in WHICH:
            for scope in SCOPES:
                got = sharded_masks(shards, FRACTION, which, scope, SEED)
                masks[f"{which}/{scope}"] = {n: like(m, shards[n]).full_tensor() for n, m in got.items()}
        result[variant] = {"masks": masks, "summary": summarize_sharded(shards, {"variant": variant})}
        write_report_sharded(root / f"rewritten_{variant}", shards, {"variant": variant})
    write_report_sharded(root / "rewritten_bf16", {n: distribute_tensor(s, mesh, [Shard(0)])
                                                   for n, s in scores.items()}, dtype="bfloat16")
    # 3. Table 1's zeroing on the shards of a sharded model, and its exact restore
    model = load_model(root / "single" / "full" / "config.yaml", root / "single" / "full" / "valid.loss.best.pth")
    shard_for_analysis(model, ShardingConfig(param_dtype="float32"), ("layers",), torch.device("cpu"))
    params = select_parameters(model)
    batches = [b for _, b in dump_batches(dumps / "dump" / "dev", preprocessor_for(model), "text", 3)]
    before = {n: local(p).detach().clone() for n, p in params.items()}
    base = perplexity_sharded(model, batches, "text")
    layout = {n: distribute_tensor(scores[n], mesh, [Shard(0)]) for n in params}  # FSDP2's layout
    with deactivated_shards(params, sharded_masks(layout, FRACTION, "top"), model) as zeroed:
        top = perplexity_sharded(model, batches, "text")
    after = perplexity_sharded(model, batches, "text")
    result["restore"] = {"base": base, "top": top, "after": after, "zeroed": zeroed,
                         "bitwise": all(torch.equal(local(p), before[n]) for n, p in params.items())}
    everyone = [None] * WORLD
    dist.all_gather_object(everyone, result["restore"]["bitwise"])
    result["restore"]["bitwise_all_ranks"] = everyone
    if rank == 0:
        torch.save(result, root / "worker.pt")
    dist.destroy_process_group()


# --------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llm_dir, tiny_whisper_dir, tiny_dumps):
    """``(root, worker results)``; ``root/single`` holds the reference jobs' outputs,
    ``root/sharded`` the sharded ones'."""
    from espnet_ext.bin.importance_analyze import main as analyze_cli
    from espnet_ext.bin.importance_score import main as importance_cli

    root = tmp_path_factory.mktemp("sharded_analysis")
    write_inputs(root, str(tiny_llm_dir), str(tiny_whisper_dir))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(WORLD)}
    cmd = [sys.executable, __file__, str(tiny_llm_dir), str(tiny_whisper_dir), str(tiny_dumps), str(root)]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the one-process reference, while the workers run
        importance_cli(stage3_args(root, tiny_dumps, "single"))
        analyze_cli(stage6_args(root, tiny_dumps, "single"))
        importance_cli(stage3_args(root, tiny_dumps, "noprefix", "model_noprefix.yaml"))
    finally:
        torch.set_num_threads(threads)
        logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return root, torch.load(root / "worker.pt", weights_only=False)


REPORTS = ["base", "full", "full/speech", "lora"]


def _load(d: Path) -> dict:
    from espnet_ext.importance.report import load_scores

    return load_scores(d)


@pytest.mark.parametrize("report", REPORTS)
def test_sharded_scores_and_summary_equal_one_process(runs, report):
    root, result = runs
    single, sharded = (_load(root / exp / "importance" / report) for exp in ("single", "sharded"))
    assert single.keys() == sharded.keys()
    worst_rel, worst_norm, beyond, total = 0.0, 0.0, 0, 0
    for n, s in single.items():
        floor = SCORE_FLOOR * float(s.mean())
        torch.testing.assert_close(sharded[n], s, rtol=SCORE_RTOL, atol=floor)
        d = (sharded[n] - s).abs()
        worst_rel = max(worst_rel, float((d / s.clamp(min=floor)).max()))
        worst_norm = max(worst_norm, float(d.max() / s.max()))
        beyond += int((d > SCORE_RTOL * s).sum())
        total += s.numel()
    print(f"{report} scores, sharded vs one process: max relative difference {worst_rel:.1e} "
          f"(entries >= {SCORE_FLOOR:g} x their matrix's mean), {beyond} of {total} entries beyond "
          f"{SCORE_RTOL:g} relative, max |Δ| / max score {worst_norm:.1e}; sharded jobs {result['job_seconds']:.1f} s")
    a, b = (json.loads((root / exp / "importance" / report / "summary.json").read_text())
            for exp in ("single", "sharded"))
    assert a["num_parameters"] == b["num_parameters"] and a["shapes"] == b["shapes"]
    assert (a["meta"]["n_utts"], a["meta"]["n_batches"]) == (b["meta"]["n_utts"], b["meta"]["n_batches"]) == (12, 3)
    assert b["meta"]["mean_loss"] == pytest.approx(a["meta"]["mean_loss"], rel=1e-6)
    assert b["meta"]["sharding"]["world_size"] == WORLD and "sharding" not in a["meta"]
    np.testing.assert_allclose(b["layer_sums"], a["layer_sums"], rtol=1e-5)
    floor = SCORE_FLOOR * a["total"] / a["num_parameters"]  # the bottom thresholds lie among cancelling sums
    for q, v in a["thresholds_global"].items():
        assert b["thresholds_global"][q] == pytest.approx(v, rel=SCORE_RTOL, abs=floor), q
    for n, per in a["thresholds_per_matrix"].items():
        for q, v in per.items():
            assert b["thresholds_per_matrix"][n][q] == pytest.approx(v, rel=SCORE_RTOL), (n, q)


def test_sharded_scores_are_one_process_scores_without_the_prefix_cache(runs):
    """Where the difference comes from: with 3 batches on 2 ranks the gradient sums are added
    in the one-process order ((g1 + g2) + g3: each reduce-scatter of a step sums the ranks'
    two batches, x 2 / 2 exactly), and each batch's gradient is the same computation, so the
    sharded report equals bit for bit a one-process report that, like the sharded path,
    runs every sample's prompt prefix itself; the shared prefix cache is what moves digits."""
    root, _ = runs
    single, sharded = (_load(root / exp / "importance" / "base") for exp in ("noprefix", "sharded"))
    assert all(torch.equal(sharded[n], single[n]) for n in single)
    a, b = (json.loads((root / exp / "importance" / "base" / "table1.json").read_text())
            for exp in ("noprefix", "sharded"))
    assert a["table"] == b["table"]


@pytest.mark.parametrize("system", ["base", "full"])
def test_table1_on_the_shards_equals_one_process(runs, system):
    from espnet_ext.importance.deactivate import deactivation_masks

    root, _ = runs
    a, b = (json.loads((root / exp / "importance" / system / "table1.json").read_text())
            for exp in ("single", "sharded"))
    rows = {"text": "text"} if system == "base" else {"text": "text", "speech": "speech"}
    assert a["masks_from"] == b["masks_from"] == rows
    assert b["zeroed_fraction"] == a["zeroed_fraction"]  # the same number of weights zeroed
    worst = 0.0
    for row in a["table"]:
        for which, ppl in a["table"][row].items():
            worst = max(worst, abs(b["table"][row][which] / ppl - 1))
            assert b["table"][row][which] == pytest.approx(ppl, rel=PPL_RTOL), (row, which)
    print(f"Table 1 of {system}, sharded vs one process: max relative perplexity difference {worst:.1e}")
    for row in a["table"].values():  # not vacuous: zeroing moves the perplexity far beyond the tolerance
        assert all(abs(row[w] / row["base"] - 1) > 100 * PPL_RTOL for w in ("top", "random")), row
    for report in [system] + ([f"{system}/speech"] if system == "full" else []):  # the same sets zeroed
        single, sharded = (_load(root / exp / "importance" / report) for exp in ("single", "sharded"))
        for which in WHICH:
            want, got = deactivation_masks(single, FRACTION, which), deactivation_masks(sharded, FRACTION, which)
            assert all(torch.equal(got[n], want[n]) for n in want), (report, which)


def test_stage6_analysis_on_the_shards_equals_one_process(runs):
    root, _ = runs
    a, b = (json.loads((root / exp / "results" / "analysis.json").read_text()) for exp in ("single", "sharded"))
    assert a["change"] == b["change"]  # whole weights, read before sharding
    for tag in ("full", "lora"):
        for k, v in a["shift"][tag].items():
            assert b["shift"][tag][k] == pytest.approx(v, rel=1e-3, abs=1e-9), (tag, k)
    assert set(b["rank_clustering"]) == {"base", "full", "lora", "full:speech"}
    assert (root / "sharded" / "results" / "figures" / "fig1_rank_clustering.png").is_file()


@pytest.mark.parametrize("variant", ["same", "ties"])
def test_masks_and_thresholds_on_the_same_scores_are_identical(runs, variant):
    """Every mask decision and threshold of the sharded code equals the one-process code's."""
    from espnet_ext.importance.deactivate import deactivation_masks
    from espnet_ext.importance.report import summarize
    from espnet_ext.importance.threshold import threshold_for_fraction

    root, result = runs
    scores = _load(root / "sharded" / "importance" / "full")
    full = scores if variant == "same" else tie_heavy(scores)
    got = result[variant]
    for which in WHICH:
        for scope in SCOPES:
            want = deactivation_masks(full, FRACTION, which, scope, SEED)
            masks = got["masks"][f"{which}/{scope}"]
            assert all(torch.equal(masks[n], want[n]) for n in want), (which, scope)
    if variant == "ties":  # the threshold value is shared by many entries, all of them kept
        t = threshold_for_fraction(list(full.values()), FRACTION, "top")
        tied = sum(int((s == t).sum()) for s in full.values())
        total = sum(s.numel() for s in full.values())
        assert tied > 10 and sum(int(m.sum()) for m in got["masks"]["top/global"].values()) > FRACTION * total
    want = summarize(full, {"variant": variant})
    have = got["summary"]
    assert have["thresholds_global"] == want["thresholds_global"]
    assert have["thresholds_per_matrix"] == want["thresholds_per_matrix"]
    np.testing.assert_allclose(have["layer_sums"], want["layer_sums"], rtol=1e-12)
    assert have["total"] == pytest.approx(want["total"], rel=1e-12)
    assert {k: v for k, v in have.items() if k not in ("total", "layer_sums", "module_type_sums")} == \
        {k: v for k, v in want.items() if k not in ("total", "layer_sums", "module_type_sums")}


def test_report_written_from_the_shards_is_the_whole_report(runs):
    from safetensors import safe_open

    from espnet_ext.importance.report import load_summary

    root, _ = runs
    scores = _load(root / "sharded" / "importance" / "full")
    for variant, full in (("same", scores), ("ties", tie_heavy(scores))):
        again = _load(root / f"rewritten_{variant}")
        assert again.keys() == full.keys() and all(torch.equal(again[n], full[n]) for n in full)
        assert load_summary(root / f"rewritten_{variant}")["meta"] == {"variant": variant}
    with safe_open(str(root / "rewritten_bf16" / "scores.safetensors"), framework="pt") as f:
        assert f.metadata() == {"dtype": "bfloat16"}
        assert all(torch.equal(f.get_tensor(n), s.to(torch.bfloat16)) for n, s in scores.items())
    assert not list(root.glob("rewritten_*/.*tmp"))  # no temporary file left behind


def test_deactivation_on_the_shards_restores_bitwise(runs):
    _, result = runs
    r = result["restore"]
    assert r["zeroed"] > 0 and abs(r["top"] / r["base"] - 1) > 1e-3  # zeroing changed the model
    assert r["after"] == r["base"] and r["bitwise_all_ranks"] == [True] * WORLD


# --------------------------------------------------------------------------------------
# in one process: the radix search itself, and what sharded scoring refuses
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["uniform", "ties", "tiny", "zeros"])
def test_radix_search_equals_the_sort(kind):
    from espnet_ext.importance.sharded_threshold import Search, kth_largest_sharded, thresholds_sharded
    from espnet_ext.importance.threshold import kth_largest, threshold_for_fraction

    gen = torch.Generator().manual_seed(1)
    parts = [torch.rand(n, generator=gen) for n in (500, 37, 1000)]
    if kind == "ties":
        parts = [torch.round(p * 8) / 8 for p in parts]
    elif kind == "tiny":  # subnormals and -0.0 (read as +0.0)
        parts = [p * 1e-39 for p in parts] + [torch.tensor([-0.0, 0.0])]
    elif kind == "zeros":
        parts = [torch.zeros(100), torch.tensor([1.0, 2.0])]
    total = sum(p.numel() for p in parts)
    ks = [1, 2, total // 30, total // 2, total - 1, total]
    got = kth_largest_sharded([Search(parts, k) for k in ks], torch.device("cpu"))
    assert got == [kth_largest(parts, k, method="sort") for k in ks]
    requests = [(parts, f, side) for f in (0.01, 0.03) for side in ("top", "bottom")]
    assert thresholds_sharded(requests, torch.device("cpu")) == [
        threshold_for_fraction(parts, f, side) for _, f, side in requests]


def test_radix_search_refuses_bad_scores_and_ranks():
    from espnet_ext.importance.sharded_threshold import Search, kth_largest_sharded

    with pytest.raises(ValueError, match="non-negative"):
        kth_largest_sharded([Search([torch.tensor([1.0, -2.0])], 1)], torch.device("cpu"))
    with pytest.raises(ValueError, match="non-negative"):
        kth_largest_sharded([Search([torch.tensor([1.0, float("nan")])], 1)], torch.device("cpu"))
    with pytest.raises(ValueError, match=r"k must be in \[1, 2\]"):
        kth_largest_sharded([Search([torch.tensor([1.0, 2.0])], 3)], torch.device("cpu"))


def test_sharded_scoring_refuses_per_batch_scores_and_unsharded_models(make_speech_llm):
    from espnet_ext.importance.scoring import ImportanceConfig
    from espnet_ext.importance.sharded import score_importance_sharded

    model = make_speech_llm(encoder=False)
    with pytest.raises(ValueError, match="abs_per_batch.*signed_sum"):
        score_importance_sharded(model, [{}], ImportanceConfig(accumulate="abs_per_batch"))
    with pytest.raises(ValueError, match="needs an FSDP2-sharded model"):
        score_importance_sharded(model, [{}], ImportanceConfig())


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    worker(*sys.argv[1:5])
