"""Importance probe: textual importance on a small fixed set *during* training.

The paper measures the importance shift only after training (Fig. 2–3).  The probe
measures it as training goes: every N epochs (and/or every N training iterations) it
scores eq. (2) on a fixed probe subset of a dump dir, writes the layer distribution and
its shift against the base model (:mod:`espnet_ext.importance.shift`) to
``<output_dir>/importance_probe/{epoch<N>,step<N>}.json`` and returns the scalars for
ESPnet's reporter / tensorboard.

The shift compares like with like: its reference is the run's *starting model scored on
the probe set* (importance sums grow with the data, so the base report's curve, from 1/30 of
the training set, against a curve of a few dev utterances would give a meaningless mass
ratio).  :meth:`SpeechLLMTrainer.run <espnet_ext.train.trainer.SpeechLLMTrainer.run>`
scores the model it is handed before ESPnet resumes or trains it — stage 4 starts every
system from the base LLM, so for textual importance this is the base report's model, on the
probe utterances — and writes that curve to ``importance_probe/base.json``.  A resumed run
is handed the same starting model and scores it again (one probe's cost), so nothing stale
is ever compared.  ``base_report`` switches the shift metrics on.

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
    base_report: Optional[str] = None  # exp/importance/base: adds the shift metrics, against the
    # run's starting model (the base LLM) scored on the probe set (null = no shift metrics)
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
        if config.base_report:  # a finished report, so a mistyped path fails before training
            load_summary(config.base_report, "importance_probe_conf.base_report")
        self.base_curve: Optional[List[float]] = None
        self._batches: Optional[List[Dict[str, torch.Tensor]]] = None

    def _probe_set_batches(self, model: torch.nn.Module) -> List[Dict[str, torch.Tensor]]:
        """The probe utterances as ``model``'s batches (this rank's share under DDP)."""
        from espnet_ext.train.batches import dump_batches, preprocessor_for, subset_ids

        c = self.config
        device = next(model.parameters()).device
        ids = subset_ids(c.data_dir, 1.0, c.num_utts, c.seed)
        batches = [b for _, b in dump_batches(c.data_dir, preprocessor_for(model), c.modality,
                                              c.batch_size, ids, device=device)]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            batches = batches[torch.distributed.get_rank()::torch.distributed.get_world_size()]
        return batches

    def _probe_batches(self, model: torch.nn.Module) -> List[Dict[str, torch.Tensor]]:
        """The fixed probe batches (built once)."""
        if self._batches is None:
            self._batches = self._probe_set_batches(model)
        return self._batches

    def _score_config(self) -> ImportanceConfig:
        c = self.config
        return ImportanceConfig(modality=c.modality, groups=c.groups, num_utts=c.num_utts,
                                batch_size=c.batch_size, seed=c.seed)

    @property
    def compares(self) -> bool:
        """Whether the probe reports the shift against the starting model."""
        return bool(self.config.base_report)

    def score_start(self, model: torch.nn.Module) -> List[float]:
        """Score the run's starting ``model`` on the probe set: the shift metrics' reference.

        Called once per process before training (every rank, under DDP: the sums are
        all-reduced); the torch / numpy / python RNG states are kept, so the run is unchanged.
        """
        module = unwrap_model(model)
        start = time.perf_counter()
        with rng_states_kept():
            result = score_importance(module, self._probe_batches(module), self._score_config())
        self.base_curve = layer_sums(result.scores)
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            atomic_write_text(self.output_dir / "base.json", json.dumps(
                {"what": "the run's starting model on the probe set (reference of shift_vs_base)",
                 "n_utts": result.n_utts, "mean_loss": result.mean_loss, "layer_sums": self.base_curve},
                indent=1) + "\n")
        logger.info("importance probe: starting model scored on the probe set (%d utts, %.1f s)",
                    result.n_utts, time.perf_counter() - start)
        return self.base_curve

    def due(self, epoch: Optional[int] = None, step: Optional[int] = None) -> bool:
        c = self.config
        if epoch is not None:
            return c.every_n_epochs > 0 and epoch % c.every_n_epochs == 0
        return step is not None and c.every_n_steps > 0 and step % c.every_n_steps == 0

    def run(self, model: torch.nn.Module, tag: str, epoch: int, step: Optional[int] = None) -> Dict[str, float]:
        """Score the probe set, write ``<tag>.json`` (rank 0) and return reporter scalars."""
        module = unwrap_model(model)
        start = time.perf_counter()
        with rng_states_kept():
            result = score_importance(module, self._probe_batches(module), self._score_config())
        curve = layer_sums(result.scores)
        seconds = time.perf_counter() - start
        scalars = {"imp_loss": result.mean_loss, "imp_peak_layer": float(int(np.argmax(curve)))}
        record: Dict[str, object] = {
            "epoch": epoch, "step": step, "n_utts": result.n_utts, "mean_loss": result.mean_loss,
            "seconds": round(seconds, 3), "layer_sums": curve, "layer_share": normalize(curve).tolist(),
        }
        if self.compares:  # both curves from the same probe utterances
            if self.base_curve is None:
                raise RuntimeError("importance probe: score_start() must run before the first probe "
                                   "(SpeechLLMTrainer.run calls it)")
            shift = shift_metrics(self.base_curve, curve)
            record["shift_vs_base"] = shift
            scalars.update({f"imp_{k}": float(v) for k, v in shift.items()})
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            atomic_write_text(self.output_dir / f"{tag}.json", json.dumps(record, indent=1) + "\n")
        logger.info("importance probe %s (%d utts, %.1f s): %s", tag, result.n_utts, seconds,
                    ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
        return scalars
