"""The stage-6 importance analysis (paper §2.3 and §3.3): Fig. 1–4 plus their numbers.

For every trained system ``exp/<tag>`` (``config.yaml`` + checkpoint):

1. textual importance on the same utterances as the base report
   (``exp/importance/<tag>/``, with the Table-1 check for the systems in
   ``deactivation.roles`` when an eval dir is given), plus speech-input importance on the
   same utterances for the systems in ``analysis.speech_roles`` and for a Table 1 with a
   speech row (``exp/importance/<tag>/speech/``), redone only when the model files or
   options changed;
2. the parameter change against the base model's effective weights (Fig. 4 maps of one
   layer, row/column concentration of every matrix's top-5 % |Δ|, the overlap of its top
   rows/columns with the base importance's, per-layer ‖Δ‖/‖θ‖);

then, over all systems:

3. the layer-wise distribution shift against the base (Fig. 2–3 combined, shift table);
4. rank clustering (Fig. 1 maps of a few layers: the base's textual importance and, as
   the paper compares on its speech LLM, Full-FT's speech- and text-input importance) and
   the concentration of every report's top-5 % sets against seeded random baselines.

Outputs in ``out_dir`` (``exp/results``): ``figures/{fig1_rank_clustering,
fig2_layer_shift_text, fig4_param_change}.png``, ``analysis.json`` (everything RESULTS.md
shows) and ``analysis_detail.json`` (per-matrix numbers).  A finished analysis of the
same inputs is not redone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import torch

from espnet_ext.analysis.score import SPEECH_REPORT, is_scored, report_stamp, run_importance
from espnet_ext.analysis.settings import AnalysisConfig, load_importance_config
from espnet_ext.importance.change import analyze_change
from espnet_ext.importance.layout import DecoderLayout
from espnet_ext.importance.params import MODULE_TYPES, effective_weights, num_layers
from espnet_ext.importance.report import load_scores
from espnet_ext.importance.shift import layer_curves, plot_layer_shift, shift_table
from espnet_ext.importance.structure import (
    matrix_concentration,
    plot_grid,
    rank_clustering_maps,
    summarize_concentration,
)
from espnet_ext.tasks.systems import BASE_MODEL_NAME, read_systems
from espnet_ext.utils.atomic import atomic_write_text
from espnet_ext.utils.stamps import canonical, has_stamp, sha256_of

logger = logging.getLogger(__name__)

FIGURES = {
    "fig1": "fig1_rank_clustering.png",
    "fig2": "fig2_layer_shift_text.png",
    "fig4": "fig4_param_change.png",
}
ANALYSIS_FILE = "analysis.json"
DETAIL_FILE = "analysis_detail.json"


def report_concentration(scores: Dict[str, torch.Tensor], conf: AnalysisConfig) -> Dict[str, Dict[str, float]]:
    """Concentration of the top-``top_fraction`` set of every scored matrix."""
    return {n: matrix_concentration(s, conf.top_fraction, conf.line_fraction, conf.seed, conf.n_null)
            for n, s in scores.items() if s.dim() == 2}


def system_change(
    base_w: Mapping[str, torch.Tensor], tuned_w: Mapping[str, torch.Tensor], conf: AnalysisConfig,
    change_layer: int, base_scores: Optional[Mapping[str, torch.Tensor]] = None,
    layout: Optional[DecoderLayout] = None,
) -> tuple:
    """Step 2 for one system: ``(summary, per-matrix detail, Fig. 4 maps of change_layer)``
    of :func:`~espnet_ext.importance.change.analyze_change`."""
    types = layout.module_types if layout is not None else MODULE_TYPES
    stats, maps = analyze_change(base_w, tuned_w, change_layer, types, conf.top_fraction, conf.line_fraction,
                                 conf.seed, conf.n_null, base_scores, layout)
    detail = {"concentration": stats.pop("concentration_per_matrix"),
              "line_overlap": stats.pop("line_overlap_per_matrix", {})}
    return stats, detail, maps


SPEECH_SUFFIX = ":speech"  # report key of a system's speech-input importance ("full:speech")


def run_analysis(
    exp_dir: str | Path,
    systems: Sequence[str],
    importance_config: str | Path,
    base_model_config: str | Path,
    data_dir: str | Path,
    eval_dir: Optional[str | Path] = None,
    checkpoint: str = "valid.loss.best.pth",
    out_dir: Optional[str | Path] = None,
    device: str = "cpu",
    overwrite: bool = False,
    sharding=None,
) -> dict:
    """Score every system, then write figures and ``analysis.json`` (see module docstring).

    ``sharding`` (a :class:`~espnet_ext.train.sharding.ShardingConfig`, under torchrun):
    each system's report and Table 1 are computed on its FSDP2 shards; its whole weights
    for the parameter-change analysis are taken on the CPU before it is sharded."""
    from espnet_ext.inference.speechllm import load_model

    exp_dir = Path(exp_dir)
    out_dir = Path(out_dir) if out_dir is not None else exp_dir / "results"
    settings = load_importance_config(importance_config)
    scoring, deactivation, conf = settings.scoring, settings.deactivation, settings.analysis
    infos = read_systems(exp_dir, systems)
    base_report = exp_dir / "importance" / "base"
    if not (base_report / "summary.json").is_file():
        raise FileNotFoundError(f"no base importance report at {base_report} (run stage 3 first)")
    models = {}
    for tag in systems:
        cfg, ckpt = exp_dir / tag / "config.yaml", exp_dir / tag / checkpoint
        for f in (cfg, ckpt):
            if not f.exists():
                raise FileNotFoundError(f"system {tag}: {f} is missing (train it in stage 4)")
        deact = deactivation if eval_dir and infos[tag].role in deactivation.roles else None
        speech = infos[tag].role in conf.speech_roles
        models[tag] = (cfg, ckpt, deact, report_stamp(cfg, ckpt, scoring, data_dir, deact, eval_dir, speech),
                       speech)

    stamp = canonical({
        "systems": list(systems), "reports": {t: m[3] for t, m in models.items()},
        "base_report": sha256_of(base_report / "summary.json"), "analysis": dataclasses.asdict(conf),
        "base_model_config": sha256_of(base_model_config),
    })
    done = out_dir / ANALYSIS_FILE
    if not overwrite and has_stamp(done, stamp):
        old = json.loads(done.read_text())
        if (all(is_scored(exp_dir / "importance" / t, m[3]) for t, m in models.items())
                and all((out_dir / f).is_file() for f in old.get("figures", {}).values())):
            logger.info("%s is up to date; skipping (--overwrite true to redo)", done)
            return old

    # 1-2. score every system; parameter change against the base weights
    base_model = load_model(base_model_config, None, device)
    base_w = {n: w.cpu() for n, w in effective_weights(base_model, scoring.groups).items()}
    del base_model
    shapes = {n: w.shape for n, w in base_w.items()}
    base_scores = load_scores(base_report, expected_shapes=shapes)
    n_layers = num_layers(base_w)
    change_layer = conf.pick_change_layer(n_layers)
    change, change_detail, change_maps = {}, {}, []
    for tag, (cfg, ckpt, deact, rstamp, speech) in models.items():
        model = load_model(cfg, ckpt, "cpu" if sharding is not None else device)
        report = exp_dir / "importance" / tag
        # sharded: the whole weights before sharding replaces them (the CPU copies stay intact)
        tuned_w = ({n: w.cpu() for n, w in effective_weights(model, scoring.groups).items()}
                   if sharding is not None else None)
        if overwrite or not is_scored(report, rstamp):
            logger.info("scoring %s (%s) -> %s", tag, ckpt, report)
            run_importance(model, data_dir, report, scoring, deact, eval_dir,
                           provenance={"model_config": str(cfg), "model_file": str(ckpt), "stamp": rstamp},
                           score_speech=speech, sharding=sharding, device=torch.device(device))
        if tuned_w is None:
            tuned_w = {n: w.cpu() for n, w in effective_weights(model, scoring.groups).items()}
        del model
        change[tag], change_detail[tag], maps = system_change(base_w, tuned_w, conf, change_layer, base_scores)
        del tuned_w
        change_maps.append(maps)

    # 3-4. shift, rank clustering, figures and analysis.json
    reports = {"base": base_report, **{t: exp_dir / "importance" / t for t in systems}}
    names = {"base": BASE_MODEL_NAME, **{t: infos[t].name for t in systems}}
    speech_tags = [t for t in systems if models[t][4] or (models[t][2] and "speech" in models[t][2].modalities)]
    return write_analysis(out_dir, systems, reports, {t: exp_dir / "importance" / t / SPEECH_REPORT
                                                      for t in speech_tags},
                          names, base_scores, shapes, n_layers, change, change_detail, change_maps,
                          conf, change_layer, stamp)


def write_analysis(
    out_dir: str | Path, systems: Sequence[str], reports: Mapping[str, Path], speech_reports: Mapping[str, Path],
    names: Dict[str, str], base_scores: Dict[str, torch.Tensor], shapes: Mapping[str, Sequence[int]],
    n_layers: int, change: dict, change_detail: dict, change_maps: list, conf: AnalysisConfig,
    change_layer: int, stamp: object, layout: Optional[DecoderLayout] = None,
    fig2_title: str = "Textual importance per layer, before and after speech fine-tuning (Fig. 2-3)",
) -> dict:
    """Steps 3-4 of the analysis, shared by stage 6 and :mod:`espnet_ext.analysis.compare`.

    ``reports``: textual-importance report dirs, ``"base"`` first, then one per system
    (the shift curves, Fig. 2-3); ``speech_reports``: a system's speech-input report
    (``"<tag>:speech"`` in the outputs; Fig. 1 shows it beside the system's textual one,
    when there is one); ``names``: display names of ``"base"`` and every system;
    ``change``/``change_detail``/``change_maps``: step 2's parameter-change statistics
    and Fig. 4 maps (one row per system).  ``layout`` reads parameter names and gives the
    module types of Fig. 1 / Fig. 4 for a decoder that is not named like Llama.  Writes the
    figures, ``analysis_detail.json`` and ``analysis.json`` (returned).
    """
    out_dir = Path(out_dir)
    types = layout.module_types if layout is not None else MODULE_TYPES
    names = dict(names)
    # 3. layer-wise distribution shift (Fig. 2-3)
    curves = layer_curves(reports)
    fig_dir = out_dir / "figures"
    plot_layer_shift(curves, fig_dir / FIGURES["fig2"], fig2_title, names)

    # 4. rank clustering (Fig. 1) and the concentration of every report's top set; the
    # systems with a speech-input report add it ("<tag>:speech")
    speech_tags = list(speech_reports)
    clustering_reports = {**reports, **{f"{t}{SPEECH_SUFFIX}": d for t, d in speech_reports.items()}}
    clustering, clustering_detail = {}, {}
    fig1 = {"base": base_scores}
    for name, d in clustering_reports.items():
        scores = base_scores if name == "base" else load_scores(d, expected_shapes=shapes)
        clustering_detail[name] = report_concentration(scores, conf)
        clustering[name] = summarize_concentration(clustering_detail[name], layout=layout)
        tag = name.removesuffix(SPEECH_SUFFIX)
        if tag in speech_tags:  # Fig. 1 rows: speech and text input of the speech LLM
            fig1[name] = scores
    for t in speech_tags:
        names[f"{t}{SPEECH_SUFFIX}"] = f"{names[t]} (speech input)"
    layers = conf.pick_layers(n_layers)
    grid, row_labels = [], []
    order = ["base"] + [k for t in speech_tags for k in (f"{t}{SPEECH_SUFFIX}", t) if k in fig1]
    for key in order:
        g, labels = rank_clustering_maps(fig1[key], layers, types, conf.top_fraction, layout)
        grid += g
        source = names[key] if key.endswith(SPEECH_SUFFIX) else f"{names[key]} (text input)"
        row_labels += [f"{source}\n{lab}" for lab in labels]
    pct = f"{100 * conf.top_fraction:g}%"
    both = [names[t] for t in speech_tags if t in reports]
    speech_only = [names[t] for t in speech_tags if t not in reports]
    what = ("base textual importance"
            + (f" and the speech- and text-input importance of {', '.join(both)}" if both else "")
            + (f" and the speech-input importance of {', '.join(speech_only)}" if speech_only else ""))
    plot_grid(grid, row_labels, types, fig_dir / FIGURES["fig1"],
              f"Rank clustering of the {what}: top-{pct} vicinity maps (Fig. 1)",
              "share of the 3×3 vicinity in the top set (block mean)", conf.max_px)
    if change_maps:
        plot_grid(change_maps, [names[t] for t in systems], types, fig_dir / FIGURES["fig4"],
                  f"|θ_ft − θ_base| of layer {change_layer}, normalised per matrix (Fig. 4)",
                  "|Δθ| / max |Δθ|", conf.max_px)

    analysis = {
        "systems": list(systems),
        "config": dataclasses.asdict(conf),
        "n_layers": n_layers,
        "curves": curves,
        "shift": shift_table(curves),
        "rank_clustering": clustering,
        "rank_clustering_layers": layers,
        "rank_clustering_names": {k: names[k] for k in clustering},
        "change": change,
        "change_layer": change_layer,
        "figures": {k: f"figures/{v}" for k, v in FIGURES.items() if (fig_dir / v).is_file()},
        "stamp": stamp,
    }
    if layout is not None:
        analysis["layout"] = layout.to_json()
    atomic_write_text(out_dir / DETAIL_FILE, json.dumps(
        {"rank_clustering": clustering_detail, "change": change_detail}, indent=1) + "\n")
    done = out_dir / ANALYSIS_FILE
    atomic_write_text(done, json.dumps(analysis, indent=1) + "\n")
    logger.info("wrote %s and %s", done, fig_dir)
    return analysis
