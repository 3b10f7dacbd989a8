"""End-to-end: egs2/speechimp/run.sh stages 1-6 on tiny random models and a tiny demo world.

Runs the real shell recipe (parse_options, launchers, every espnet_ext.bin job) in a
temporary data/dump/exp root, then checks the outputs and that re-running is a no-op.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "speechimp"


def _run(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        "./run.sh", "--preset", "full", "--model_preset", "conf/model/tiny_random.yaml", "--demo_max_utts", "6",
        "--datadir", str(tmp / "data"), "--dumpdir", str(tmp / "dump"), "--expdir", str(tmp / "exp"),
        "--results_md", str(tmp / "RESULTS.md"),
        "--train_args", "--max_epoch 1 --num_iters_per_epoch 2 --batch_size 2 --scheduler_conf total_steps=2",
        "--train_configs", " ".join(f"conf/train_{t}.yaml" for t in ("full", "layerlr", "lora", "impanchor")),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=RECIPE, capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return p


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    p = _run(tmp)
    return tmp, p


def test_all_stages_produce_their_outputs(recipe_run):
    tmp, p = recipe_run
    for s in ("train", "dev", "test_llamaq", "test_webq", "test_llamaq_unseen", "test_webq_unseen"):
        for f in ("wav.scp", "text", "answer", "utt2spk", "spk2utt"):
            assert (tmp / "data" / s / f).is_file(), (s, f)
        if s == "test_webq_unseen":  # made by stage 1, not in --unseen_test_sets auto
            assert not (tmp / "dump" / s).exists()
            continue
        for f in ("enc_feats.scp", "llm_len.speech", "llm_len.text", "dump_report.json"):
            assert (tmp / "dump" / s / f).is_file(), (s, f)
    assert (tmp / "exp/pretrained/llm/config.json").is_file()
    assert (tmp / "exp/importance/base/scores.safetensors").is_file()
    assert (tmp / "exp/importance/base/table1.md").is_file()
    # Table 1: the base (random adaptor) gets text rows only; Full-FT (deactivation.roles)
    # gets text and speech in stage 6; the other systems no check
    assert list(json.loads((tmp / "exp/importance/base/table1.json").read_text())["table"]) == ["text"]
    assert list(json.loads((tmp / "exp/importance/full/table1.json").read_text())["table"]) == ["text", "speech"]
    assert (tmp / "exp/importance/lora/summary.json").is_file()
    assert not (tmp / "exp/importance/lora/table1.json").exists()
    assert (tmp / "exp/full/valid.loss.best.pth").is_file()
    assert (tmp / "exp/full/train.sh.cmd").is_file() and (tmp / "exp/run.sh.cmd").is_file()
    for sys_, mods in (("noft", ["text"]), ("full", ["text", "speech"])):
        for s in ("test_llamaq", "test_webq"):
            for m in mods:
                d = tmp / "exp" / sys_ / f"decode_{s}_{m}"
                assert len((d / "hyp").read_text().splitlines()) == 6, d
                assert json.loads((d / "score.json").read_text())["n"] == 6
    assert not (tmp / "exp/noft/decode_test_llamaq_speech").exists()
    # the speaker-disjoint sets: S2T and the cascade only (T2T would repeat the in-voice set)
    for sys_ in ("full", "cascade"):
        assert json.loads((tmp / f"exp/{sys_}/decode_test_llamaq_unseen_speech/score.json").read_text())["n"] == 6
    assert not (tmp / "exp/full/decode_test_llamaq_unseen_text").exists()
    assert not (tmp / "exp/full/decode_test_webq_unseen_speech").exists()
    md = (tmp / "RESULTS.md").read_text()
    assert "test_llamaq_unseen S2T" in md
    assert re.search(r"demo, train source instructions, (flite|espeak) voices", md)  # what spoke the data
    for n in range(1, 6):
        assert f"Stage {n}:" in p.stderr


def test_mitigations_train_on_the_stage3_report_and_decode(recipe_run):
    import yaml

    tmp, _ = recipe_run
    for tag, key in (("layerlr", "layer_lr_conf"), ("impanchor", "anchor_conf")):
        conf = yaml.safe_load((tmp / "exp" / tag / "config.yaml").read_text())
        assert conf[key]["importance_report"] == str(tmp / "exp/importance/base")  # follows --expdir
    for tag in ("layerlr", "lora", "impanchor"):
        for m in ("text", "speech"):
            assert len((tmp / "exp" / tag / f"decode_test_webq_{m}" / "hyp").read_text().splitlines()) == 6
    md = (tmp / "RESULTS.md").read_text()
    assert all(f"| {name} | " in md for name in ("Layer-LR", "LoRA", "ImpAnchor (ours)"))


def test_results_md_is_generated_from_summary(recipe_run, tmp_path):
    tmp, _ = recipe_run
    md = (tmp / "RESULTS.md").read_text()
    assert "| No-FT | " in md and "| Full-FT | " in md and "Table 1" in md
    assert "| total |" in md
    from espnet_ext.bin.make_results import main

    main(["--from_summary", str(tmp / "exp/results/summary.json"), "--out_md", str(tmp_path / "R.md")])
    assert (tmp_path / "R.md").read_text() == md


def test_rerun_is_idempotent(recipe_run):
    tmp, _ = recipe_run
    ckpt = tmp / "exp/full/valid.loss.best.pth"
    hyp = tmp / "exp/full/decode_test_llamaq_speech/hyp"
    stamps = lambda: [p.stat().st_mtime_ns for p in (ckpt, hyp, tmp / "dump/train/enc_feats.ark",  # noqa: E731
                                                     tmp / "exp/importance/base/scores.safetensors")]
    before = stamps()
    _run(tmp, "--stage", "1", "--stop_stage", "6")
    assert stamps() == before
    assert "already" in (tmp / "exp/log/dump_features.log").read_text()
    assert "already decoded" in (tmp / "exp/full/decode.log").read_text()


def test_unknown_option_is_rejected(tmp_path):
    p = subprocess.run(["./run.sh", "--no_such_option", "1"], cwd=RECIPE, capture_output=True, text=True)
    assert p.returncode != 0 and "no_such_option" in p.stderr


def _quick(*args: str) -> subprocess.CompletedProcess:
    """run.sh with options that start no job (a stage range after parsing, or one stage's checks)."""
    return subprocess.run(["./run.sh", *args], cwd=RECIPE, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)


NO_STAGES = ("--stage", "99", "--stop_stage", "98")  # parses the options, takes the lock, runs nothing


def _hold_lock(exp: Path) -> int:
    fd = os.open(exp / ".run.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_exp_dir_in_use_is_refused_naming_the_holder(tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / ".run.lock.info").write_text("pid=1234\nhost=otherhost\nstart=2026-12-02T01:00:00Z\n"
                                        "command=./run.sh --stage 4\n")
    fd = _hold_lock(exp)
    try:
        p = _quick(*NO_STAGES, "--expdir", str(exp))
        assert p.returncode == 1
        assert (f"run.sh: {exp}/ is in use by pid 1234 on host otherhost since 2026-12-02T01:00:00Z "
                "(./run.sh --stage 4); wait for it or use another --expdir") in p.stderr, p.stderr
        assert not (exp / "run.sh.cmd").exists()  # the refused run left no trace
        assert _quick("--help", "--expdir", str(exp)).returncode == 0  # --help takes no lock
    finally:
        os.close(fd)
    # free again (as after the holder died): taken over, the info file names the new holder
    p = _quick(*NO_STAGES, "--expdir", str(exp))
    assert p.returncode == 0, p.stderr
    info = dict(line.split("=", 1) for line in (exp / ".run.lock.info").read_text().splitlines())
    assert info["pid"] != "1234" and info["host"] == socket.gethostname()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["start"])
    assert info["command"] == f"./run.sh {' '.join(NO_STAGES)} --expdir {exp}"
    assert [p.name for p in exp.glob(".run.lock.info*")] == [".run.lock.info"]  # no temp file left


