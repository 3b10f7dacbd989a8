"""ESPnet ``Trainer`` with the optional importance probe (``--importance_probe_conf``).

With the option unset (null, the default) this is ESPnet's ``Trainer`` unchanged.  With
it set, :class:`espnet_ext.train.probe.ImportanceProbe` scores textual importance on
a small fixed probe set:

* after every N-th epoch, at the end of validation: the scalars (``imp_js``,
  ``imp_pearson``, ``imp_peak_move``, ``imp_mass_ratio`` against the base report,
  ``imp_loss``, ``imp_peak_layer``) are registered in the *valid* reporter as one extra
  step, so they appear in ESPnet's epoch log line, ``images/`` and tensorboard (valid
  statistics such as ``loss`` skip the step: ESPnet drops non-finite entries); they can
  even serve as ``best_model_criterion`` (e.g. ``[valid, imp_js, min]``);
* every N training iterations (optional): the same scalars go to the train tensorboard
  writer under ``importance_probe/`` (the reporter is left alone, so iteration counts and
  logging intervals stay as they are); the probe's time counts into that step's
  ``iter_time``.  Under DDP this assumes every rank runs the same number of iterations
  (ESPnet's sharded batches do).

Training state is crash-safe (:mod:`espnet_ext.train.checkpoint`): every ``torch.save``
of the run is atomic, the previous ``checkpoint.pth`` is kept as ``checkpoint.prev.pth``,
and ``--resume true`` falls back to it, naming the damaged file, when the newest one does
not load.

``scheduler_conf.total_steps: auto`` (:class:`~espnet_ext.optim.schedulers.WarmupCosineLR`)
is resolved in :meth:`SpeechLLMTrainer.run`, the first point where ESPnet has built the
training iterator: max_epoch × (iterations per epoch // accum_grad), the iterations being
``num_iters_per_epoch`` or else the training iterator's batch count.  An explicit integer
that differs from that count is kept and logged as a warning.

Every probe also writes ``<output_dir>/importance_probe/{epoch<N>,step<N>}.json`` with the
per-layer distribution.  It leaves the training trajectory bit-identical (see
:mod:`espnet_ext.train.probe`).  ESPnet's DeepSpeed path refuses any trainer class
but its own (``--use_deepspeed true`` with this task raises "only default trainer is
compatible with deepspeed"); train without DeepSpeed to use this task.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
from pathlib import Path
from typing import Optional

import espnet2.main_funcs.average_nbest_models as _espnet_averaging  # noqa: E402
import espnet2.train.trainer as _espnet_trainer  # noqa: E402
from espnet2.train.trainer import TrainerOptions  # noqa: E402  (imported by the shim already)
from espnet2.utils.build_dataclass import build_dataclass  # noqa: E402
from espnet2.utils.nested_dict_action import NestedDictAction  # noqa: E402

from espnet_ext.train.checkpoint import (  # noqa: E402
    PREVIOUS,
    CheckpointError,
    atomic_trainer_saves,
    check_archive,
    loadable_checkpoint,
)
from espnet_ext.utils.espnet_compat import Trainer  # first: ESPnet's imports need its shim

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class SpeechLLMTrainerOptions(TrainerOptions):
    importance_probe_conf: Optional[dict] = None


class SpeechLLMTrainer(Trainer):
    """ESPnet's Trainer plus the importance probe hooks."""

    _probe = None  # (conf, output_dir, probe): built once per process

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(description="Importance probe")
        group.add_argument(
            "--importance_probe_conf", action=NestedDictAction, default=None,
            help="textual importance on a fixed probe set during training, e.g. {data_dir: "
            "dump/dev, num_utts: 16, every_n_epochs: 1, every_n_steps: 0, base_report: "
            "exp/importance/base, modality: text, batch_size: 8}; null = off. Cost per probe: "
            "num_utts × one forward+backward",
        )

    @classmethod
    def build_options(cls, args: argparse.Namespace) -> SpeechLLMTrainerOptions:
        return build_dataclass(SpeechLLMTrainerOptions, args)

    @classmethod
    def probe_for(cls, options):
        """The probe of these options (``None`` when off); built and checked once."""
        conf = getattr(options, "importance_probe_conf", None)
        if not conf:
            return None
        key = (repr(conf), str(options.output_dir))
        if cls._probe is None or cls._probe[0] != key:
            from espnet_ext.train.probe import ImportanceProbe, ProbeConfig
            from espnet_ext.utils.conf import build_from_conf

            probe_conf = build_from_conf(ProbeConfig, dict(conf), "importance_probe_conf")
            cls._probe = (key, ImportanceProbe(probe_conf, options.output_dir))
        return cls._probe[1]

    @classmethod
    def run(cls, *args, **kwargs) -> None:
        """ESPnet's ``Trainer.run`` with atomic ``torch.save`` and ``total_steps: auto``
        resolved (see the module docstring); with the probe's shift metrics on, the starting
        model (before ESPnet resumes or trains it) is first scored on the probe set."""
        bound = inspect.signature(Trainer.run).bind(*args, **kwargs).arguments
        resolve_total_steps(bound["schedulers"], bound["train_iter_factory"], bound["trainer_options"])
        probe = cls.probe_for(bound["trainer_options"])
        if probe is not None and probe.compares:  # the shift's reference: the model before any step
            probe.score_start(bound["model"])
        with atomic_trainer_saves([_espnet_trainer, _espnet_averaging]):
            super().run(*args, **kwargs)

    @classmethod
    def resume(cls, checkpoint, *args, **kwargs) -> None:
        """Resume from the newest loadable of ``checkpoint.pth`` / ``checkpoint.prev.pth``.

        A damaged newest file is named in the log and skipped; when none loads, a
        :class:`~espnet_ext.train.checkpoint.CheckpointError` names every file and why.
        """
        path, skipped = loadable_checkpoint(Path(checkpoint).parent)
        for why in skipped:
            logger.warning("skipping a damaged checkpoint: %s", why)
        if path is None:
            raise CheckpointError(f"{checkpoint}: no checkpoint to resume from")
        try:
            Trainer.resume(path, *args, **kwargs)
        except Exception as e:  # the archive opened, but its content does not load
            prev = path.with_name(PREVIOUS)
            if path.name == PREVIOUS or check_archive(prev) is not None:
                raise CheckpointError(f"{path}: cannot resume from it ({type(e).__name__}: {e})") from e
            logger.warning("%s does not load (%s: %s); resuming from %s", path, type(e).__name__, e, prev)
            Trainer.resume(prev, *args, **kwargs)
        if path.name == PREVIOUS:
            logger.warning("resumed from the previous checkpoint %s; the epoch after it is trained again", path)

    @classmethod
    def train_one_epoch(cls, model, iterator, optimizers, schedulers, scaler, reporter, summary_writer,
                        options, distributed_option) -> bool:
        probe = cls.probe_for(options)
        if probe is not None and probe.config.every_n_steps > 0:
            iterator = cls._probing(iterator, probe, model, reporter, summary_writer)
        return super().train_one_epoch(
            model=model, iterator=iterator, optimizers=optimizers, schedulers=schedulers, scaler=scaler,
            reporter=reporter, summary_writer=summary_writer, options=options,
            distributed_option=distributed_option,
        )

    @staticmethod
    def _probing(iterator, probe, model, reporter, summary_writer):
        """Yield the batches; when ESPnet asks for the next one, the previous iteration is
        complete (optimizer step included), so a due probe runs then."""
        for item in iterator:
            yield item
            step = reporter.get_total_count()
            if probe.due(step=step):
                scalars = probe.run(model, f"step{step}", reporter.get_epoch(), step)
                if summary_writer is not None:
                    for k, v in scalars.items():
                        summary_writer.add_scalar(f"importance_probe/{k}", v, step)

    @classmethod
    def validate_one_epoch(cls, model, iterator, reporter, options, distributed_option) -> None:
        super().validate_one_epoch(
            model=model, iterator=iterator, reporter=reporter, options=options,
            distributed_option=distributed_option,
        )
        probe = cls.probe_for(options)
        epoch = reporter.get_epoch()
        if probe is not None and probe.due(epoch=epoch):
            reporter.register(probe.run(model, f"epoch{epoch}", epoch))
            reporter.next()


