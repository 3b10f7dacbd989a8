"""``conf/importance.yaml``: its three sections as settings classes, read by one loader.

* ``scoring``      — :class:`espnet_ext.importance.scoring.ImportanceConfig` (eq. 2);
* ``deactivation`` — :class:`DeactivationConfig` (Table 1);
* ``analysis``     — :class:`AnalysisConfig` (stage 6: Fig. 1–4 and their numbers).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

from espnet_ext.importance.scoring import ImportanceConfig
from espnet_ext.tasks.systems import ROLES
from espnet_ext.utils.conf import load_sections


@dataclasses.dataclass
class DeactivationConfig:
    """Table-1 options (defaults: the paper's 3 %)."""

    fraction: float = 0.03  # share of the scored parameters zeroed
    scope: str = "global"  # global threshold, or per_matrix (Zhang et al.)
    modalities: tuple = ("text", "speech")  # a model without checkpoint (the base): text only
    roles: tuple = ("full_ft",)  # stage 6: systems of these roles also get the check (the paper's
    # Table 1 is on its speech LLM, i.e. Full-FT)
    num_utts: Optional[int] = 64  # held-out utterances for perplexity
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction}")
        if self.scope not in ("global", "per_matrix"):
            raise ValueError(f"scope must be global or per_matrix, got {self.scope!r}")
        self.modalities = tuple(self.modalities)
        self.roles = tuple(self.roles)
        bad = [r for r in self.roles if r not in ROLES]
        if bad:
            raise ValueError(f"roles {bad} are not system roles {list(ROLES)}")


@dataclasses.dataclass
class AnalysisConfig:
    """Stage-6 options: the Fig. 1 / Fig. 4 regions and maps."""

    top_fraction: float = 0.05  # Fig. 1 / Fig. 4: the "Top 5 %" region of each matrix
    line_fraction: float = 0.05  # concentration score: the top 5 % of rows and of columns
    layers: Optional[tuple] = None  # Fig. 1 rows; None = first, middle and last layer
    change_layer: Optional[int] = None  # Fig. 4 layer; None = the middle layer
    max_px: int = 256  # heatmaps are block-mean pooled to at most this many pixels a side
    seed: int = 0  # first seed of the random baseline masks of the concentration score
    n_null: int = 20  # random baselines per matrix: their mean is the reference, their spread the null range
    speech_roles: tuple = ("full_ft",)  # systems of these roles also get speech-input importance
    # (Fig. 1: the paper compares speech and text input on its speech LLM, i.e. Full-FT)

    def __post_init__(self) -> None:
        for k in ("top_fraction", "line_fraction"):
            if not 0 < getattr(self, k) < 1:
                raise ValueError(f"{k} must be in (0, 1), got {getattr(self, k)}")
        if self.n_null < 2:
            raise ValueError(f"n_null must be >= 2 (a null range needs several random masks), got {self.n_null}")
        self.speech_roles = tuple(self.speech_roles)
        bad = [r for r in self.speech_roles if r not in ROLES]
        if bad:
            raise ValueError(f"speech_roles {bad} are not system roles {list(ROLES)}")
        if self.layers is not None:
            self.layers = tuple(int(i) for i in self.layers)

    def pick_layers(self, n_layers: int) -> List[int]:
        layers = list(self.layers) if self.layers is not None else sorted({0, n_layers // 2, n_layers - 1})
        bad = [i for i in layers if not 0 <= i < n_layers]
        if bad:
            raise ValueError(f"analysis.layers {bad} out of range for a {n_layers}-layer model")
        return layers

    def pick_change_layer(self, n_layers: int) -> int:
        i = self.change_layer if self.change_layer is not None else n_layers // 2
        if not 0 <= i < n_layers:
            raise ValueError(f"analysis.change_layer {i} out of range for a {n_layers}-layer model")
        return i


@dataclasses.dataclass
class ImportanceFileConfig:
    """The whole of an importance YAML."""

    scoring: ImportanceConfig
    deactivation: DeactivationConfig
    analysis: AnalysisConfig


def load_importance_config(path: str | Path) -> ImportanceFileConfig:
    """Parse ``conf/importance.yaml``; unknown keys and bad values name the file and section."""
    return ImportanceFileConfig(**load_sections(path, {
        "scoring": ImportanceConfig, "deactivation": DeactivationConfig, "analysis": AnalysisConfig}))