def test_exp_dir_lock_of_a_killed_run_is_taken_over(tmp_path):
    exp = tmp_path / "exp"
    p = _quick(*NO_STAGES, "--expdir", str(exp))  # a finished run's info file stays behind
    assert p.returncode == 0, p.stderr
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)", str(exp / ".run.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        p = _quick(*NO_STAGES, "--expdir", str(exp))
        assert p.returncode == 1 and "is in use by pid" in p.stderr
        # the pid in the info file is gone (the run that wrote it finished): a job still holds the dir
        assert "that run.sh has exited; a job it started still runs and holds the lock" in p.stderr
    finally:
        holder.kill()
        holder.wait()
    p = _quick(*NO_STAGES, "--expdir", str(exp))  # the kernel released the killed holder's lock
    assert p.returncode == 0, p.stderr


def _fake_stage2(tmp: Path) -> list:
    """What stage 2 leaves (empty stand-ins) under tmp; the options that point run.sh at them."""
    exp, dump = tmp / "exp", tmp / "dump"
    for d in ("llm", "whisper"):
        (exp / "pretrained" / d).mkdir(parents=True)
    (exp / "pretrained" / "model.yaml").write_text("")
    for s in ("train", "dev", "test_llamaq", "test_webq", "test_llamaq_unseen", "test_webq_unseen"):
        (dump / s).mkdir(parents=True)
        (dump / s / "enc_feats.scp").write_text("")
    return ["--expdir", str(exp), "--dumpdir", str(dump), "--datadir", str(tmp / "data")]


