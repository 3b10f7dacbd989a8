"""Bring your own checkpoints: the stage-6 analysis on any Hugging Face causal LMs.

An addition to the recipe.  Inputs: a base model folder, fine-tuned folders or peft
adapters on the base (``{name: path}``), and a text data source
(:mod:`espnet_ext.data.text_source`: a Kaldi-style ``text``/``answer`` dir, a JSONL of
prompt/response pairs, or plain text for the language-model loss); optionally a speech
LLM exp dir of this recipe for speech-input importance.  Outputs in ``out_dir``, the same
as stage 6's:

* ``importance/<name>/`` — eq. 2 importance of every model on the same utterances
  (``base`` first: its scores are computed once and every fine-tuned model is compared
  with them), each with the Table-1 deactivation check when held-out data is given;
  ``importance/<speech name>/speech/`` the speech LLM's speech-input importance;
* ``analysis.json``, ``analysis_detail.json``, ``figures/`` — the layer-wise shift
  (Fig. 2-3), rank clustering (Fig. 1) and parameter changes (Fig. 4), written by
  :func:`espnet_ext.analysis.analyze.write_analysis`, the code stage 6 runs;
* ``compare.json`` — the inputs and every number the markdown report shows
  (``RESULTS.md``, rendered by :func:`espnet_ext.eval.results.render_compare_md`);
* ``utt_list`` — the scored utterance ids.

Steps:

1. every fine-tuned folder is checked against the base before anything is loaded: the
   same config ``model_type`` and the same tensors, the first mismatching one named
   (:mod:`espnet_ext.models.hf_folder`); an adapter's factors must fit the base weights;
2. the utterances: a seeded subset of the data (``scoring.subset_fraction`` /
   ``num_utts`` / ``seed``, the recipe's rule), an explicit id list, or the subset of an
   existing report (the recipe's ``exp/importance/base``), so the scores are comparable;
3. the models one at a time on the device (the base, then each fine-tuned one): load,
   find the decoder layout from the model object (:mod:`espnet_ext.importance.layout`),
   score, Table 1, compare its effective weights with the base's tensor by tensor, free it;
4. the analysis over all reports.

Under ``torchrun`` every rank loads each model and scores its share of the batches (the
gradient sums are all-reduced, as in stages 3 and 6); rank 0 writes the reports, runs
Table 1 and the analysis.  A report whose inputs did not change is not scored again.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch

from espnet_ext.analysis.analyze import system_change, write_analysis
from espnet_ext.analysis.score import SPEECH_REPORT, is_scored, report_importance, report_stamp, run_importance
from espnet_ext.analysis.settings import (
    AnalysisConfig,
    DeactivationConfig,
    ImportanceFileConfig,
    load_importance_config,
)
from espnet_ext.data.kaldi_dir import DataError, read_table
from espnet_ext.data.text_source import TextItem, read_text_source, source_format
from espnet_ext.importance.layout import DecoderLayout, discover_layout
from espnet_ext.importance.params import LazyEffectiveWeights, select_parameters
from espnet_ext.importance.report import load_scores, load_summary
from espnet_ext.importance.scoring import ImportanceConfig
from espnet_ext.models.hf_folder import (
    CheckpointMismatch,
    check_adapter,
    check_same_architecture,
    is_adapter,
    natural_key,
)
from espnet_ext.models.text_lm import PROMPT_STYLES, load_text_lm
from espnet_ext.train.batches import pick_subset, subset_ids, text_batches
from espnet_ext.utils.atomic import atomic_write_text
from espnet_ext.utils.stamps import canonical, file_identity

logger = logging.getLogger(__name__)

COMPARE_FILE = "compare.json"
UTT_LIST = "utt_list"
BASE = "base"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclasses.dataclass
class CompareOptions:
    """How the checkpoints are loaded and prompted (an addition: the recipe loads its own)."""

    prompt: str = "own"  # own: the model's chat template, prompt alone as the user turn; recipe: LLaMA-Omni's
    data_format: str = "auto"  # auto | kaldi | jsonl | text (see espnet_ext.data.text_source)
    torch_dtype: str = "float32"  # dtype the models are loaded in (bf16 scores accumulate in fp32)
    mixed_precision: str = "none"  # none | bf16 | auto: bf16 autocast, as model_conf.mixed_precision
    attn_implementation: Optional[str] = None  # transformers attention backend; None = its default
    check_dtype: bool = True  # a tensor stored in another dtype than the base's is a mismatch
    share_prompt_prefix: str = "auto"  # compute as the speech LLM does (shared prompt-prefix cache, LM head
    # alone): auto = with the recipe prompt, where it reproduces stage 6 in any precision; true | false

    def __post_init__(self) -> None:
        if self.prompt not in PROMPT_STYLES:
            raise ValueError(f"--prompt must be one of {PROMPT_STYLES}, got {self.prompt!r}")
        if self.share_prompt_prefix not in ("auto", "true", "false"):
            raise ValueError(f"--share_prompt_prefix must be auto, true or false, got {self.share_prompt_prefix!r}")

    def shares_prefix(self) -> bool:
        """Whether prompt/response batches are computed with the shared prompt prefix."""
        return self.prompt == "recipe" if self.share_prompt_prefix == "auto" else self.share_prompt_prefix == "true"
        if self.torch_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"--torch_dtype must be float32, bfloat16 or float16, got {self.torch_dtype!r}")


@dataclasses.dataclass
class SpeechExp:
    """A speech LLM of this recipe (config + checkpoint) and the dump dir of its speech input."""

    config: str  # the exp dir's config.yaml
    model_file: str  # its checkpoint
    data_dir: str  # dump dir holding the scored utterances' encoder features
    name: str  # report key; a fine-tuned model of the same name gets Fig. 1 rows for both inputs


def _check_name(name: str, what: str) -> None:
    if not _NAME_RE.match(name) or name == BASE:
        raise ValueError(f"{what} {name!r}: names are [A-Za-z0-9_.-] and not {BASE!r}")


def _folder_identity(path: Optional[str | Path]) -> Optional[list]:
    """Every file of a folder (name, size, mtime): a rewritten checkpoint is rescored."""
    if path is None:
        return None
    p = Path(path).resolve()
    return [str(p)] + [file_identity(f, content=False)[1:] + [f.name] for f in sorted(p.iterdir()) if f.is_file()]


def _data_identity(path: str | Path, fmt: str) -> list:
    files = [Path(path) / n for n in ("text", "answer")] if fmt == "kaldi" else [Path(path)]
    return [file_identity(f, content=False) for f in files]


def read_utt_list(path: str | Path) -> List[str]:
    """Utterance ids, one per line (the first field: a Kaldi ``text`` file works too)."""
    ids = [line.split()[0] for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: no utterance ids")
    return ids


def report_subset(report_dir: str | Path) -> List[str]:
    """The utterance ids an importance report was scored on.

    A report of this job names its id list (``meta.utt_list``); a recipe report (stage 3's
    ``exp/importance/base``) records its dump dir and scoring options, from which the
    seeded subset is drawn again (run from the directory the recipe ran in, normally
    ``egs2/speechimp``, so that its relative ``data_dir`` resolves).
    """
    meta = load_summary(report_dir, "--reuse_subset_from").get("meta", {})
    if meta.get("utt_list"):
        return read_utt_list(meta["utt_list"])
    conf, data_dir = meta.get("config"), meta.get("data_dir")
    if not conf or not data_dir:
        raise ValueError(f"--reuse_subset_from {report_dir}: its summary.json records neither an utterance "
                         "list nor the data_dir and scoring options of its subset")
    if not (Path(data_dir) / "text").is_file():
        raise FileNotFoundError(f"--reuse_subset_from {report_dir}: its data_dir {data_dir} has no text file "
                                "here; run from the directory the recipe ran in (egs2/speechimp), or pass --utt_list")
    ids = subset_ids(data_dir, conf["subset_fraction"], conf["num_utts"], conf["seed"])
    if meta.get("n_utts") not in (None, len(ids)):
        raise ValueError(f"--reuse_subset_from {report_dir}: {data_dir} now gives {len(ids)} utterances, the report "
                         f"scored {meta['n_utts']} (the dump dir changed); pass --utt_list")
    return ids


def choose_subset(
    items: Mapping[str, TextItem], settings: ImportanceFileConfig, data: str | Path,
    utt_list: Optional[str | Path] = None, reuse_subset_from: Optional[str | Path] = None,
) -> List[str]:
    """The utterances every model is scored on (module docstring, step 2), sorted."""
    scoring = settings.scoring
    if utt_list is not None and reuse_subset_from is not None:
        raise ValueError("give --utt_list or --reuse_subset_from, not both")
    if utt_list is not None:
        ids = read_utt_list(utt_list)
    elif reuse_subset_from is not None:
        ids = report_subset(reuse_subset_from)
        conf = load_summary(reuse_subset_from)["meta"].get("config", {})
        for key in ("batch_size", "accumulate"):
            if key in conf and conf[key] != getattr(scoring, key):
                logger.warning("--reuse_subset_from %s was scored with %s %s, this run with %s: the batches "
                               "differ, so the scores are not comparable number for number",
                               reuse_subset_from, key, conf[key], getattr(scoring, key))
    else:
        return pick_subset(list(items), scoring.subset_fraction, scoring.num_utts, scoring.seed)
    missing = [u for u in ids if u not in items]
    if missing:
        raise DataError(f"{data}: utterance {missing[0]} of the chosen subset is not in the data "
                        f"({len(missing)} of {len(ids)} missing)")
    if len(set(ids)) != len(ids):
        raise DataError("the utterance list repeats an id")
    return sorted(ids)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


@dataclasses.dataclass
class _Run:
    """What every model of one comparison shares."""

    items: Dict[str, TextItem]
    ids: List[str]
    eval_items: Optional[Dict[str, TextItem]]
    eval_ids: List[str]
    data: str
    eval_data: Optional[str]
    settings: ImportanceFileConfig
    options: CompareOptions
    prompt: Optional[str]
    out_dir: Path
    device: torch.device
    stamp: dict
    overwrite: bool


def _text_batches(model, items: Mapping[str, TextItem], ids: Sequence[str], batch_size: int,
                  device: torch.device, where: str) -> List[dict]:
    return text_batches(model, {u: (items[u].prompt, items[u].response) for u in ids}, batch_size, device, where)


def _score_text_model(run: _Run, name: str, path: str, adapter: Optional[str]):
    """Load one model, score it (unless up to date) and return ``(model, layout, report dir)``."""
    scoring, deact = run.settings.scoring, run.settings.deactivation
    model = load_text_lm(path, adapter, run.prompt, run.options.torch_dtype, run.device,
                         run.options.mixed_precision, run.options.attn_implementation,
                         share_prompt_prefix=run.options.shares_prefix())
    layout = discover_layout(model.llm["model"])
    report = run.out_dir / "importance" / name
    stamp = canonical({**run.stamp, "model": _folder_identity(path), "adapter": _folder_identity(adapter)})
    if run.overwrite or not is_scored(report, stamp):
        logger.info("scoring %s (%s%s) on %d utterances -> %s", name, path, f" + adapter {adapter}" if adapter
                    else "", len(run.ids), report)

        def batches(_modality: str) -> List[dict]:
            return _text_batches(model, run.items, run.ids, scoring.batch_size, run.device, run.data)

        def eval_batches(_modality: str) -> List[dict]:
            return _text_batches(model, run.eval_items, run.eval_ids, deact.batch_size, run.device, run.eval_data)

        table1 = dataclasses.replace(deact, modalities=("text",)) if run.eval_items is not None else None
        report_importance(model, batches, report, scoring, [scoring.modality], run.data, table1,
                          eval_batches if table1 else None,
                          {"eval_dir": str(run.eval_data), "n_utts": len(run.eval_ids)} if table1 else None,
                          {"model": str(path), "adapter": str(adapter) if adapter else None,
                           "utt_list": str((run.out_dir / UTT_LIST).resolve()), "stamp": stamp}, layout)
    else:
        logger.info("%s is up to date (same model files, data and options); not scored again", report)
    return model, layout, report


def _check_layout(name: str, layout: DecoderLayout, base: DecoderLayout) -> None:
    if layout.to_json() != base.to_json():
        raise CheckpointMismatch(f"{name}: decoder layout {layout.to_json()} differs from the base's "
                                 f"{base.to_json()}")


def _check_shapes(name: str, shapes: Mapping[str, Sequence[int]], base: Mapping[str, Sequence[int]]) -> None:
    """The scored parameters of a model must be the base's (the first difference named)."""
    for n in sorted(set(shapes) | set(base), key=natural_key):
        if n not in shapes or n not in base or tuple(shapes[n]) != tuple(base[n]):
            raise CheckpointMismatch(
                f"{name} does not match the base: scored parameter {n} is "
                + (f"missing from {name}" if n not in shapes else "not in the base" if n not in base
                   else f"{list(shapes[n])} in {name}, {list(base[n])} in the base"))


