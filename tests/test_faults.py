"""Damaged files between stages, and a full disk, in the jobs that are not the feature dump
or the checkpoint (those are in test_data_errors.py and test_checkpoint.py).

A file one stage writes and a later one reads can be truncated after the fact (a copy cut
short, a failing disk): each case here is either redone by the stage that writes it, or
stops the reader with an error naming the file and that stage, never an unrelated
traceback.  The SIGKILL trials of every stage job are in ``fault_trials.py``
(``make fault-trials``).
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from espnet_ext.data.kaldi_dir import DataError
from espnet_ext.utils.atomic import DiskFullError
from espnet_ext.utils.records import DamagedFileError

NAMES = ["llm.model.layers.0.mlp.up_proj.weight", "llm.model.layers.1.self_attn.q_proj.weight"]


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _report(out: Path, stamp: dict) -> dict:
    from espnet_ext.importance.report import write_report

    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(8, 6, generator=gen) for n in NAMES}
    write_report(out, scores, {"stamp": stamp})
    return scores


# ---- importance reports (stage 3 writes the base's, stage 6 every system's) -------------
@pytest.mark.parametrize("damaged", ["scores.safetensors", "summary.json"])
def test_a_damaged_importance_report_is_redone_and_named_to_its_readers(tmp_path, damaged):
    from espnet_ext.analysis.score import is_scored
    from espnet_ext.importance.report import load_scores, load_summary, report_damage

    stamp = {"model": "x", "deactivation": None}
    rep = tmp_path / "base"
    _report(rep, stamp)
    assert is_scored(rep, stamp) and report_damage(rep) is None
    _cut(rep / damaged)
    assert not is_scored(rep, stamp)  # stages 3 and 6 score it again
    why = report_damage(rep)
    assert str(rep / damaged) in why and "stage 3" in why
    # what stage 4 (Layer-LR, ImpAnchor) and stage 6 read: an error naming the file and the stage
    reader = load_scores if damaged == "scores.safetensors" else load_summary
    with pytest.raises(DamagedFileError, match="truncated") as e:
        reader(rep, conf_key="layer_lr_conf.importance_report")
    msg = str(e.value)
    assert msg.startswith("layer_lr_conf.importance_report: ") and str(rep / damaged) in msg and "stage 3" in msg


def test_a_report_without_its_table1_is_not_finished(tmp_path):
    """Table 1 is written after the report: a job killed in between (or a damaged table1.json)
    is redone; a new report removes the old Table 1 with the old summary."""
    from espnet_ext.analysis.score import is_scored
    from espnet_ext.importance.report import write_report

    stamp = {"model": "x", "deactivation": {"fraction": 0.03}, "eval_dir": "/dev"}
    rep = tmp_path / "full"
    scores = _report(rep, stamp)
    assert not is_scored(rep, stamp)
    (rep / "table1.json").write_text(json.dumps({"table": {}}) + "\n")
    assert is_scored(rep, stamp)
    _cut(rep / "table1.json")
    assert not is_scored(rep, stamp)
    (rep / "table1.json").write_text(json.dumps({"table": {}}) + "\n")
    write_report(rep, scores, {"stamp": stamp}, invalidates=("table1.json",))
    assert not (rep / "table1.json").exists() and not is_scored(rep, stamp)


# ---- decoding (stage 5) and QA scoring (stage 6) -----------------------------------------
def _decoded(tmp_path: Path, n: int = 3):
    from espnet_ext.data.kaldi_dir import Utterance, write_kaldi_dir

    refs = tmp_path / "dump" / "test"
    write_kaldi_dir(refs, [Utterance(f"s-{i}", "s", "x.wav", f"question {i}?", [f"answer {i}"]) for i in range(n)])
    dec = tmp_path / "exp" / "noft" / "decode_test_text"
    dec.mkdir(parents=True)
    stamp = {"model": "x"}
    (dec / "hyp").write_text("".join(f"s-{i} it is answer {i}\n" for i in range(n)))
    (dec / "decode_report.json").write_text(json.dumps({
        "n_utts": n, "n_new_tokens": 4 * n, "seconds": 1.0, "seconds_per_utt": 1.0 / n, "batch_size": 2,
        "max_new_tokens": 8, "stamp": stamp}) + "\n")
    return dec, refs, stamp


@pytest.mark.parametrize("cut", ["inside a line", "at a line end"])
def test_a_truncated_hyp_is_decoded_again_and_named_by_scoring(tmp_path, cut):
    from espnet_ext.eval.results import score_decode_dir
    from espnet_ext.inference.decode import is_decoded

    dec, refs, stamp = _decoded(tmp_path)
    assert is_decoded(dec, stamp) and score_decode_dir(dec, refs)["has_answer"]["n_correct"] == 3
    hyp = dec / "hyp"
    lines = hyp.read_text().splitlines(keepends=True)
    hyp.write_text("".join(lines[:2]) + (lines[2][:9] if cut == "inside a line" else ""))
    assert not is_decoded(dec, stamp)  # stage 5 decodes it again
    with pytest.raises(DataError, match="cut short" if cut == "inside a line" else "holds 2 hypotheses") as e:
        score_decode_dir(dec, refs)
    assert str(hyp) in str(e.value) and "stage 5" in str(e.value)
    # without a decode report to count against, the missing prediction names both files
    (dec / "decode_report.json").unlink()
    hyp.write_text("".join(lines[:2]))
    with pytest.raises(DataError, match="no prediction for utterance s-2") as e:
        score_decode_dir(dec, refs)
    assert str(hyp) in str(e.value) and str(refs / "answer") in str(e.value)


def test_decoding_journal_disk_full_keeps_the_decoded_batches(tmp_path, monkeypatch):
    from espnet_ext.inference import decode

    path = tmp_path / ".hyp.partial.rank0.jsonl"
    header = {"stamp": {"model": "x"}, "n_batches": 3}
    journal = decode.BatchJournal(path, header)
    journal.add(0, {"s-0": "paris"}, 2)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(decode.os, "fsync", no_space)
    with pytest.raises(DiskFullError, match="no space left on the device") as e:
        journal.add(1, {"s-1": "seven"}, 2)
    assert str(path) in str(e.value) and "1 batch(es) decoded before are kept" in str(e.value)
    journal.close(remove=False)
    monkeypatch.undo()
    again = decode.BatchJournal(path, header)  # the rerun: batch 0 kept (a torn line 1 would be dropped)
    assert sorted(again.done) in ([0], [0, 1]) and again.done[0]["hyps"] == {"s-0": "paris"}
    again.close(remove=True)


# ---- RESULTS.md and its inputs (stage 6) ---------------------------------------------------
def test_damaged_records_read_by_make_results_name_the_file_and_its_writer(tmp_path):
    from espnet_ext.bin import make_results
    from espnet_ext.eval.results import collect_summary, score_decode_dir
    from espnet_ext.tasks.systems import SystemInfo, read_system, write_system

    dec, refs, _ = _decoded(tmp_path)
    score_decode_dir(dec, refs)
    exp = tmp_path / "exp"
    assert collect_summary(exp, ["noft"])["systems"]["noft"]["test"]["text"]["n"] == 3
    cases = [(dec / "score.json", "score_qa"), (dec / "decode_report.json", "stage 5"),
             (exp / "importance" / "base" / "table1.json", "stage 3"),
             (exp / "results" / "analysis.json", "importance_analyze")]
    for path, writer in cases:
        path.parent.mkdir(parents=True, exist_ok=True)
        good = path.read_text() if path.exists() else json.dumps({"table": {}, "figures": {}}) + "\n"
        path.write_text(good[: len(good) // 2])
        with pytest.raises(DamagedFileError) as e:
            collect_summary(exp, ["noft"])
        assert str(path) in str(e.value) and writer in str(e.value), (path, str(e.value))
        path.write_text(good)
    summary = tmp_path / "RESULTS.json"
    summary.write_text('{"systems": {"noft": {"test": ')
    with pytest.raises(DamagedFileError, match=f"{summary}.*make_results"):
        make_results.main(["--from_summary", str(summary), "--out_md", str(tmp_path / "RESULTS.md")])
    assert not (tmp_path / "RESULTS.md").exists()
    write_system(exp / "full", SystemInfo("Full-FT", "full_ft"))
    _cut(exp / "full" / "system.json")
    with pytest.raises(DamagedFileError, match="stage 4"):
        read_system(exp, "full")


def test_damaged_done_records_mean_not_done(tmp_path):
    """The records that say a job is done (the dump's report, a decode's report, a converted
    model's marker): a damaged one means the job is redone."""
    from espnet_ext.convert.cache import MARKER_NAME
    from espnet_ext.convert.pretrained import _marker_source
    from espnet_ext.data.dump import read_dump_report
    from espnet_ext.utils.stamps import has_stamp

    for name in ("dump_report.json", "decode_report.json"):
        (tmp_path / name).write_text('{"n_written": 3, "stamp": {"a"')
    assert read_dump_report(tmp_path) is None
    assert not has_stamp(tmp_path / "decode_report.json", {"a": 1})
    (tmp_path / MARKER_NAME).write_text('{"source": "tiny-ra')
    assert _marker_source(tmp_path) is None