def _needs(stage: int, path: Path | str, made_by: int, what: str = "") -> str:
    return (f"run.sh: stage {stage} needs {path}{f' ({what})' if what else ''}, which stage {made_by} "
            f"writes; run ./run.sh --stage {made_by} --stop_stage {made_by} first (same options)")


@pytest.mark.parametrize("stage, need", [(3, "pretrained/model.yaml"), (4, "pretrained/llm"),
                                         (5, "pretrained/model.yaml"), (6, "pretrained/model.yaml")])
def test_stage_before_stage2_names_what_it_needs(tmp_path, stage, need):
    """The new user's case: --stage 4 on a fresh exp dir (was HFValidationError about pretrained/llm)."""
    exp = tmp_path / "exp"
    p = _quick("--stage", str(stage), "--stop_stage", str(stage), "--train_configs", "conf/train_layerlr.yaml",
               "--expdir", str(exp), "--dumpdir", str(tmp_path / "dump"), "--datadir", str(tmp_path / "data"))
    assert p.returncode == 1
    assert _needs(stage, exp / need, 2) in p.stderr, p.stderr
    assert "==== Stage" not in p.stderr  # nothing started


def test_stage4_needs_the_outputs_its_options_ask_for(tmp_path):
    opts = _fake_stage2(tmp_path)
    exp, dump = tmp_path / "exp", tmp_path / "dump"
    four = ("--stage", "4", "--stop_stage", "4")
    p = _quick(*four, *opts)  # preset quick: the adaptor warm-up
    assert p.returncode == 1 and _needs(4, exp / "warmup/adaptor.pth", 2, "--adaptor_warmup true") in p.stderr
    p = _quick(*four, *opts, "--preset", "full", "--transcription_mix", "5")
    assert p.returncode == 1
    assert _needs(4, dump / "train_mix/enc_feats.scp", 2, "--transcription_mix 5") in p.stderr, p.stderr
    # Layer-LR reads stage 3's report (the path its composed config names); Full-FT does not
    p = _quick(*four, *opts, "--preset", "full", "--train_configs", "conf/train_full.yaml conf/train_layerlr.yaml")
    assert p.returncode == 1
    assert _needs(4, exp / "importance/base/summary.json", 3,
                  "layer_lr_conf.importance_report of conf/train_layerlr.yaml") in p.stderr, p.stderr
    assert "==== Stage" not in p.stderr and not (exp / "full" / "train.log").exists()