def run_compare(
    base: str | Path,
    tuned: Mapping[str, str | Path],
    data: str | Path,
    out_dir: str | Path,
    importance_config: Optional[str | Path] = None,
    options: Optional[CompareOptions] = None,
    eval_data: Optional[str | Path] = None,
    utt_list: Optional[str | Path] = None,
    reuse_subset_from: Optional[str | Path] = None,
    speech: Optional[SpeechExp] = None,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    command: Optional[str] = None,
) -> dict:
    """Compare ``tuned`` (name → fine-tuned folder or peft adapter on ``base``) with ``base``
    on ``data``; returns the ``compare.json`` dict (empty on ranks other than 0)."""
    options = options or CompareOptions()
    device = torch.device(device)
    out_dir = Path(out_dir)
    settings = (load_importance_config(importance_config) if importance_config is not None
                else ImportanceFileConfig(ImportanceConfig(), DeactivationConfig(), AnalysisConfig()))
    scoring, conf = settings.scoring, settings.analysis
    if scoring.modality != "text":
        raise ValueError("scoring.modality must be text here (speech-input importance comes from --speech_exp_dir)")
    for name in tuned:
        _check_name(name, "--tuned name")
    if speech is not None:
        _check_name(speech.name, "--speech_name")
        for f in (speech.config, speech.model_file, Path(speech.data_dir) / "enc_feats.scp"):
            if not Path(f).is_file():
                raise FileNotFoundError(f"speech LLM {speech.name}: {f} is missing")
    # 1. architecture checks, before any model is loaded
    kinds = {}
    for name, path in tuned.items():
        if is_adapter(path):
            check_adapter(base, path)
            kinds[name] = "adapter"
        else:
            check_same_architecture(base, path, options.check_dtype)
            kinds[name] = "folder"
    # 2. the utterances
    fmt = source_format(data, options.data_format)
    items = read_text_source(data, fmt)
    ids = choose_subset(items, settings, data, utt_list, reuse_subset_from)
    eval_items, eval_ids = None, []
    if eval_data is not None:
        eval_items = read_text_source(eval_data, options.data_format)
        eval_ids = pick_subset(list(eval_items), 1.0, settings.deactivation.num_utts, settings.deactivation.seed)
    plain = all(items[u].prompt is None for u in ids) and all(eval_items[u].prompt is None for u in eval_ids)
    prompt = None if plain else options.prompt  # plain text needs no chat template
    if _rank0():
        atomic_write_text(out_dir / UTT_LIST, "".join(f"{u}\n" for u in ids))
    ids_sha = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    stamp = canonical({
        "data": _data_identity(data, fmt), "ids": ids_sha, "scoring": dataclasses.asdict(scoring),
        "options": dataclasses.asdict(options),
        "deactivation": dataclasses.asdict(settings.deactivation) if eval_data else None,
        "eval": _data_identity(eval_data, source_format(eval_data, options.data_format)) if eval_data else None,
    })
    run = _Run(items, ids, eval_items, eval_ids, str(data), str(eval_data) if eval_data else None,
               settings, options, prompt, out_dir, device, stamp, overwrite)

    # 3. the base once, then every fine-tuned model against it
    model, layout, base_report = _score_text_model(run, BASE, str(base), None)
    base_params = select_parameters(model, scoring.groups, layout)
    shapes = {n: tuple(p.shape) for n, p in base_params.items()}
    base_w = {n: p.detach().to("cpu", copy=True) for n, p in base_params.items()} if _rank0() else {}
    del model, base_params
    _free(device)
    base_scores = load_scores(base_report, expected_shapes=shapes) if _rank0() else {}
    n_layers = layout.n_layers
    change_layer = conf.pick_change_layer(n_layers)
    change, change_detail, change_maps, reports = {}, {}, [], {BASE: base_report}
    for name, path in tuned.items():
        adapter = str(path) if kinds[name] == "adapter" else None
        model, tuned_layout, reports[name] = _score_text_model(run, name, str(base) if adapter else str(path), adapter)
        _check_layout(name, tuned_layout, layout)
        _check_shapes(name, {n: tuple(p.shape) for n, p in select_parameters(model, scoring.groups, layout).items()},
                      shapes)
        tuned_w = LazyEffectiveWeights(model, scoring.groups, layout)
        if _rank0():
            change[name], change_detail[name], maps = system_change(base_w, tuned_w, conf, change_layer,
                                                                    base_scores, layout)
            change_maps.append(maps)
        del model, tuned_w
        _free(device)
    speech_reports = {}
    if speech is not None:
        speech_reports[speech.name] = _score_speech(run, speech, shapes, layout)
    if not _rank0():
        return {}

    # 4. shift, rank clustering, parameter changes
    names = {BASE: "Base", **{t: t for t in tuned}}
    if speech is not None:
        names.setdefault(speech.name, speech.name)
    analysis_stamp = canonical({"reports": {k: str(v) for k, v in reports.items()}, "stamp": stamp})
    analysis = write_analysis(out_dir, list(tuned), reports, speech_reports, names, base_scores, shapes, n_layers,
                              change, change_detail, change_maps, conf, change_layer, analysis_stamp, layout,
                              fig2_title="Textual importance per layer, before and after fine-tuning (Fig. 2-3)")
    table1 = {k: json.loads((d / "table1.json").read_text()) for k, d in reports.items()
              if (d / "table1.json").is_file()}
    summary = {
        "meta": {
            "base": str(base),
            "tuned": {n: {"path": str(p), "kind": kinds[n]} for n, p in tuned.items()},
            "data": str(data), "data_format": fmt, "n_utts": len(ids),
            "subset": (f"--utt_list {utt_list}" if utt_list else f"--reuse_subset_from {reuse_subset_from}"
                       if reuse_subset_from else f"seed {scoring.seed}, " + (
                           f"num_utts {scoring.num_utts}" if scoring.num_utts is not None
                           else f"subset_fraction {scoring.subset_fraction:g}")),
            "prompt": prompt or "none (plain text: language-model loss)",
            "eval_data": str(eval_data) if eval_data else None,
            "speech": dataclasses.asdict(speech) if speech else None,
            "options": dataclasses.asdict(options), "device": str(device),
            "command": command,
        },
        "names": names,
        "table1": table1,
        "analysis": {k: v for k, v in analysis.items() if k != "stamp"},
    }
    atomic_write_text(out_dir / COMPARE_FILE, json.dumps(summary, indent=1) + "\n")
    return summary


