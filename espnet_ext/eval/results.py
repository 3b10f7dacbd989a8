"""Scoring of decode directories and the generated ``RESULTS.md`` (recipe stage 6).

Layout read here (written by stage 5)::

    exp/<system>/decode_<test set>_<text|chat|speech>/hyp    # "<utt id> <answer>"
    dump/<test set>/answer                                     # JSON reference lists

``score_decode_dir`` writes ``score.json`` (both matchers) and ``score_detail.tsv`` next
to ``hyp``; ``collect_summary`` gathers every score into one JSON-able dict, and
``render_results_md`` turns that dict — and nothing else — into the markdown tables, so
a committed ``summary.json`` regenerates the committed ``RESULTS.md`` exactly.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Dict, List, Optional

from espnet_ext.data.kaldi_dir import DataError, parse_answers, read_table
from espnet_ext.eval.claims import render_claims, render_seed_spread, seed_spread
from espnet_ext.eval.qa_match import MATCHERS, score_predictions
from espnet_ext.inference.decode_dir import hyp_damage
from espnet_ext.tasks.systems import BASE_MODEL_NAME, read_systems
from espnet_ext.utils.atomic import atomic_open, atomic_write_text
from espnet_ext.utils.records import read_json

#: the jobs that write what this module reads, named when a file is damaged
SCORER = "recipe stage 6's QA scoring (espnet_ext.bin.score_qa)"
DECODER = "recipe stage 5's decoding (it redoes a damaged hyp or decode_report.json)"
IMPORTANCE = "the importance job (recipe stage 3 for the base model, stage 6 for a trained system)"
ANALYZER = "recipe stage 6's analysis (espnet_ext.bin.importance_analyze; it redoes a damaged analysis.json)"

#: decoded inputs: T2T in the speech LLM's prompt, T2T in the LLM's own chat template, S2T
MODALITY_NAMES = {"text": "T2T", "chat": "T2T chat", "speech": "S2T"}
_DECODE_RE = re.compile(r"^decode_(?P<set>.+)_(?P<modality>text|chat|speech)$")


def read_references(data_dir: str | Path) -> Dict[str, List[str]]:
    """``answer`` file of a data/dump dir → utt id → reference list."""
    table = read_table(Path(data_dir) / "answer")
    return {u: parse_answers(v, f"{data_dir}/answer: utterance {u}") for u, v in table.items()}


def score_decode_dir(decode_dir: str | Path, ref_dir: str | Path) -> dict:
    """Score ``decode_dir/hyp`` against ``ref_dir/answer`` with every matcher."""
    decode_dir = Path(decode_dir)
    hyp = decode_dir / "hyp"
    why = hyp_damage(decode_dir) if hyp.is_file() else None
    if why:
        raise DataError(f"{hyp}: {why}; {DECODER} writes it: rerun ./run.sh --stage 5 --stop_stage 5 (same options)")
    hyps = read_table(hyp, allow_empty_value=True)
    refs = read_references(ref_dir)
    try:
        scores = {m: score_predictions(hyps, refs, m) for m in MATCHERS}
    except DataError as e:
        raise DataError(f"{hyp} against {Path(ref_dir) / 'answer'}: {e}") from e
    result = {
        "n": len(refs),
        **{m: {"n_correct": s.n_correct, "accuracy": round(s.accuracy, 2)} for m, s in scores.items()},
    }
    with atomic_open(decode_dir / "score_detail.tsv") as f:
        f.write("utt_id\t" + "\t".join(MATCHERS) + "\thyp\treferences\n")
        for u in sorted(refs):
            marks = "\t".join(str(int(scores[m].correct[u])) for m in MATCHERS)
            f.write(f"{u}\t{marks}\t{hyps[u]}\t{json.dumps(refs[u], ensure_ascii=False)}\n")
    atomic_write_text(decode_dir / "score.json", json.dumps(result, indent=2) + "\n")
    return result


def read_correct(decode_dir: str | Path) -> Dict[str, str]:
    """Per-question correctness of a scored decode dir: matcher → a string of ``0``/``1``,
    one character per question in utterance-id order (from ``score_detail.tsv``)."""
    rows = [ln.split("\t") for ln in (Path(decode_dir) / "score_detail.tsv").read_text(
        encoding="utf-8").splitlines()]
    head, body = rows[0], sorted(rows[1:], key=lambda r: r[0])
    return {m: "".join(r[head.index(m)] for r in body) for m in MATCHERS}


def collect_summary(exp_dir: str | Path, systems: List[str]) -> dict:
    """``{"systems": {tag: {test_set: {modality: score}}}, "system_info": ..., "correct":
    {tag: {test_set: {modality: {matcher: "0110..."}}}}, "decode": {...}}`` for ``systems``;
    ``correct`` holds each question's outcome, for paired tests between systems."""
    exp_dir = Path(exp_dir)
    out: dict = {"systems": {}, "system_info": {t: dataclasses.asdict(i) for t, i in
                                                read_systems(exp_dir, systems).items()},
                 "correct": {}, "decode": {}}
    for tag in systems:
        for d in sorted((exp_dir / tag).glob("decode_*")):
            m = _DECODE_RE.match(d.name)
            if not m or not (d / "score.json").exists():
                continue
            score = read_json(d / "score.json", SCORER)
            out["systems"].setdefault(tag, {}).setdefault(m["set"], {})[m["modality"]] = score
            if (d / "score_detail.tsv").is_file():
                out["correct"].setdefault(tag, {}).setdefault(m["set"], {})[m["modality"]] = read_correct(d)
            rep = d / "decode_report.json"
            if rep.exists():
                r = read_json(rep, DECODER)
                out["decode"].setdefault(tag, {})[d.name] = {
                    k: r[k] for k in ("n_utts", "n_new_tokens", "seconds", "seconds_per_utt",
                                      "batch_size", "max_new_tokens")
                }
    for t1 in sorted((exp_dir / "importance").glob("*/table1.json")):
        out.setdefault("table1", {})[t1.parent.name] = read_json(t1, IMPORTANCE)
    analysis = exp_dir / "results" / "analysis.json"
    if analysis.is_file():  # stage 6's importance analysis (figure paths relative to exp/results)
        a = read_json(analysis, ANALYZER)
        out["analysis"] = {k: v for k, v in a.items() if k != "stamp"}
    spread = seed_spread(out)  # systems trained with several seeds (run.sh --seeds)
    if spread:
        out["seed_spread"] = spread
    return out


