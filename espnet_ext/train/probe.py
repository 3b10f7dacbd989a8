"""Importance probe: textual importance on a small fixed set *during* training.

The paper measures the importance shift only after training (Fig. 2–3).  The probe
measures it as training goes: every N epochs (and/or every N training iterations) it
scores eq. (2) on a fixed probe subset of a dump dir, writes the layer distribution and
its shift against the base report (:mod:`espnet_ext.importance.shift`) to
``<output_dir>/importance_probe/{epoch<N>,step<N>}.json`` and returns the scalars for
ESPnet's reporter / tensorboard.

It must not change the training trajectory, and it does not:

* :func:`espnet_ext.importance.scoring.score_importance` backpropagates into the scored
  parameters only, sets their pending ``.grad`` tensors aside and puts them back (no
  optimizer step, no other parameter's ``.grad`` touched), restores ``requires_grad`` and
  every submodule's train/eval flag;
* the torch (CPU and CUDA), numpy and python RNG states are saved and restored around it.

``tests/test_importance.py`` checks that a training run with the probe ends with
bit-identical weights to one without.  Cost per probe: one forward + backward over
``num_utts`` utterances (``ceil(num_utts / batch_size)`` batches, no optimizer) plus one
fp32 accumulator the size of the scored parameters; under DDP each rank scores its
share of the batches and the sums are all-reduced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch

from espnet_ext.importance.params import unwrap_model
from espnet_ext.importance.report import layer_sums, load_summary
from espnet_ext.importance.scoring import ImportanceConfig, score_importance
from espnet_ext.importance.shift import normalize, shift_metrics
from espnet_ext.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

PROBE_DIR = "importance_probe"


@dataclasses.dataclass
class ProbeConfig:
    """``--importance_probe_conf`` (null = off)."""

    data_dir: str = ""  # dump dir the probe utterances come from (e.g. dump/dev); required
    num_utts: int = 16  # probe size: its cost is num_utts × one forward + backward
    batch_size: int = 8
    modality: str = "text"  # textual importance, as in the paper's shift analysis
    every_n_epochs: int = 1  # probe after every N-th epoch (0 = never at epoch ends)
    every_n_steps: int = 0  # also every N training iterations, counted over all epochs (0 = off)
    base_report: Optional[str] = None  # exp/importance/base: adds the shift metrics vs the base
    groups: tuple = ("layers",)  # scored parameters (as in conf/importance.yaml)
    seed: int = 0  # which utterances form the probe set

    def __post_init__(self) -> None:
        if not self.data_dir:
            raise ValueError("data_dir is required (a dump dir, e.g. dump/dev)")
        if self.num_utts < 1 or self.batch_size < 1:
            raise ValueError("num_utts and batch_size must be >= 1")
        if self.every_n_epochs < 0 or self.every_n_steps < 0:
            raise ValueError("every_n_epochs/every_n_steps must be >= 0")
        if self.every_n_epochs == 0 and self.every_n_steps == 0:
            raise ValueError("every_n_epochs and every_n_steps are both 0 "
                             "(set importance_probe_conf to null to turn the probe off)")
        self.groups = tuple(self.groups)


@contextlib.contextmanager
def rng_states_kept() -> Iterator[None]:
    """Restore the torch (CPU + initialised CUDA), numpy and python RNG states on exit."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)


class ImportanceProbe:
    """Scores the probe set on demand; see the module docstring."""

    def __init__(self, config: ProbeConfig, output_dir: str | Path) -> None:
        self.config = config
        self.output_dir = Path(output_dir) / PROBE_DIR
        self.base_curve: Optional[List[float]] = (
            list(load_summary(config.base_report)["layer_sums"]) if config.base_report else None
        )
        self._batches: Optional[List[Dict[str, torch.Tensor]]] = None

    def _probe_batches(self, model: torch.nn.Module) -> List[Dict[str, torch.Tensor]]:
        """The fixed probe batches (built once; this rank's share under DDP)."""
        if self._batches is None:
            from espnet_ext.train.batches import dump_batches, preprocessor_for, subset_ids

            c = self.config
            device = next(model.parameters()).device
            ids = subset_ids(c.data_dir, 1.0, c.num_utts, c.seed)
            batches = [b for _, b in dump_batches(c.data_dir, preprocessor_for(model), c.modality,
                                                  c.batch_size, ids, device=device)]
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                batches = batches[torch.distributed.get_rank()::torch.distributed.get_world_size()]
            self._batches = batches
        return self._batches

    def due(self, epoch: Optional[int] = None, step: Optional[int] = None) -> bool:
        c = self.config
        if epoch is not None:
            return c.every_n_epochs > 0 and epoch % c.every_n_epochs == 0
        return step is not None and c.every_n_steps > 0 and step % c.every_n_steps == 0

    def run(self, model: torch.nn.Module, tag: str, epoch: int, step: Optional[int] = None) -> Dict[str, float]:
        """Score the probe set, write ``<tag>.json`` (rank 0) and return reporter scalars."""
        c = self.config
        module = unwrap_model(model)
        start = time.perf_counter()
        with rng_states_kept():
            result = score_importance(
                module, self._probe_batches(module),
                ImportanceConfig(modality=c.modality, groups=c.groups, num_utts=c.num_utts,
                                 batch_size=c.batch_size, seed=c.seed),
            )
        curve = layer_sums(result.scores)
        seconds = time.perf_counter() - start
        scalars = {"imp_loss": result.mean_loss, "imp_peak_layer": float(int(np.argmax(curve)))}
        record: Dict[str, object] = {
            "epoch": epoch, "step": step, "n_utts": result.n_utts, "mean_loss": result.mean_loss,
            "seconds": round(seconds, 3), "layer_sums": curve, "layer_share": normalize(curve).tolist(),
        }
        if self.base_curve is not None:
            shift = shift_metrics(self.base_curve, curve)
            record["shift_vs_base"] = shift
            scalars.update({f"imp_{k}": float(v) for k, v in shift.items()})
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            atomic_write_text(self.output_dir / f"{tag}.json", json.dumps(record, indent=1) + "\n")
        logger.info("importance probe %s (%d utts, %.1f s): %s", tag, result.n_utts, seconds,
                    ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
        return scalars
