"""The systems of a run: how RESULTS.md names them and which paper claims they enter.

A training config declares its system once, in its ``system:`` section::

    system:
      name: Layer-LR      # display name in tables and figure legends
      role: layer_lr      # what the paper's claims compare: full_ft, layer_lr, lora, anchor

The exp-dir tag stays the config's file name without ``train_`` and ``.yaml`` (with
``run.sh --seeds "0 1 2"`` the first seed's run keeps it, the others add ``_seed<N>``,
and every run's system records its ``seed``: runs of one role are replicas).  The
composer writes the section to ``exp/<tag>/system.json``; the No-FT baseline
(the pretrained model, ``exp/noft``) is :data:`NO_FT`, the ASR cascade (``exp/cascade``)
:data:`CASCADE`.  Renaming a config file renames
its exp dir and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

from espnet_ext.utils.atomic import atomic_write_text
from espnet_ext.utils.records import read_json

SYSTEM_FILE = "system.json"
#: what a system is to the paper's claims (Table 2 and §3)
ROLES = ("base", "full_ft", "layer_lr", "lora", "anchor", "cascade")


@dataclasses.dataclass(frozen=True)
class SystemInfo:
    """One system of a run (see the module docstring)."""

    name: str  # display name
    role: str  # one of ROLES
    lora_rank: Optional[int] = None  # LoRA systems: r (the Table 3 rank ablation groups by it)
    seed: Optional[int] = None  # the training seed of one of several runs (run.sh --seeds), else None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"system.role must be one of {list(ROLES)}, got {self.role!r}")
        if not self.name:
            raise ValueError("system.name must not be empty")


NO_FT_TAG = "noft"
NO_FT = SystemInfo(name="No-FT", role="base")
#: Whisper's own decoder, then the No-FT LLM on the transcript (an addition: the S2T bar)
CASCADE_TAG = "cascade"
CASCADE = SystemInfo(name="Cascade: Whisper ASR → No-FT", role="cascade")
BUILT_IN = {NO_FT_TAG: NO_FT, CASCADE_TAG: CASCADE}
BASE_MODEL_NAME = "Base (pretrained)"  # the stage-3 importance model in analysis tables


def write_system(exp_dir: str | Path, info: SystemInfo) -> None:
    """``<exp_dir>/system.json``."""
    atomic_write_text(Path(exp_dir) / SYSTEM_FILE, json.dumps(dataclasses.asdict(info), indent=1) + "\n")


def read_system(exp_root: str | Path, tag: str) -> SystemInfo:
    """The system of ``<exp_root>/<tag>``: a built-in one (:data:`BUILT_IN`), else its ``system.json``."""
    if tag in BUILT_IN:
        return BUILT_IN[tag]
    path = Path(exp_root) / tag / SYSTEM_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: system {tag!r} was not composed by stage 4 "
                                "(run ./run.sh --stage 4 first)")
    return SystemInfo(**read_json(path, "recipe stage 4's config composer (./run.sh --stage 4)"))


def read_systems(exp_root: str | Path, tags: Sequence[str]) -> Dict[str, SystemInfo]:
    """:func:`read_system` for each tag, in order."""
    return {t: read_system(exp_root, t) for t in tags}
