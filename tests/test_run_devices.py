"""The command lines egs2/speechimp/run.sh gives its model jobs under --ngpu / --nproc.

run.sh runs stages 2-6 with a stand-in virtual environment (``SPEECHIMP_VENV``) whose
``python`` and ``torchrun`` only record their argv (``python -c``, which utils/conf_get.sh
uses, runs the real interpreter), so no model is loaded and no GPU is needed.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "speechimp"
DEFAULT_MODEL_PRESET = "conf/model/smollm2_135m_whisper_tiny.yaml"  # run.sh --model_preset
SETS = ("train", "dev", "test_llamaq", "test_webq", "test_llamaq_unseen", "test_webq_unseen")
MODEL_JOBS = ("dump_features", "importance_score", "speechllm_train", "speechllm_inference",
              "cascade_decode", "importance_analyze")

STUB = """#!/usr/bin/env bash
if [ "$(basename "$0")" = python ] && [ "${1:-}" = -c ]; then exec %(python)s "$@"; fi
{ printf '%%q ' "$(basename "$0")" "$@"; echo; } >>%(log)s
"""


def _stub_venv(tmp: Path) -> Path:
    venv, log = tmp / "venv", tmp / "calls.log"
    (venv / "bin").mkdir(parents=True)
    (venv / ".speechimp-installed").write_text("")
    for name in ("python", "torchrun"):
        exe = venv / "bin" / name
        exe.write_text(STUB % {"python": shlex.quote(sys.executable), "log": shlex.quote(str(log))})
        exe.chmod(0o755)
    return venv


def _fake_earlier_outputs(tmp: Path, trained=("full",), cache_features: bool = True) -> None:
    """What stages 1-5 leave (empty stand-ins), so stages 2-6 pass their input checks;
    ``cache_features``: the model preset's encoder mode, recorded in each dump's report."""
    exp, dump, data = tmp / "exp", tmp / "dump", tmp / "data"
    for d in ("llm", "whisper"):
        (exp / "pretrained" / d).mkdir(parents=True)
    (exp / "pretrained" / "model.yaml").write_text("")
    for s in SETS:
        (dump / s).mkdir(parents=True)
        (dump / s / "enc_feats.scp").write_text("")
        (dump / s / "dump_report.json").write_text(json.dumps({"cache_features": cache_features}))
        (data / s).mkdir(parents=True)
        (data / s / "wav.scp").write_text("")
    (exp / "importance" / "base").mkdir(parents=True)
    (exp / "importance" / "base" / "summary.json").write_text("{}")
    (exp / "importance" / "base" / "scores.safetensors").write_text("")
    for tag in trained:
        (exp / tag).mkdir()
        for f in ("config.yaml", "valid.loss.best.pth", "system.json"):
            (exp / tag / f).write_text("")
    decodes = [("noft", SETS[2:4], "text"), ("noft", SETS[2:4], "chat"), ("cascade", SETS[2:], "speech")]
    for tag in trained:
        decodes += [(tag, SETS[2:], "speech"), (tag, SETS[2:4], "text"), (tag, SETS[2:4], "chat")]
    for tag, sets, mod in decodes:
        for s in sets:
            (exp / tag / f"decode_{s}_{mod}").mkdir(parents=True, exist_ok=True)
            (exp / tag / f"decode_{s}_{mod}" / "hyp").write_text("")


def _run(tmp: Path, *opts: str, trained=("full",)) -> subprocess.CompletedProcess:
    venv = _stub_venv(tmp)
    preset = opts[opts.index("--model_preset") + 1] if "--model_preset" in opts else DEFAULT_MODEL_PRESET
    cache = yaml.safe_load((RECIPE / preset).read_text())["encoder_conf"].get("cache_features", True)
    _fake_earlier_outputs(tmp, trained, cache)
    cmd = ["./run.sh", "--stage", "2", "--stop_stage", "6", "--preset", "full",
           "--train_configs", "conf/train_full.yaml", "--datadir", str(tmp / "data"),
           "--dumpdir", str(tmp / "dump"), "--expdir", str(tmp / "exp"),
           "--results_md", str(tmp / "RESULTS.md"), *opts]
    env = {**os.environ, "SPEECHIMP_VENV": str(venv), "OMP_NUM_THREADS": "1", "cmd_backend": "local"}
    return subprocess.run(cmd, cwd=RECIPE, capture_output=True, text=True, env=env, timeout=120)


def _calls(tmp: Path) -> Dict[str, List[List[str]]]:
    """module → the argv of every recorded call that runs it (launcher first)."""
    out: Dict[str, List[List[str]]] = {}
    for line in (tmp / "calls.log").read_text().splitlines():
        argv = shlex.split(line)
        module = argv[argv.index("-m") + 1].rsplit(".", 1)[-1]
        out.setdefault(module, []).append(argv)
    return out


def _opt(argv: List[str], name: str) -> str:
    assert argv.count(name) == 1, (name, argv)
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("ngpu, nproc, launcher, device, backend", [
    (2, 1, ["torchrun", "--standalone", "--nproc_per_node", "2", "-m"], "cuda", "nccl"),
    (1, 1, ["python", "-m"], "cuda", None),
    (0, 2, ["torchrun", "--standalone", "--nproc_per_node", "2", "-m"], "cpu", "gloo"),
])
def test_every_model_job_gets_the_device_and_launcher_of_ngpu(tmp_path, ngpu, nproc, launcher, device, backend):
    p = _run(tmp_path, "--ngpu", str(ngpu), "--nproc", str(nproc),
             "--model_preset", "conf/model/llama32_1b_whisper_large_v3.yaml")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    calls = _calls(tmp_path)
    assert set(MODEL_JOBS) <= set(calls), sorted(calls)
    assert [len(calls[m]) for m in MODEL_JOBS] == [1, 1, 1, 2, 1, 1]  # 2 decodes: No-FT, Full-FT
    # T2T in both prompts (the speech LLM's, the LLM's own chat template), S2T for Full-FT
    noft, full = calls["speechllm_inference"]
    assert [noft[i + 1] for i, a in enumerate(noft) if a == "--modality"] == ["text"] * 2 + ["chat"] * 2
    # S2T on test_llamaq, test_webq and the speaker-disjoint test_llamaq_unseen (--unseen_test_sets auto)
    assert [full[i + 1] for i, a in enumerate(full) if a == "--modality"] == ["text"] * 2 + ["chat"] * 2 + \
        ["speech"] * 3
    for module in MODEL_JOBS[1:]:  # the sharded jobs
        for argv in calls[module]:
            assert argv[:len(launcher) + 1] == launcher + [f"espnet_ext.bin.{module}"], argv
            if module != "speechllm_train":
                assert _opt(argv, "--device") == device, argv
    # the feature dump: one process on the device, with the preset's 30 s padding
    dump = calls["dump_features"][0]
    assert dump[:3] == ["python", "-m", "espnet_ext.bin.dump_features"], dump
    assert _opt(dump, "--device") == device and _opt(dump, "--pad_to_30s") == "true"
    # ESPnet under torchrun: one GPU per process
    train = calls["speechllm_train"][0]
    assert _opt(train, "--ngpu") == str(1 if ngpu else 0)
    if backend:
        assert _opt(train, "--dist_backend") == backend and _opt(train, "--multiprocessing_distributed") == "false"
    # scoring loads no model
    assert calls["score_qa"][0][:2] == ["python", "-m"] and "--device" not in calls["score_qa"][0]
    # the launcher's log header names the GPUs of the sharded jobs
    assert f"gpu {ngpu if ngpu else 0}," in (tmp_path / "exp/importance/base/score.log").read_text()


def test_cpu_default_and_a_preset_without_padding(tmp_path):
    p = _run(tmp_path, "--stop_stage", "3", "--model_preset", "conf/model/tiny_random.yaml")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    calls = _calls(tmp_path)
    dump = calls["dump_features"][0]
    assert _opt(dump, "--pad_to_30s") == "false" and _opt(dump, "--device") == "cpu"
    score = calls["importance_score"][0]
    assert score[:2] == ["python", "-m"] and _opt(score, "--device") == "cpu"


def test_nproc_other_than_ngpu_is_refused(tmp_path):
    p = _run(tmp_path, "--ngpu", "2", "--nproc", "3")
    assert p.returncode == 1
    assert "run.sh: --nproc 3 with --ngpu 2: on GPUs a job runs one process per GPU" in p.stderr, p.stderr
    assert "==== Stage" not in p.stderr and not (tmp_path / "calls.log").exists()


def test_seeds_train_decode_and_score_one_run_per_config_and_seed(tmp_path):
    p = _run(tmp_path, "--seeds", "0 3", trained=("full", "full_seed3"))
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    calls = _calls(tmp_path)
    compose = next(a for a in calls["compose_config"] if "--train_config" in a)
    assert [compose[i + 1] for i, a in enumerate(compose) if a == "--seed"] == ["0", "3"]
    assert [compose[i + 1] for i, a in enumerate(compose) if a == "--out"] == \
        [str(tmp_path / "exp/full/train.yaml"), str(tmp_path / "exp/full_seed3/train.yaml")]
    assert [_opt(a, "--config") for a in calls["speechllm_train"]] == \
        [str(tmp_path / f"exp/{t}/train.yaml") for t in ("full", "full_seed3")]
    decoded = [_opt(a, "--config") for a in calls["speechllm_inference"]]
    assert decoded[1:] == [str(tmp_path / f"exp/{t}/config.yaml") for t in ("full", "full_seed3")]
    assert _opt(calls["importance_analyze"][0], "--systems").split() == ["full", "full_seed3"]
    for bad, why in (("0 x", "--seeds must list whole numbers"), ("1 1", "--seeds lists a seed twice")):
        p = _run(tmp_path / bad.replace(" ", "_"), "--seeds", bad)
        assert p.returncode == 1 and why in p.stderr, p.stderr


def test_importance_sharding_reaches_stages_3_and_6_only(tmp_path):
    p = _run(tmp_path, "--ngpu", "0", "--nproc", "2", "--importance_sharding", "engine=fsdp2,param_dtype=float32")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    calls = _calls(tmp_path)
    for module in ("importance_score", "importance_analyze"):
        assert _opt(calls[module][0], "--sharding_conf") == "engine=fsdp2,param_dtype=float32"
    assert "--sharding_conf" not in calls["speechllm_train"][0]  # training has its own option


@pytest.mark.parametrize("option", ["--importance_sharding", "--train_sharding"])
def test_sharding_with_one_process_is_refused(tmp_path, option):
    p = _run(tmp_path, option, "engine=fsdp2")
    assert p.returncode == 1
    assert f"run.sh: {option} needs more than one process" in p.stderr, p.stderr
    assert "==== Stage" not in p.stderr
