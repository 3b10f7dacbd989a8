"""Scoring of decode dirs and the generated RESULTS.md (hand-written hyps and references)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import REPO

from espnet_ext.data.kaldi_dir import DataError
from espnet_ext.eval.results import collect_summary, render_results_md, score_decode_dir
from espnet_ext.tasks.systems import SystemInfo, write_system

REFS = {
    "u1": ["Paris"],
    "u2": ["7"],
    "u3": ["cat"],
    "u4": ["Mars"],
    "u5": ["New York", "NYC"],
}
#                                                  has_answer  contain
HYPS = {
    "u1": "The capital of France is Paris.",      # yes         yes
    "u2": "There are seven days in a week.",      # no          yes (seven → 7)
    "u3": "It belongs to a category.",            # no          yes (substring)
    "u4": "",                                     # no          no  (empty hyp)
    "u5": "I think it is new york city",          # yes         yes
}


def _write_refs(d: Path, refs=REFS) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "answer").write_text("".join(f"{u} {json.dumps(r)}\n" for u, r in refs.items()))
    return d


def _write_hyps(d: Path, hyps=HYPS) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "hyp").write_text("".join(f"{u} {h}\n".replace(" \n", "\n") for u, h in hyps.items()))
    return d


def test_score_decode_dir_both_matchers(tmp_path):
    refs = _write_refs(tmp_path / "dump" / "test")
    dec = _write_hyps(tmp_path / "exp" / "full" / "decode_test_text")
    result = score_decode_dir(dec, refs)
    assert result == {
        "n": 5,
        "has_answer": {"n_correct": 2, "accuracy": 40.0},
        "contain": {"n_correct": 4, "accuracy": 80.0},
    }
    assert json.loads((dec / "score.json").read_text()) == result
    rows = [line.split("\t") for line in (dec / "score_detail.tsv").read_text().splitlines()]
    assert rows[0][:3] == ["utt_id", "has_answer", "contain"]
    marks = {r[0]: (r[1], r[2]) for r in rows[1:]}
    assert marks == {"u1": ("1", "1"), "u2": ("0", "1"), "u3": ("0", "1"), "u4": ("0", "0"),
                     "u5": ("1", "1")}
    assert rows[4][3] == "" and json.loads(rows[5][4]) == ["New York", "NYC"]


def test_score_decode_dir_missing_hyp_names_utt(tmp_path):
    refs = _write_refs(tmp_path / "dump" / "test")
    dec = _write_hyps(tmp_path / "dec", {u: h for u, h in HYPS.items() if u != "u3"})
    with pytest.raises(DataError, match="u3"):
        score_decode_dir(dec, refs)
    assert not (dec / "score.json").exists()


def _fake_exp(tmp_path: Path) -> Path:
    """noft: T2T only; full: T2T + S2T on one test set, with one decode report."""
    refs = _write_refs(tmp_path / "dump" / "test")
    exp = tmp_path / "exp"
    hyps_by_dir = {
        # correct of 5 (has_answer / contain)
        "noft/decode_test_text": {**HYPS, "u1": "I do not know."},         # 1 / 3
        "full/decode_test_text": HYPS,                                        # 2 / 4
        "full/decode_test_speech": {**HYPS, "u5": "Boston", "u2": "Seven."},  # 1 / 3
    }
    for sub, hyps in hyps_by_dir.items():
        score_decode_dir(_write_hyps(exp / sub, hyps), refs)
    (exp / "full" / "decode_test_speech" / "decode_report.json").write_text(json.dumps({
        "n_utts": 5, "n_new_tokens": 40, "seconds": 2.5, "seconds_per_utt": 0.5,
        "batch_size": 4, "max_new_tokens": 64, "data_dir": "dump/test", "world_size": 1}))
    (exp / "noft" / "decode_junk").mkdir()  # ignored: not decode_<set>_<modality>
    write_system(exp / "full", SystemInfo("Full-FT", "full_ft"))  # what stage 4's composer writes
    write_system(exp / "lora", SystemInfo("LoRA", "lora", lora_rank=8))
    return exp


def test_collect_summary_and_table2(tmp_path):
    exp = _fake_exp(tmp_path)
    summary = collect_summary(exp, ["noft", "full", "lora"])
    assert list(summary["systems"]) == ["noft", "full"]  # lora has no decode dirs
    assert set(summary["systems"]["noft"]["test"]) == {"text"}
    assert summary["systems"]["full"]["test"]["speech"]["has_answer"] == {"n_correct": 1, "accuracy": 20.0}
    # per-question outcomes in utterance-id order (u1..u5), for the paired tests
    # speech: u1 right by both; "Seven." and "category" right by contain only; u4, u5 wrong
    assert summary["correct"]["full"]["test"]["speech"] == {"has_answer": "10000", "contain": "11100"}
    assert summary["correct"]["noft"]["test"]["text"]["has_answer"].count("1") == 1
    assert summary["decode"] == {"full": {"decode_test_speech": {
        "n_utts": 5, "n_new_tokens": 40, "seconds": 2.5, "seconds_per_utt": 0.5,
        "batch_size": 4, "max_new_tokens": 64}}}

    summary["meta"] = {"date": "2025-01-01", "commit": "abc123"}
    summary["stage_times"] = {"stage 4": 10.0, "stage 5": 2.5}
    md = render_results_md(summary)
    lines = md.splitlines()
    assert lines[0].startswith("<!-- Generated") and "- commit: `abc123`" in lines
    has = lines.index("### `has_answer`")
    assert lines[has + 2 : has + 6] == [
        "| System | test T2T | test S2T |",
        "|---|---:|---:|",
        "| No-FT | 20.0 | - |",
        "| Full-FT | 40.0 | 20.0 |",
    ]
    assert lines[has + 7] == ("Matcher: `has_answer` (test: 5 questions).  95 % binomial confidence "
                              "half-width of one accuracy, in points: test ±43.8 at 50 %, ±31.3 at 15 %.")
    con = lines.index("### `contain`")
    assert lines[con + 4 : con + 6] == ["| No-FT | 60.0 | - |", "| Full-FT | 80.0 | 60.0 |"]
    assert "| Full-FT | decode_test_speech | 5 | 0.500 | 40 | 4 | 64 |" in lines
    assert "| total | 12.5 (0.2 min) |" in lines
    assert md.endswith("\n") and not md.endswith("\n\n")


def test_render_results_md_is_deterministic(tmp_path):
    summary = collect_summary(_fake_exp(tmp_path), ["noft", "full"])
    md = render_results_md(summary)
    assert render_results_md(summary) == md
    # a summary.json round trip (what make_results --from_summary reads) renders the same
    assert render_results_md(json.loads(json.dumps(summary, indent=2))) == md
    # rendering reads nothing but the dict: the exp dir can be gone
    import shutil

    shutil.rmtree(tmp_path / "exp")
    assert render_results_md(json.loads(json.dumps(summary))) == md


def test_rank_ablation_table_only_with_rank_systems(tmp_path):
    summary = collect_summary(_fake_exp(tmp_path), ["noft", "full"])
    md = render_results_md(summary)  # no rank systems: the section gives the command instead
    assert "| Rank |" not in md and "conf/train_lora_r16.yaml conf/train_lora_r24.yaml" in md
    full = summary["systems"]["full"]
    summary["systems"] |= {"lora_r16": full, "lora_r8": {"test": {"text": full["test"]["text"]}},
                           "impanchor": full}
    summary["system_info"] |= {"lora_r16": {"name": "LoRA r=16", "role": "lora", "lora_rank": 16},
                               "lora_r8": {"name": "LoRA r=8", "role": "lora", "lora_rank": 8},
                               "impanchor": {"name": "ImpAnchor (ours)", "role": "anchor"}}
    lines = render_results_md(summary).splitlines()
    assert "| ImpAnchor (ours) | 40.0 | 20.0 |" in lines and "| LoRA r=16 | 40.0 | 20.0 |" in lines
    start = lines.index("## LoRA rank ablation (Table 3 analogue)")
    has = lines.index("### `has_answer`", start)
    assert lines[has + 2 : has + 6] == [  # sorted by rank, not by tag
        "| Rank | System | test T2T | test S2T |", "|---:|---|---:|---:|", "| 8 | LoRA r=8 | 40.0 | - |",
        "| 16 | LoRA r=16 | 40.0 | 20.0 |"]


RECIPE = REPO / "egs2" / "speechimp"
# committed ones: not under an exp dir (exp/, or another --expdir such as exp_strong/)
COMMITTED_RESULTS = sorted(p for p in RECIPE.glob("**/RESULTS.md")
                           if not any(part.startswith("exp") for part in p.relative_to(RECIPE).parts[:-1]))


def test_every_committed_results_md_has_its_summary():
    assert COMMITTED_RESULTS, "egs2/speechimp/RESULTS.md is missing"
    for md in COMMITTED_RESULTS:
        assert md.with_suffix(".json").is_file(), f"{md} has no RESULTS.json beside it"


@pytest.mark.parametrize("md", COMMITTED_RESULTS, ids=lambda p: str(p.parent.name))
def test_committed_results_md_is_generated_from_committed_summary(md, tmp_path):
    """Each committed RESULTS.md (the quick preset's, results_full/'s) is exactly what
    make_results renders from the RESULTS.json beside it (both written by run.sh stage 6):
    the committed tables were not edited by hand."""
    from espnet_ext.bin import make_results

    out = tmp_path / "RESULTS.md"
    make_results.main(["--from_summary", str(md.with_suffix(".json")), "--out_md", str(out)])
    assert out.read_text(encoding="utf-8") == md.read_text(encoding="utf-8")
    summary = json.loads(md.with_suffix(".json").read_text())
    assert summary["meta"]["commit"] and summary["meta"]["date"] and summary["stage_times"]
    # the figures the summary links exist next to it
    for rel in summary.get("analysis", {}).get("figures", {}).values():
        assert (md.parent / rel).is_file(), rel


def test_results_md_shows_null_ranges_line_overlap_and_zeroed_shares():
    # the committed summary plus the fields of the seeded null baselines, the Δθ/importance
    # line overlap, the speech-input report names and Table 1's exact zeroed shares
    summary = json.loads((REPO / "egs2" / "speechimp" / "RESULTS.json").read_text())
    a = summary["analysis"]
    a["config"]["n_null"] = 20
    a["rank_clustering"]["base"]["all"].update({"null_lo": 0.9, "null_hi": 1.12, "p_null": 0.0, "n_null": 20})
    a["rank_clustering"]["full:speech"] = {"all": {"ratio": 2.5, "null_lo": 0.9, "null_hi": 1.1, "p_null": 0.0,
                                                   "n_matrices": 210}}
    a["rank_clustering_names"] = {"full:speech": "Full-FT (speech input)"}
    a["change"]["lora"]["line_overlap"] = {"all": {"overlap": 0.4, "random_overlap": 0.05, "ratio": 8.0,
                                                   "null_lo": 0.5, "null_hi": 1.6, "p_null": 0.0}}
    t = summary["table1"]["full"]
    t["zeroed_fraction"] = {m: {"top": 0.03, "bottom": 0.0312, "random": 0.0299} for m in t["table"]}
    t["masks_from"] = {m: m for m in t["table"]}
    md = render_results_md(summary)
    assert "| all: null 2.5-97.5 % | P(null ≥ all) |" in md and "| 0.90-1.12 | 0.00 |" in md
    assert "| Full-FT (speech input) | " in md and "mean share of 20 seeded random sets" in md
    assert "| Δθ lines of | all | all: null 2.5-97.5 % |" in md and "| 8.00 | 0.50-1.60 | 0.00 |" in md
    assert "speech row ← speech input" in md and "bottom 3.120%" in md