def publish_figures(summary: dict, exp_dir: str | Path, md_path: str | Path) -> dict:
    """Copy the analysis figures to ``<dir of md_path>/figures/`` and point the summary's
    figure paths there (relative to ``md_path``, as RESULTS.md links them)."""
    import shutil

    figures = summary.get("analysis", {}).get("figures", {})
    target = Path(md_path).resolve().parent / "figures"
    for key, rel in list(figures.items()):
        src = (Path(exp_dir) / "results" / rel).resolve()
        dst = target / Path(rel).name
        if src != dst:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        figures[key] = f"figures/{dst.name}"
    return summary


RANK_ABLATION_COMMAND = ('./run.sh --stage 4 --stop_stage 6 --train_configs "conf/train_full.yaml '
                         'conf/train_layerlr.yaml conf/train_lora.yaml conf/train_impanchor.yaml '
                         'conf/train_lora_r16.yaml conf/train_lora_r24.yaml"')


def system_names(summary: dict) -> Dict[str, str]:
    """Tag → display name (the ``system:`` section of each training config)."""
    return {t: info["name"] for t, info in summary.get("system_info", {}).items()}


def lora_ranks(summary: dict) -> List[tuple]:
    """``(rank, tag)`` of the LoRA systems, by rank (Table 3 rows)."""
    return sorted((int(i["lora_rank"]), t) for t, i in summary.get("system_info", {}).items()
                  if i.get("role") == "lora" and i.get("lora_rank") is not None and t in summary["systems"])


def has_rank_ablation(summary: dict) -> bool:
    """True when the run trained LoRA at two or more ranks."""
    return len({r for r, _ in lora_ranks(summary)}) >= 2


def _acc(score: Optional[dict], matcher: str) -> str:
    return "-" if score is None else f"{score[matcher]['accuracy']:.1f}"


def _columns(systems: Dict[str, dict]) -> List[tuple]:
    """``(set, modality)`` pairs that some system has a number for, by set, T2T (both
    prompts) first (a speaker-disjoint set, ``test_*_unseen``, has S2T only)."""
    sets = sorted({s for per in systems.values() for s in per})
    return [(s, m) for s in sets for m in MODALITY_NAMES if any(m in per.get(s, {}) for per in systems.values())]