def iterations_per_epoch(train_iter_factory) -> int:
    """Training iterations per epoch: ``num_iters_per_epoch`` when set, else the batch
    count of ESPnet's sequence iterator (``ValueError`` for other iterator kinds)."""
    n = getattr(train_iter_factory, "num_iters_per_epoch", None)
    if n is not None:
        return int(n)
    sampler = getattr(train_iter_factory, "sampler", None)
    if sampler is None:
        raise ValueError(f"scheduler_conf.total_steps: auto cannot count the batches of a "
                         f"{type(train_iter_factory).__name__}; set num_iters_per_epoch or an integer total_steps")
    return len(sampler)


def resolve_total_steps(schedulers, train_iter_factory, options) -> None:
    """Give every ``total_steps: auto`` scheduler the run's optimizer-step count; warn when
    an explicit ``total_steps`` differs from it."""
    from espnet_ext.optim.schedulers import WarmupCosineLR, optimizer_steps

    for scheduler in schedulers or []:
        if not isinstance(scheduler, WarmupCosineLR):
            continue
        try:
            iters = iterations_per_epoch(train_iter_factory)
        except ValueError:
            if scheduler.is_auto:
                raise
            continue  # an explicit integer: nothing to compare it with
        steps = optimizer_steps(options.max_epoch, iters, options.accum_grad)
        if scheduler.is_auto:
            scheduler.set_total_steps(steps)
            logger.info("scheduler_conf.total_steps: auto = %d (max_epoch %d × (%d iterations // accum_grad %d))",
                        steps, options.max_epoch, iters, options.accum_grad)
        elif scheduler.total_steps != steps:
            logger.warning("scheduler_conf.total_steps is %d but the run makes %d optimizer steps (max_epoch %d × "
                           "(%d iterations // accum_grad %d)); the cosine does not end with the run (use auto)",
                           scheduler.total_steps, steps, options.max_epoch, iters, options.accum_grad)
