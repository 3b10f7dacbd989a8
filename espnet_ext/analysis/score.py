"""The importance job behind ``espnet_ext.bin.importance_score`` (stages 3 and 6).

Scores a model (the pretrained base LLM, or a trained exp dir's checkpoint) on a fixed
subset of a dump dir, writes the report, and runs the Table-1 deactivation check on a
held-out dump dir (a LoRA model's adapters are merged first, so "θ_i = 0" zeroes the
effective weight).  A report records a stamp of its inputs (:func:`report_stamp`) and
is redone only when they change.  The subset is chosen by seed from the utterance ids, so the base model
and every fine-tuned model are scored on exactly the same utterances.

The paper scores each input modality separately (§2.2, §2.3.1: "speech and text input"),
so when the Table-1 check has a speech row (or the caller asks for it, as stage 6 does
for Full-FT's Fig. 1) a second report of speech-input importance, on the same
utterances, is written to ``<output_dir>/speech/``; the speech row's masks come from it.

With a sharding config (an addition: ``--sharding_conf``, the paper-scale path) the model
is FSDP2-sharded over the ranks first (:func:`shard_for_analysis`) and eq. 2, the report
and Table 1 run on the shards (:mod:`espnet_ext.importance.sharded`): no rank holds a
whole gradient or score vector, and the report equals the one-process report within
float rounding (its masks are the one-process masks of the same scores).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from espnet_ext.analysis.settings import DeactivationConfig
from espnet_ext.importance.deactivate import deactivation_check, render_table1
from espnet_ext.importance.layout import DecoderLayout
from espnet_ext.importance.params import lora_layers, select_parameters
from espnet_ext.importance.report import report_damage, write_report
from espnet_ext.importance.scoring import ImportanceConfig, score_importance
from espnet_ext.importance.sharded import (
    deactivated_shards,
    perplexity_sharded,
    score_importance_sharded,
    sharded_masks,
    write_report_sharded,
)
from espnet_ext.train.batches import dump_batches, preprocessor_for, subset_ids
from espnet_ext.train.sharding import ShardingConfig, shard_model
from espnet_ext.utils.atomic import atomic_write_text
from espnet_ext.utils.conf import build_from_conf
from espnet_ext.utils.records import read_json_or_none
from espnet_ext.utils.stamps import canonical, file_identity, has_stamp

logger = logging.getLogger(__name__)

SPEECH_REPORT = "speech"  # <report dir>/speech/: the speech-input importance report


def wants_speech(deactivation: Optional[DeactivationConfig], eval_dir: Optional[str | Path],
                 score_speech: bool = False) -> bool:
    """True when a speech-input report is scored: asked for, or Table 1 has a speech row."""
    return bool(score_speech or (deactivation is not None and eval_dir and "speech" in deactivation.modalities))


def report_stamp(
    model_config: str | Path, model_file: Optional[str | Path], config: ImportanceConfig,
    data_dir: str | Path, deactivation: Optional[DeactivationConfig] = None,
    eval_dir: Optional[str | Path] = None, score_speech: bool = False,
) -> dict:
    """What a report is computed from; a report with the same stamp is not redone."""
    return canonical({
        "speech_report": wants_speech(deactivation, eval_dir, score_speech),
        "model_config": file_identity(model_config, content=True),
        "model_file": file_identity(model_file, content=False),
        "scoring": dataclasses.asdict(config), "data_dir": str(Path(data_dir).resolve()),
        "deactivation": dataclasses.asdict(deactivation) if deactivation and eval_dir else None,
        "eval_dir": str(Path(eval_dir).resolve()) if eval_dir else None,
    })


def is_scored(output_dir: str | Path, stamp: dict) -> bool:
    """True when ``output_dir`` holds a finished, undamaged report with this stamp (and its
    speech-input report, when the stamp asks for one, and its Table 1, when the stamp has a
    deactivation check)."""
    dirs = [Path(output_dir)] + ([Path(output_dir) / SPEECH_REPORT] if stamp.get("speech_report") else [])
    if not all(has_stamp(d / "summary.json", stamp, key=("meta", "stamp")) for d in dirs):
        return False
    for d in dirs:
        why = report_damage(d)
        if why:
            logger.warning("%s; redoing the report", why)
            return False
    # Table 1 is written after the report: a run killed in between has no (or a damaged) one
    return not stamp.get("deactivation") or isinstance(read_json_or_none(Path(output_dir) / "table1.json"), dict)


def sharding_config(conf: Optional[Dict[str, Any]], key: str = "--sharding_conf") -> Optional[ShardingConfig]:
    """The :class:`ShardingConfig` of a job's ``--sharding_conf`` (``None``: unsharded)."""
    return None if conf is None else build_from_conf(ShardingConfig, conf, key)


