"""Compose a training config from a model preset and a training recipe config.

A *model preset* (``conf/model/*.yaml``) says which pretrained models to use and how the
parts are shaped: the ``pretrained`` sources materialised by stage 2 plus the task's
``encoder*``/``adaptor*``/``llm*`` options.  A *training config* (``conf/train_*.yaml``)
says how to train (optimizer, scheduler, epochs, batching, mitigation).  A training
config names the file it extends with ``base:`` (``conf/train_base.yaml`` holds what every
strategy shares); the chain is merged base first.  It declares its system (display name
and role in the paper's claims, :mod:`espnet_ext.tasks.systems`) in ``system:``.

The training configs hold the paper's recipe (LLaMA-Omni stage 1).  A demo-size model
preset names a *training overlay* with ``train_overlay:`` (``conf/demo_overlay.yaml``: the
2-core CPU budget): its top-level keys apply to every system, its ``roles:`` section
per system role (e.g. the LoRA rate).  A recipe preset's ``train:`` section and
``lr_scale`` (``conf/preset/*.yaml``) size that CPU demo too, so they apply only together
with a training overlay; a paper-size preset (none) composes to the paper's
hyperparameters whatever the recipe preset, and the composed file's header says what was
skipped.

Stage 4 merges preset + base chain + training config + training overlay (+ its role
section) + recipe preset overlay (later wins; ``*_conf`` dicts merge key by key) into
``exp/<tag>/train.yaml``, writes ``exp/<tag>/system.json`` and validates every key
against the task's options, so an unknown key is reported with the file it came from
before any model is loaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from espnet_ext.tasks.systems import SystemInfo, write_system
from espnet_ext.utils.atomic import atomic_write_text
from espnet_ext.utils.conf import build_from_conf, load_yaml, merge_configs

PRESET_ONLY_KEYS = ("pretrained", "train_overlay")
#: the section of a training overlay that applies per system role
OVERLAY_ROLES_KEY = "roles"
#: keys of a training config that are not ESPnet options
TRAIN_ONLY_KEYS = ("base", "system")
#: options whose ``importance_report`` path is written relative to the recipe (``exp/...``)
REPORT_CONF_KEYS = ("layer_lr_conf", "anchor_conf")


def load_train_config(path: str | Path, valid: Optional[set] = None) -> Dict[str, Any]:
    """A training config with its ``base:`` chain merged under it (base first).

    ``base`` is a path relative to the file that names it.  With ``valid`` (the task's
    option names) every file's keys are checked, and an error names the file.
    """
    chain: List[Path] = []
    path = Path(path)
    confs: List[Dict[str, Any]] = []
    while True:
        if path.resolve() in chain:
            raise ValueError(f"{path}: 'base' chain loops: {' -> '.join(map(str, chain + [path]))}")
        chain.append(path.resolve())
        conf = load_yaml(path)
        if valid is not None:
            unknown = sorted(set(conf) - valid - set(TRAIN_ONLY_KEYS))
            if unknown:
                raise ValueError(f"{path}: unknown config key(s) {unknown}")
        confs.append(conf)
        base = conf.get("base")
        if base is None:
            break
        if not isinstance(base, str):
            raise ValueError(f"{path}: 'base' must be a file name, got {base!r}")
        path = path.parent / base
    merged: Dict[str, Any] = {}
    for conf in reversed(confs):
        merged = merge_configs(merged, {k: v for k, v in conf.items() if k != "base"})
    return merged


def system_of(train_config: str | Path, merged: Dict[str, Any]) -> SystemInfo:
    """The ``system:`` section of a composed training config (LoRA: its rank from ``lora_conf.r``)."""
    conf = merged.get("system")
    if not isinstance(conf, dict):
        raise ValueError(f"{train_config}: no 'system' section; give the system a display name and a "
                         "role, e.g. system: {name: Full-FT, role: full_ft}")
    conf = dict(conf)
    if conf.get("role") == "lora" and isinstance(merged.get("lora_conf"), dict):
        conf.setdefault("lora_rank", merged["lora_conf"].get("r"))
    return build_from_conf(SystemInfo, conf, f"{train_config}: system")

def compose_train_config(
    preset: str | Path, train_config: Optional[str | Path], out: str | Path,
    pretrained_dir: Optional[str | Path] = None, exp_dir: Optional[str | Path] = None,
    recipe_preset: Optional[str | Path] = None, seed: Optional[int] = None,
) -> Dict[str, Any]:
    """Merge ``preset`` and ``train_config`` into ``out`` after validating every key.

    ``seed`` (one run of several, ``run.sh --seeds``) replaces the training ``seed`` and is
    recorded in the system (its display name gains "(seed N)").

    The preset's ``train_overlay`` (a path relative to the preset; module docstring) is
    merged over the training config.  ``recipe_preset`` (``conf/preset/<name>.yaml``)
    contributes its ``train:`` section, merged over that (the demo's step budget), and
    its optional ``lr_scale`` (an ADDITION to the paper's recipe), which multiplies every
    system's ``optim_conf.lr`` after the merge, so each strategy keeps its own rate
    relative to the others (eq. 3's ratios); ``adaptor_lr`` is left alone.  Both apply
    only when the preset has a ``train_overlay``.  With the ``warmupcosinelr``
    scheduler an integer ``scheduler_conf.total_steps`` must equal
    ``max_epoch × (num_iters_per_epoch // accum_grad)`` (the trainer's optimizer steps);
    ``auto`` is counted by the trainer from the training iterator.

    Without ``train_config`` the output describes the pretrained base model alone
    (``exp/pretrained/model.yaml``: the No-FT system and the stage-3 importance model).
    ``pretrained_dir`` (stage 2's output) replaces the preset's ``exp/pretrained`` in
    ``llm_conf``/``encoder_conf.model_name_or_path``, for recipes run with another ``--expdir``.
    ``exp_dir`` likewise rebases an ``importance_report`` written as ``exp/...`` in
    ``layer_lr_conf``/``anchor_conf`` (``exp/importance/base`` → ``<exp_dir>/importance/base``).
    """
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    valid = set(SpeechLLMTask.default_args())
    p = load_yaml(preset)
    t = load_train_config(train_config, valid) if train_config is not None else {}
    demo, demo_name = load_train_overlay(preset, p, valid)
    overlay: Dict[str, Any] = {}
    lr_scale = 1.0
    skipped = ""
    if recipe_preset is not None and train_config is not None and demo_name is None:
        recipe = load_yaml(recipe_preset)
        if recipe.get("train") or recipe.get("lr_scale", 1.0) != 1.0:
            skipped = f" (train:/lr_scale of {recipe_preset} skipped: {preset} has no train_overlay)"
    elif recipe_preset is not None and train_config is not None:
        recipe = load_yaml(recipe_preset)
        overlay = recipe.get("train") or {}
        if not isinstance(overlay, dict):
            raise ValueError(f"{recipe_preset}: 'train' must be a mapping of training options")
        lr_scale = recipe.get("lr_scale", 1.0)
        if isinstance(lr_scale, bool) or not isinstance(lr_scale, (int, float)) or not lr_scale > 0:
            raise ValueError(f"{recipe_preset}: lr_scale must be a positive number, got {lr_scale!r}")
    overlay_name = f"{recipe_preset} (train:)"
    # every file of the training config's base chain was checked by load_train_config
    for path, conf, extra in ((preset, p, PRESET_ONLY_KEYS), (overlay_name, overlay, ())):
        unknown = sorted(set(conf) - valid - set(extra))
        if unknown:
            raise ValueError(f"{path}: unknown config key(s) {unknown}")
    merged = merge_configs({k: v for k, v in p.items() if k not in PRESET_ONLY_KEYS}, t)
    if train_config is not None and demo_name is not None:
        role = (merged.get("system") or {}).get("role") if isinstance(merged.get("system"), dict) else None
        merged = merge_configs(merged, {k: v for k, v in demo.items() if k != OVERLAY_ROLES_KEY})
        merged = merge_configs(merged, (demo.get(OVERLAY_ROLES_KEY) or {}).get(role) or {})
    merged = merge_configs(merged, overlay)
    if lr_scale != 1.0:
        optim_conf = dict(merged.get("optim_conf") or {})
        if "lr" not in optim_conf:
            raise ValueError(f"{train_config}: lr_scale of {recipe_preset} needs optim_conf.lr")
        merged["optim_conf"] = {**optim_conf, "lr": float(optim_conf["lr"]) * lr_scale}
    system = system_of(train_config, merged) if train_config is not None else None
    merged.pop("system", None)
    if seed is not None:
        if system is None:
            raise ValueError("a seed applies to a training run: give --train_config with --seed")
        merged["seed"] = int(seed)
        system = dataclasses.replace(system, name=f"{system.name} (seed {seed})", seed=int(seed))
    if merged.get("scheduler") == "warmupcosinelr":
        src = f"{train_config}" + (f" + {demo_name}" if demo_name and train_config else "") + \
            (f" + {overlay_name}" if overlay else "")
        check_total_steps(merged, src)
    if pretrained_dir is not None:
        for key, sub in (("llm_conf", "llm"), ("encoder_conf", "whisper")):
            if isinstance(merged.get(key), dict) and "model_name_or_path" in merged[key]:
                merged[key] = {**merged[key], "model_name_or_path": str(Path(pretrained_dir) / sub)}
    if exp_dir is not None:
        for key in REPORT_CONF_KEYS:
            conf = merged.get(key)
            if isinstance(conf, dict) and "importance_report" in conf:
                merged[key] = {**conf, "importance_report": rebase_exp_path(conf["importance_report"], exp_dir)}
    sources = f"{preset} + {train_config}" if train_config is not None else str(preset)
    if demo_name is not None and train_config is not None:
        sources += f" + {demo_name}"
    sources += skipped
    if overlay:
        sources += f" + {overlay_name}"
    if lr_scale != 1.0:
        sources += f" (optim_conf.lr x {lr_scale:g}, lr_scale of {recipe_preset})"
    header = f"# composed from {sources} by espnet_ext.bin.compose_config\n"
    atomic_write_text(out, header + yaml.safe_dump(merged, sort_keys=False))
    if system is not None:
        write_system(Path(out).parent, system)
    return merged


def load_train_overlay(preset: str | Path, conf: Dict[str, Any], valid: set):
    """``(overlay, its path)`` named by the preset's ``train_overlay`` (``({}, None)`` if none);
    its keys, and those of every ``roles:`` entry, are checked against the task's options."""
    from espnet_ext.tasks.systems import ROLES

    name = conf.get("train_overlay")
    if name is None:
        return {}, None
    if not isinstance(name, str):
        raise ValueError(f"{preset}: train_overlay must be a file name, got {name!r}")
    path = Path(preset).parent / name
    overlay = load_yaml(path)
    unknown = sorted(set(overlay) - valid - {OVERLAY_ROLES_KEY})
    if unknown:
        raise ValueError(f"{path}: unknown config key(s) {unknown}")
    roles = overlay.get(OVERLAY_ROLES_KEY) or {}
    if not isinstance(roles, dict):
        raise ValueError(f"{path}: {OVERLAY_ROLES_KEY} must map system roles to options")
    for role, options in roles.items():
        if role not in ROLES:
            raise ValueError(f"{path}: {OVERLAY_ROLES_KEY}.{role}: not a system role (one of {list(ROLES)})")
        unknown = sorted(set(options or {}) - valid)
        if unknown:
            raise ValueError(f"{path}: {OVERLAY_ROLES_KEY}.{role}: unknown config key(s) {unknown}")
    return overlay, path


def check_total_steps(merged: Dict[str, Any], src: str) -> None:
    """An integer ``scheduler_conf.total_steps`` must be the run's optimizer-step count,
    ``max_epoch × (num_iters_per_epoch // accum_grad)``; ``auto`` (the trainer counts the
    training iterator) is always accepted, and so is an integer when the epoch length is
    the iterator's own (no ``num_iters_per_epoch``: the trainer compares and warns)."""
    from espnet_ext.optim.schedulers import AUTO, optimizer_steps

    total = (merged.get("scheduler_conf") or {}).get("total_steps", AUTO)
    if total == AUTO:
        return
    if isinstance(total, bool) or not isinstance(total, int):
        raise ValueError(f"{src}: scheduler_conf.total_steps must be 'auto' or an integer, got {total!r}")
    iters = merged.get("num_iters_per_epoch")
    if iters is None:
        return
    accum = merged.get("accum_grad") or 1
    steps = optimizer_steps(merged.get("max_epoch", 0), iters, accum)
    if total != steps:
        raise ValueError(f"{src}: scheduler_conf.total_steps is {total} but max_epoch × (num_iters_per_epoch "
                         f"// accum_grad) is {merged.get('max_epoch', 0)} × ({iters} // {accum}) = {steps}; "
                         "make them equal or use auto")


def rebase_exp_path(path: str | Path, exp_dir: str | Path) -> str:
    """``exp/a/b`` → ``<exp_dir>/a/b``; absolute paths and other relative paths unchanged."""
    parts = Path(path).parts
    if Path(path).is_absolute() or not parts or parts[0] != "exp":
        return str(path)
    return str(Path(exp_dir, *parts[1:]))