def test_stage5_and_stage6_need_the_earlier_stages(tmp_path):
    opts = _fake_stage2(tmp_path)
    exp = tmp_path / "exp"
    five, six = ("--stage", "5", "--stop_stage", "5"), ("--stage", "6", "--stop_stage", "6")
    p = _quick(*five, *opts)  # the cascade transcribes stage 1's audio
    assert p.returncode == 1 and _needs(5, tmp_path / "data/test_llamaq/wav.scp", 1) in p.stderr, p.stderr
    p = _quick(*five, *opts, "--cascade", "false", "--train_configs", "conf/train_full.yaml conf/train_lora.yaml")
    assert p.returncode == 1 and _needs(5, exp / "full/config.yaml", 4) in p.stderr, p.stderr
    p = _quick(*six, *opts, "--cascade", "false", "--train_configs", "conf/train_lora.yaml")
    assert p.returncode == 1 and _needs(6, exp / "importance/base/summary.json", 3) in p.stderr, p.stderr
    (exp / "importance/base").mkdir(parents=True)
    (exp / "importance/base/summary.json").write_text("{}")
    p = _quick(*six, *opts, "--cascade", "false", "--train_configs", "conf/train_lora.yaml")
    assert p.returncode == 1  # the analysis reads the scores too
    assert _needs(6, exp / "importance/base/scores.safetensors", 3) in p.stderr, p.stderr
    (exp / "importance/base/scores.safetensors").write_text("")
    p = _quick(*six, *opts, "--cascade", "false", "--train_configs", "conf/train_lora.yaml")
    assert p.returncode == 1 and _needs(6, exp / "lora/config.yaml", 4) in p.stderr, p.stderr
    (exp / "lora").mkdir()
    for f in ("config.yaml", "valid.loss.best.pth"):
        (exp / "lora" / f).write_text("")
    p = _quick(*six, *opts, "--cascade", "false", "--train_configs", "conf/train_lora.yaml")
    assert p.returncode == 1 and _needs(6, exp / "lora/system.json", 4) in p.stderr, p.stderr
    (exp / "lora" / "system.json").write_text("{}")
    p = _quick(*six, *opts, "--cascade", "false", "--train_configs", "conf/train_lora.yaml")
    assert p.returncode == 1
    assert _needs(6, exp / "noft/decode_test_llamaq_text/hyp", 5) in p.stderr, p.stderr
    for s in ("test_llamaq", "test_webq"):
        (exp / "noft" / f"decode_{s}_text").mkdir(parents=True)
        (exp / "noft" / f"decode_{s}_text" / "hyp").write_text("")
    p = _quick(*six, *opts, "--cascade", "false", "--train_configs", "conf/train_lora.yaml")
    assert p.returncode == 1  # --t2t_chat true (the default): the chat-template T2T decodes too
    assert _needs(6, exp / "noft/decode_test_llamaq_chat/hyp", 5) in p.stderr, p.stderr
    for s in ("test_llamaq", "test_webq"):
        (exp / "noft" / f"decode_{s}_chat").mkdir(parents=True)
        (exp / "noft" / f"decode_{s}_chat" / "hyp").write_text("")
    p = _quick(*six, *opts, "--cascade", "false", "--train_configs", "conf/train_lora.yaml")
    assert p.returncode == 1
    assert _needs(6, exp / "lora/decode_test_llamaq_text/hyp", 5) in p.stderr, p.stderr  # T2T first
    assert "==== Stage" not in p.stderr