def shard_for_analysis(model: torch.nn.Module, sharding: ShardingConfig, groups, device: torch.device) -> None:
    """FSDP2-shard ``model`` in place for the sharded analysis, over every rank, on ``device``.

    First LoRA adapters are merged (eq. 2's θ and Table 1's "θ_i = 0" are the effective
    weight; the gradient of the merged weight is the base weight's) and only the scored
    parameters are left trainable (FSDP2 reduces gradients of trainable parameters only).
    The model may sit on the CPU: FSDP2 moves each layer to ``device`` as it shards it, so
    no device ever holds the whole model; the replicated speech encoder is moved whole.
    """
    from torch.distributed.device_mesh import init_device_mesh

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError("sharding_conf: the sharded analysis runs under torchrun with more than one process")
    for layer in lora_layers(model).values():
        layer.merge()
    scored = {id(p) for p in select_parameters(model, groups).values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in scored)
    if getattr(model, "encoder", None) is not None and not sharding.shard_encoder:
        model.encoder.to(device)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    shard_model(model, sharding, mesh=mesh)


def _shard(batches: List[dict]) -> List[dict]:
    """This rank's share of ``batches`` under torch.distributed (every batch when alone)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return batches[rank::world]  # gradient sums are all-reduced in score_importance
    return batches


def report_importance(
    model, make_batches: Callable[[str], List[dict]], output_dir: str | Path, config: ImportanceConfig,
    modalities: Sequence[str], data_dir: str | Path, deactivation: Optional[DeactivationConfig] = None,
    make_eval_batches: Optional[Callable[[str], List[dict]]] = None, eval_info: Optional[Dict[str, Any]] = None,
    provenance: Optional[Dict[str, Any]] = None, layout: Optional[DecoderLayout] = None,
    sharding: Optional[ShardingConfig] = None,
) -> dict:
    """Score ``model`` per input modality, write the report(s) and, optionally, Table 1.

    The first of ``modalities`` is ``config.modality`` (the report in ``output_dir``); a
    second, ``speech``, goes to ``<output_dir>/speech/``.  ``make_batches(modality)`` gives
    every batch of the scoring subset (each rank scores its share), ``make_eval_batches``
    the held-out batches of one Table-1 row (``deactivation.modalities``), ``eval_info``
    the record's ``eval_dir`` and ``n_utts``; ``data_dir`` names the scoring data in the
    report.  ``layout`` reads a decoder's parameter names when they are not the Llama
    pattern (:mod:`espnet_ext.importance.layout`).  Any data source and model that
    returns ``(loss, stats, weight)`` works: the recipe's dump dirs (:func:`run_importance`)
    and the text pairs of :mod:`espnet_ext.analysis.compare`.  ``sharding``: ``model`` is
    already sharded by :func:`shard_for_analysis` (with the Llama layout), and eq. 2, the
    report and Table 1 run on the shards.
    """
    output_dir = Path(output_dir)
    sharded = sharding is not None
    if sharded and layout is not None:
        raise ValueError("the sharded analysis reads the Llama parameter layout only (layout must be None)")
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    scores, summary = {}, {}
    for modality in modalities:
        conf = dataclasses.replace(config, modality=modality)
        out = output_dir if modality == config.modality else output_dir / SPEECH_REPORT
        t0 = time.perf_counter()
        batches = make_batches(modality)
        if sharded:  # every rank takes every world-th batch; the reduce-scatter sums them
            result = score_importance_sharded(model, batches, conf)
        else:
            result = score_importance(model, _shard(batches), conf, layout=layout)
        seconds = time.perf_counter() - t0
        meta = {
            "config": dataclasses.asdict(conf), "data_dir": str(data_dir), "n_utts": result.n_utts,
            "n_batches": result.n_batches, "mean_loss": result.mean_loss, "seconds": round(seconds, 2),
            **(provenance or {}),
        }
        # an earlier run's Table 1 goes with its report (it would not match this one)
        stale = ("table1.json", "table1.md") if out == output_dir else ()
        if sharded:  # every rank writes its rows; rank 0 the header, the summary and the rename
            meta["sharding"] = {**dataclasses.asdict(sharding), "world_size": torch.distributed.get_world_size()}
            s = write_report_sharded(out, result.scores, meta, dtype=conf.score_dtype, invalidates=stale)
        elif rank0:
            s = write_report(out, result.scores, meta, dtype=conf.score_dtype, invalidates=stale, layout=layout)
        else:
            s = {}
        if rank0:
            logger.info("%s importance of %d utts in %.1f s; layer sums %s", modality, result.n_utts, seconds,
                        ", ".join(f"{x:.3g}" for x in s["layer_sums"]))
        summary = summary or s
        scores[modality] = result.scores
    if "speech" not in modalities and rank0:  # a speech report of an earlier run no longer matches
        for stale in ("summary.json", "scores.safetensors"):
            (output_dir / SPEECH_REPORT / stale).unlink(missing_ok=True)
    if not rank0 and not sharded:
        return summary
    if deactivation is not None and make_eval_batches is not None:
        eval_batches = {m: make_eval_batches(m) for m in deactivation.modalities}
        # LoRA: zeroing θ_i must zero the *effective* weight, so the adapters are merged
        # into the base weights first (in place; the model computes the same function;
        # shard_for_analysis merged them before sharding)
        for layer in lora_layers(model).values():
            layer.merge()
        params = select_parameters(model, config.groups, layout)
        on_shards = dict(masks_fn=sharded_masks, zeroed_fn=functools.partial(deactivated_shards, model=model),
                         perplexity_fn=perplexity_sharded) if sharded else {}
        check = deactivation_check(model, params, scores, eval_batches,
                                   deactivation.fraction, deactivation.scope, deactivation.seed, **on_shards)
        if not rank0:
            return summary
        payload = {"table": check["table"], "fraction": deactivation.fraction, "scope": deactivation.scope,
                   **(eval_info or {}),
                   "zeroed_fraction": check["zeroed_fraction"], "masks_from": check["masks_from"]}
        md = render_table1(check["table"], deactivation.fraction, deactivation.scope,
                           check["zeroed_fraction"], check["masks_from"])
        atomic_write_text(output_dir / "table1.json", json.dumps(payload, indent=2) + "\n")
        atomic_write_text(output_dir / "table1.md", md)
        summary["table1"] = payload
        logger.info("Table 1:\n%s", md)
    return summary


def run_importance(
    model, data_dir: str | Path, output_dir: str | Path, config: ImportanceConfig,
    deactivation: Optional[DeactivationConfig] = None, eval_dir: Optional[str | Path] = None,
    provenance: Optional[Dict[str, Any]] = None, score_speech: bool = False,
    sharding: Optional[ShardingConfig] = None, device: Optional[torch.device] = None,
    utt_ids: Optional[Sequence[str]] = None, layout: Optional[DecoderLayout] = None,
) -> dict:
    """Score a speech LLM on a dump dir, write the report(s) and (optionally) the Table-1
    deactivation check (:func:`report_importance`).

    ``score_speech`` also writes the speech-input report (always done when Table 1 has a
    speech row; see the module docstring).  ``sharding``: shard the (unsharded) ``model``
    onto ``device`` (default: where it is) and run everything on the shards.  ``utt_ids``:
    score these utterances instead of the config's seeded subset of ``data_dir``."""
    if sharding is not None:
        shard_for_analysis(model, sharding, config.groups, device or next(model.parameters()).device)
    pre = preprocessor_for(model)
    device = next(model.parameters()).device
    ids = list(utt_ids) if utt_ids is not None else subset_ids(
        data_dir, config.subset_fraction, config.num_utts, config.seed)
    modalities = [config.modality]
    if wants_speech(deactivation, eval_dir, score_speech) and config.modality != "speech":
        modalities.append("speech")

    def batches(modality: str) -> List[dict]:
        return [b for _, b in dump_batches(data_dir, pre, modality, config.batch_size, ids, device=device)]

    make_eval, eval_info = None, None
    if deactivation is not None and eval_dir is not None:
        eval_ids = subset_ids(eval_dir, 1.0, deactivation.num_utts, deactivation.seed)
        eval_info = {"eval_dir": str(eval_dir), "n_utts": len(eval_ids)}

        def make_eval(modality: str) -> List[dict]:
            return [b for _, b in dump_batches(eval_dir, pre, modality, deactivation.batch_size, eval_ids,
                                               device=device)]

    return report_importance(model, batches, output_dir, config, modalities, data_dir, deactivation,
                             make_eval, eval_info, provenance, layout, sharding)