def render_table2(summary: dict, matcher: str) -> str:
    """Table 2 analogue: T2T/S2T accuracy per test set for each system."""
    systems = summary["systems"]
    sets = sorted({s for per in systems.values() for s in per})
    cols = _columns(systems)
    head = "| System | " + " | ".join(f"{s} {MODALITY_NAMES[m]}" for s, m in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    rows = [head, sep]
    for tag, per in systems.items():
        cells = [_acc(per.get(s, {}).get(m), matcher) for s, m in cols]
        rows.append(f"| {system_names(summary).get(tag, tag)} | " + " | ".join(cells) + " |")
    n = {s: next(iter(per[s].values()))["n"] for per in systems.values() for s in per}
    note = ", ".join(f"{s}: {n[s]} questions" for s in sets)
    # binomial 95 % half-width at 50 % (its maximum) and at 15 %: how far apart two
    # systems must be before a difference means anything
    ci = ", ".join(f"{s} ±{_half_width(0.5, n[s]):.1f} at 50 %, ±{_half_width(0.15, n[s]):.1f} at 15 %"
                   for s in sets)
    return "\n".join(rows) + (f"\n\nMatcher: `{matcher}` ({note}).  95 % binomial confidence half-width of "
                               f"one accuracy, in points: {ci}.\n")


def _half_width(p: float, n: int) -> float:
    """Normal-approximation 95 % half-width of an accuracy ``p`` on ``n`` questions, in points."""
    return 100 * 1.96 * (p * (1 - p) / max(n, 1)) ** 0.5


def render_rank_ablation(summary: dict, matcher: str) -> str:
    """Table 3 analogue: T2T/S2T accuracy per test set for every LoRA system, by rank
    (empty string when fewer than two ranks were trained)."""
    if not has_rank_ablation(summary):
        return ""
    ranks = lora_ranks(summary)
    names = system_names(summary)
    per_rank = {tag: summary["systems"][tag] for _, tag in ranks}
    cols = _columns(per_rank)
    head = "| Rank | System | " + " | ".join(f"{s} {MODALITY_NAMES[m]}" for s, m in cols) + " |"
    rows = [head, "|---:|---|" + "---:|" * len(cols)]
    for rank, tag in ranks:
        cells = [_acc(per_rank[tag].get(s, {}).get(m), matcher) for s, m in cols]
        rows.append(f"| {rank} | {names.get(tag, tag)} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + f"\n\nMatcher: `{matcher}`.\n"


def _concentration_table(rows: Dict[str, dict], label: str, types: Optional[List[str]] = None) -> List[str]:
    """Markdown rows of mean concentration ratios per module type (see importance.structure);
    where the rows carry a null range (seeded random baselines), two more columns give the
    2.5-97.5 % range of the null mean ratio over all matrices and the share of the null at
    or above the observed ratio."""
    from espnet_ext.importance.params import MODULE_TYPES

    # the module types of the decoder's family (``types``; the Llama ones by default) in their
    # order ("other": matrices without a type, e.g. the adaptor, is not a column), "all" last
    cols = [t for t in (*(types or MODULE_TYPES), "all") if any(t in r for r in rows.values())]
    null = any("null_hi" in r.get("all", {}) for r in rows.values())
    extra = " | all: null 2.5-97.5 % | P(null ≥ all)" if null else ""
    out = [f"| {label} | " + " | ".join(cols) + extra + " |", "|---|" + "---:|" * (len(cols) + 2 * null)]
    for name, per in rows.items():
        cells = " | ".join(f"{per[c]['ratio']:.2f}" if c in per else "-" for c in cols)
        if null:
            a = per.get("all", {})
            cells += (f" | {a['null_lo']:.2f}-{a['null_hi']:.2f} | {a['p_null']:.2f}" if "null_hi" in a
                      else " | - | -")
        out.append(f"| {name} | " + cells + " |")
    return out


def render_analysis(a: dict, system_name: Dict[str, str]) -> List[str]:
    """The importance-analysis section (Fig. 1-4 with their numbers) of RESULTS.md."""
    from espnet_ext.importance.shift import render_shift_table

    names = {"base": BASE_MODEL_NAME, **system_name}
    types = a.get("layout", {}).get("module_types")  # a non-Llama decoder's own module types
    figs = a.get("figures", {})
    conf = a.get("config", {})
    pct = f"{100 * conf.get('top_fraction', 0.05):g}%"
    line_pct = f"{100 * conf.get('line_fraction', 0.05):g}%"
    lines = ["## Textual importance after fine-tuning (§2.3, §3.3; Fig. 1-4)", ""]
    if a.get("shift"):
        lines += ["### Layer-wise distribution shift against the base model (Fig. 2-3)", "",
                  render_shift_table(a["shift"], names),
                  "JS divergence (base 2) and Pearson r compare the normalised per-layer importance "
                  "curves; the peak-layer move is fine-tuned minus base (negative = earlier); the mass "
                  "ratio is total importance after / before.", ""]
    if "fig2" in figs:
        lines += [f"![Fig. 2-3: layer-wise textual importance]({figs['fig2']})", ""]
    if a.get("rank_clustering"):
        shown = {**names, **a.get("rank_clustering_names", {})}
        n_null = conf.get("n_null")
        baseline = (f"the mean share of {n_null} seeded random sets of equal size" if n_null else
                    "the same share for a random set of equal size")
        lines += ["### Rank clustering of the importance (Fig. 1)", "",
                  *_concentration_table({shown.get(k, k): v for k, v in a["rank_clustering"].items()},
                                        "Importance of", types), "",
                  f"Concentration ratio: share of each matrix's top-{pct} importance lying in its top-"
                  f"{line_pct} rows or columns, divided by {baseline} "
                  "(1 = scattered like noise; mean over the matrices of each type)."
                  + (" The null range is that of the mean ratio of the random sets themselves." if n_null else ""),
                  ""]
    if "fig1" in figs:
        lines += [f"![Fig. 1: rank clustering]({figs['fig1']})", ""]
    if a.get("change"):
        rows = {names.get(t, t): c["concentration"] for t, c in a["change"].items() if c.get("concentration")}
        lines += ["### Parameter changes (Fig. 4)", ""]
        if rows:
            lines += [*_concentration_table(rows, "Δθ of", types), "",
                      f"The same concentration ratio for the top-{pct} |θ_ft − θ_base| of each matrix "
                      "(LoRA: the merged update).", ""]
        overlap = {names.get(t, t): {"all": c["line_overlap"]["all"]} for t, c in a["change"].items()
                   if c.get("line_overlap", {}).get("all")}
        if overlap:
            lines += [*_concentration_table(overlap, "Δθ lines of", types), "",
                      f"Line overlap: share of the top-{line_pct} rows and columns of each matrix's top-{pct} "
                      f"|Δθ| that are also top-{line_pct} rows or columns of the base importance's top-{pct} "
                      "set, divided by the same share for random lines (1 = unrelated).", ""]
        lines += ["| System | mean ‖Δθ‖/‖θ‖ per layer | max (layer) |", "|---|---:|---:|"]
        for t, c in a["change"].items():
            rel = c["relative_change_per_layer"]
            top = max(range(len(rel)), key=rel.__getitem__) if rel else 0
            lines.append(f"| {names.get(t, t)} | {sum(rel) / max(len(rel), 1):.2e} | "
                         f"{max(rel, default=0):.2e} ({top}) |")
        lines.append("")
    if "fig4" in figs:
        lines += [f"![Fig. 4: parameter changes]({figs['fig4']})", ""]
    return lines


def render_results_md(summary: dict) -> str:
    """The whole ``RESULTS.md`` from a summary dict (see :func:`collect_summary`)."""
    meta = summary.get("meta", {})
    lines = ["<!-- Generated by `python -m espnet_ext.bin.make_results`; do not edit by hand. -->",
             "# speechimp results", ""]
    for key in ("date", "machine", "commit", "command", "all commands of this exp dir", "model_preset", "preset",
                "data"):
        if key in meta:
            lines.append(f"- {key}: `{meta[key]}`")
    lines += ["", "## Spoken QA accuracy (Table 2 analogue)", ""]
    for matcher in MATCHERS:
        lines += [f"### `{matcher}`", "", render_table2(summary, matcher)]
    lines += ["## LoRA rank ablation (Table 3 analogue)", ""]
    if has_rank_ablation(summary):
        for matcher in MATCHERS:
            lines += [f"### `{matcher}`", "", render_rank_ablation(summary, matcher)]
    else:
        lines += ["Not part of this run.  It is two more stage-4 systems on the same base:", "",
                  "```sh", RANK_ABLATION_COMMAND, "```", ""]
    if summary.get("table1"):
        from espnet_ext.importance.deactivate import render_table1

        lines += ["## Importance validation by deactivation (Table 1 analogue)", ""]
        for name, t in summary["table1"].items():
            lines += [f"### `{name}` ({t['n_utts']} held-out utterances of `{t['eval_dir']}`)", "",
                      render_table1(t["table"], t["fraction"], t["scope"], t.get("zeroed_fraction"),
                                    t.get("masks_from"))]
    if summary.get("analysis"):
        lines += render_analysis(summary["analysis"], system_names(summary))
    lines += render_claims(summary)
    lines += render_seed_spread(summary)
    if summary.get("decode"):
        lines += ["## Decoding cost", "",
                  "| System | decode dir | utts | s/utt | new tokens | batch | max_new_tokens |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for tag, per in summary["decode"].items():
            for name, r in per.items():
                lines.append(
                    f"| {system_names(summary).get(tag, tag)} | {name} | {r['n_utts']} | {r['seconds_per_utt']:.3f} "
                    f"| {r['n_new_tokens']} | {r['batch_size']} | {r['max_new_tokens']} |"
                )
        lines.append("")
    times = summary.get("stage_times")
    if times:
        lines += ["## Wall time per stage", "", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {s} | {t:.1f} |" for s, t in times.items()]
        total = sum(times.values())
        lines += [f"| total | {total:.1f} ({total / 60:.1f} min) |", ""]
        if summary.get("running_stage"):
            lines += [f"{summary['running_stage'].capitalize()} is counted up to writing this file "
                      "(only its last step, rendering, is missing).", ""]
    return "\n".join(lines).rstrip() + "\n"


def render_compare_md(summary: dict) -> str:
    """The markdown report of ``espnet_ext.bin.compare_checkpoints`` from its ``compare.json``
    (:func:`espnet_ext.analysis.compare.run_compare`): the inputs, Table 1 of every model
    and the stage-6 analysis section (Fig. 1-4 with their numbers)."""
    from espnet_ext.importance.deactivate import render_table1

    meta, names = summary["meta"], summary.get("names", {})
    a = summary.get("analysis", {})
    lines = ["<!-- Generated by `python -m espnet_ext.bin.compare_checkpoints`; do not edit by hand. -->",
             "# Importance before and after fine-tuning: checkpoint comparison", "",
             f"- base: `{meta['base']}`"]
    for name, t in meta["tuned"].items():
        kind = "peft adapter on the base" if t["kind"] == "adapter" else "model folder"
        lines.append(f"- {names.get(name, name)}: `{t['path']}` ({kind})")
    if meta.get("speech"):
        sp = meta["speech"]
        lines.append(f"- {names.get(sp['name'], sp['name'])} (speech input): `{sp['config']}` + `{sp['model_file']}`, "
                     f"features of `{sp['data_dir']}`")
    lines += [f"- data: `{meta['data']}` ({meta['data_format']}), {meta['n_utts']} utterances ({meta['subset']})",
              f"- prompt: {meta['prompt']}"]
    layout = a.get("layout")
    if layout:
        lines.append(f"- decoder: `{layout['family']}`, {layout['n_layers']} layers at `{layout['layers_path']}`, "
                     f"module types {', '.join(layout['module_types'])}")
    opts = meta.get("options", {})
    lines.append(f"- weights `{opts.get('torch_dtype')}`, mixed precision `{opts.get('mixed_precision')}`, "
                 f"device `{meta.get('device')}`")
    if meta.get("command"):
        lines.append(f"- command: `{meta['command']}`")
    lines.append("")
    if summary.get("table1"):
        lines += ["## Importance validation by deactivation (Table 1 analogue)", ""]
        for name, t in summary["table1"].items():
            lines += [f"### {names.get(name, name)} ({t['n_utts']} held-out utterances of `{t['eval_dir']}`)", "",
                      render_table1(t["table"], t["fraction"], t["scope"], t.get("zeroed_fraction"),
                                    t.get("masks_from"))]
    if a:
        lines += render_analysis(a, names)
    return "\n".join(lines).rstrip() + "\n"