OPTIONS = {"stage", "stop_stage", "preset", "datadir", "dumpdir", "expdir", "results_md", "data_source",
           "demo_max_utts", "local_data_opts", "train_set", "valid_set", "test_sets", "skip_bad_utts",
           "long_audio", "model_preset", "importance_config", "train_configs", "ngpu", "nproc", "train_args",
           "decode_config", "decode_args", "adaptor_warmup", "warmup_config", "transcription_mix",
           "demo_train", "demo_voices", "unseen_test_sets", "cascade", "t2t_chat", "seeds",
           "importance_sharding", "train_sharding"}


def test_help_lists_every_option_with_its_default_under_its_heading():
    text = (RECIPE / "run.sh").read_text()
    assert max(len(line) for line in text.splitlines()) <= 110
    block = text.split("\n# ==== Options", 1)[1].split("\nhelp_message=", 1)[0]
    lines = block.splitlines()
    opts = {}
    for i, line in enumerate(lines):
        m = re.match(r'([a-z0-9_]+)=("[^"]*"|\S*)(.*)$', line)
        if m:
            opts[m[1]] = m[2]
            # a meaning: a comment on the line or on the next one
            assert "#" in m[3] or re.match(r"\s+#", lines[i + 1]), line
    assert set(opts) >= OPTIONS
    p = subprocess.run(["./run.sh", "--help"], cwd=RECIPE, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert out[0].startswith("speechimp recipe:") and "Options (default in brackets):" in out
    headings = ["General:", "Data:", "Model and its parameter importance:", "Training (stage 4):",
                "Decoding (stage 5):", "Additions to the paper's recipe:"]
    assert [line for line in out if line in headings] == headings
    listed = [line.split()[0][2:] for line in out if line.startswith("  --")]
    assert listed == list(opts)  # every option, once, in the order of run.sh
    for name, default in opts.items():
        assert any(line.startswith(f"  --{name} [{default}]") for line in out), name
    additions = out[out.index("Additions to the paper's recipe:"):]
    assert any("--adaptor_warmup []" in line for line in additions)
    assert any("--transcription_mix [0]" in line for line in additions)


def test_stage1_real_corpora_from_local_copies(tmp_path):
    """--data_source real: the four corpora (fixtures in their HF schemas) via db.sh paths."""
    from helpers import audio_bytes, hf_audio, llama_rows, make_alpaca, make_va, write_parquet

    va, alpaca = make_va(tmp_path / "va"), make_alpaca(tmp_path / "alpaca")
    llamaq, webq = tmp_path / "llamaq", tmp_path / "webq"
    write_parquet(llamaq / "data" / "test-00000-of-00001.parquet", llama_rows(3), "audio")
    write_parquet(webq / "data" / "test-00000-of-00001.parquet", {
        "url": ["u0", "u1"], "question": ["Who wrote Hamlet?", "Where is Rome?"],
        "answers": [["Shakespeare", "William Shakespeare"], ["Italy"]],
        "audio": [hf_audio(audio_bytes(16000)) for _ in range(2)],
    }, "audio")
    env = {**os.environ, "VOICEASSISTANT_400K": str(va), "SPOKEN_ALPACA_GPT4": str(alpaca),
           "LLAMA_QUESTIONS": str(llamaq), "SPOKEN_WEB_QUESTIONS": str(webq)}
    cmd = ["./run.sh", "--stage", "1", "--stop_stage", "1", "--data_source", "real",
           "--local_data_opts", "--n_dev 2", "--datadir", str(tmp_path / "data"),
           "--expdir", str(tmp_path / "exp")]
    p = subprocess.run(cmd, cwd=RECIPE, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    from espnet_ext.data.kaldi_dir import read_kaldi_dir

    sets = {s: read_kaldi_dir(tmp_path / "data" / s) for s in ("train", "dev", "test_llamaq", "test_webq")}
    assert len(sets["dev"]) == 2 and len(sets["test_llamaq"]) == 3 and len(sets["test_webq"]) == 2
    train_ids = {u.utt_id for u in sets["train"]}
    assert any(i.startswith("voiceassistant_") for i in train_ids | {u.utt_id for u in sets["dev"]})
    assert any(i.startswith("spoken_alpaca_") for i in train_ids | {u.utt_id for u in sets["dev"]})
    assert [u.answers for u in sets["test_webq"]][0] == ["Shakespeare", "William Shakespeare"]


def test_adaptor_warmup_feeds_stage4(recipe_run, tmp_path):
    """--adaptor_warmup true: stage 2 trains the CTC warm-up, stage 4 starts from it."""
    tmp, _ = recipe_run
    conf = yaml.safe_load((RECIPE / "conf" / "warmup.yaml").read_text())
    conf["warmup_conf"].update(steps=4, eval_every=2, checkpoint_every=2, batch_size=4, warmup_steps=1)
    conf["alignment_conf"].update(num_utts=6, num_valid=2)
    (tmp_path / "warmup.yaml").write_text(yaml.safe_dump(conf))
    exp = tmp_path / "exp"
    cmd = ["./run.sh", "--stage", "2", "--stop_stage", "4", "--model_preset", "conf/model/tiny_random.yaml",
           "--datadir", str(tmp / "data"), "--dumpdir", str(tmp / "dump"), "--expdir", str(exp),
           "--train_configs", "conf/train_full.yaml", "--adaptor_warmup", "true",
           "--warmup_config", str(tmp_path / "warmup.yaml"),
           "--train_args", "--max_epoch 1 --num_iters_per_epoch 2 --batch_size 2 --scheduler_conf total_steps=2"]
    p = subprocess.run(cmd, cwd=RECIPE, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert (exp / "warmup" / "adaptor.pth").is_file()
    log = (exp / "full" / "train.log").read_text()
    assert f"Loading pretrained params from {exp}/warmup/adaptor.pth::adaptor" in log


def test_transcription_mix_feeds_stage4(recipe_run, tmp_path):
    """--transcription_mix N: stage 2 builds N synthetic utterances and the mixed dump,
    stage 4 trains on it with the task column."""
    tmp, _ = recipe_run
    conf = yaml.safe_load((RECIPE / "conf" / "warmup.yaml").read_text())
    conf["alignment_conf"].update(num_valid=1, num_words=50, batch_size=4)
    (tmp_path / "warmup.yaml").write_text(yaml.safe_dump(conf))
    exp = tmp_path / "exp"
    cmd = ["./run.sh", "--stage", "2", "--stop_stage", "4", "--preset", "full",
           "--model_preset", "conf/model/tiny_random.yaml",
           "--datadir", str(tmp / "data"), "--dumpdir", str(tmp_path / "dump"), "--expdir", str(exp),
           "--train_configs", "conf/train_full.yaml", "--transcription_mix", "5",
           "--warmup_config", str(tmp_path / "warmup.yaml"),
           "--train_args", "--max_epoch 1 --num_iters_per_epoch 2 --batch_size 4 --scheduler_conf total_steps=2"]
    p = subprocess.run(cmd, cwd=RECIPE, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    mix = tmp_path / "dump" / "train_mix"
    tasks = (mix / "task").read_text().split()
    assert tasks.count("transcribe") == 4 and tasks.count("qa") == 6  # 5 synthesised, 1 held out
    train_cmd = (exp / "full" / "train.sh.cmd").read_text().replace("\\,", ",")  # printf %q
    assert f"{mix}/task,task,indexed_text" in train_cmd and f"{mix}/llm_len.speech" in train_cmd
    assert (exp / "full" / "valid.loss.best.pth").is_file()


def _otf_preset(tmp: Path) -> Path:
    """conf/model/tiny_random.yaml encoding on the fly (encoder_conf.cache_features: false)."""
    conf = yaml.safe_load((RECIPE / "conf" / "model" / "tiny_random.yaml").read_text())
    conf["train_overlay"] = str((RECIPE / "conf" / "demo_overlay.yaml").resolve())
    conf["encoder_conf"]["cache_features"] = False
    path = tmp / "tiny_random_otf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def test_stages_2_to_6_encode_on_the_fly(recipe_run, tmp_path):
    """A model preset with encoder_conf.cache_features: false: stage 2 writes no features,
    training reads wav.scp as speech, and stages 3-6 (importance, Table 1 with its speech
    row, decoding, scoring, analysis) run on the audio; the recipe preset's warm-up is skipped."""
    tmp, _ = recipe_run
    dump, exp = tmp_path / "dump", tmp_path / "exp"
    cmd = ["./run.sh", "--stage", "2", "--stop_stage", "6", "--model_preset", str(_otf_preset(tmp_path)),
           "--datadir", str(tmp / "data"), "--dumpdir", str(dump), "--expdir", str(exp),
           "--results_md", str(tmp_path / "RESULTS.md"), "--cascade", "false",
           "--train_configs", "conf/train_full.yaml",
           "--train_args", "--max_epoch 1 --num_iters_per_epoch 2 --batch_size 2 --scheduler_conf total_steps=2"]
    p = subprocess.run(cmd, cwd=RECIPE, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert "encodes on the fly (encoder_conf.cache_features: false): no adaptor warm-up" in p.stderr
    assert not list(dump.rglob("enc_feats*")) and not (exp / "warmup").exists()
    assert json.loads((dump / "train" / "dump_report.json").read_text())["cache_features"] is False
    train = (exp / "full" / "train.sh.cmd").read_text().replace("\\,", ",")
    assert f"{dump}/train/wav.scp,speech,sound" in train and "enc_feats" not in train
    assert yaml.safe_load((exp / "full" / "config.yaml").read_text())["encoder_conf"]["cache_features"] is False
    for s in ("test_llamaq", "test_llamaq_unseen"):
        assert json.loads((exp / "full" / f"decode_{s}_speech" / "score.json").read_text())["n"] == 6
    table1 = json.loads((exp / "importance/full/table1.json").read_text())["table"]
    assert list(table1) == ["text", "speech"]  # Full-FT's speech row: the encoder ran on the audio
    assert "| Full-FT | " in (tmp_path / "RESULTS.md").read_text()


def test_on_the_fly_refuses_the_cached_feature_additions_and_dumps_of_the_other_mode(tmp_path):
    preset = str(_otf_preset(tmp_path))
    p = _quick(*NO_STAGES, "--model_preset", preset, "--adaptor_warmup", "true", "--expdir", str(tmp_path / "e1"))
    assert p.returncode == 1 and "--adaptor_warmup true needs cached encoder features" in p.stderr, p.stderr
    p = _quick(*NO_STAGES, "--model_preset", preset, "--transcription_mix", "5", "--expdir", str(tmp_path / "e2"))
    assert p.returncode == 1 and "--transcription_mix needs cached encoder features" in p.stderr, p.stderr
    opts = _fake_stage2(tmp_path)  # cached-feature stand-ins
    dump = tmp_path / "dump"
    p = _quick("--stage", "4", "--stop_stage", "4", "--preset", "full", "--model_preset", preset, *opts)
    assert p.returncode == 1 and _needs(4, dump / "dev/dump_report.json", 2) in p.stderr, p.stderr
    for s in ("train", "dev"):
        (dump / s / "dump_report.json").write_text(json.dumps({"cache_features": True}))
    p = _quick("--stage", "4", "--stop_stage", "4", "--preset", "full", "--model_preset", preset, *opts)
    assert p.returncode == 1, p.stderr
    assert (f"run.sh: stage 4 needs {dump}/dev made with encoder_conf.cache_features false ({preset}), "
            "but it was made with true") in p.stderr, p.stderr
    assert "==== Stage" not in p.stderr