def _score_speech(run: _Run, speech: SpeechExp, shapes: Mapping[str, Sequence[int]], base_layout) -> Path:
    """Speech-input importance of the speech LLM on the same utterances (its dump dir)."""
    from espnet_ext.inference.speechllm import load_model

    conf = dataclasses.replace(run.settings.scoring, modality="speech")
    report = run.out_dir / "importance" / speech.name / SPEECH_REPORT
    known = read_table(Path(speech.data_dir) / "text")
    missing = [u for u in run.ids if u not in known]
    if missing:
        raise DataError(f"--speech_data_dir {speech.data_dir}: utterance {missing[0]} of the scored subset is "
                        "not in it")
    stamp = canonical({**report_stamp(speech.config, speech.model_file, conf, speech.data_dir),
                       "ids": run.stamp["ids"]})
    model = load_model(speech.config, speech.model_file, run.device)
    layout = discover_layout(model.llm.model)
    _check_layout(speech.name, layout, base_layout)
    _check_shapes(speech.name, {n: tuple(p.shape) for n, p in select_parameters(model, conf.groups, layout).items()},
                  shapes)
    if run.overwrite or not is_scored(report, stamp):
        logger.info("scoring the speech input of %s (%s) -> %s", speech.name, speech.model_file, report)
        run_importance(model, speech.data_dir, report, conf, utt_ids=run.ids, layout=layout,
                       provenance={"model_config": speech.config, "model_file": speech.model_file,
                                   "utt_list": str((run.out_dir / UTT_LIST).resolve()), "stamp": stamp})
    del model
    _free(run.device)
    return report

