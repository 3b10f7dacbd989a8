"""Sharded data-parallel training with PyTorch FSDP2 (an ADDITION to the paper's recipe).

The paper trains Llama-3.1-8B with full fine-tuning; fp32 master weights, gradients and
AdamW moments of 8B parameters (~128 GB) do not fit one accelerator, and ESPnet's
trainer only knows DDP (every rank holds everything).  This module shards them over the
ranks with PyTorch's own engine, FSDP2 (``torch.distributed.fsdp.fully_shard``), and
keeps the rest of the ESPnet workflow:

* :func:`shard_model` applies ``fully_shard`` to every decoder layer of the LLM (found
  generically: the largest ``ModuleList`` of one layer class inside ``model.llm``, plain
  or peft-wrapped) and then to the root ESPnet model (adaptor, embeddings, final norm,
  LM head).  The frozen speech encoder is *not* sharded by default (``ignored_params``:
  every rank keeps a full copy, as under DDP; it has no gradients or optimizer state),
  unless ``shard_encoder``.  Parameters keep their names, so the optimizer groups of the task
  (adaptor / LLM, or eq. 3's one group per layer) are built by name on the sharded
  parameters exactly as unsharded; :func:`group_signature` and
  :func:`check_sharded_groups` verify that on every rank.
* Mixed precision is FSDP2's ``MixedPrecisionPolicy``: the sharded parameters (the
  master weights the optimizer updates) stay fp32, the gathered copies used in forward
  and backward are ``param_dtype`` (bf16), gradients are reduced in ``reduce_dtype``
  (fp32).
* Gradient averaging matches ESPnet's DDP convention: ESPnet's ``train_one_epoch``
  multiplies the token-weighted loss by the world size because DDP averages gradients;
  FSDP2's reduce-scatter averages too, so every rank's gradient shard is that of the
  token-weighted mean loss of the global batch (what one process would get).
* :class:`ShardedSpeechLLMTrainer` runs ESPnet's epoch loop (reporter, ESPnet's own
  ``train_one_epoch`` / ``validate_one_epoch``, schedulers, best-model symlinks,
  ``keep_nbest_models``, n-best averaging) without the DDP wrapper, and saves with
  ``torch.distributed.checkpoint`` (DCP) instead of rank 0's ``torch.save``:

  - ``checkpoint.dcp/``: model + optimizer shards (every rank writes its own) plus
    ``trainer_state.pth`` (reporter, schedulers); written to ``checkpoint.dcp.tmp/``,
    renamed by rank 0 after a barrier, the previous one kept as ``checkpoint.dcp.prev/``;
    ``--resume true`` loads it (DCP reshards on load: the same or another number of
    ranks; an unsharded run, one process or DDP, resumes from it too, through a
    ``checkpoint.pth`` written from it, tested 2 ranks -> 1 process).  All ranks must see
    one shared file system;
  - ``<epoch>epoch.pth``: the consolidated full state dict (rank 0, CPU), with the keys
    of an unsharded ESPnet checkpoint, so decoding, averaging and scoring read it
    unchanged.

* :func:`consolidate` turns a DCP checkpoint into plain files without any process
  group: the ESPnet ``model.pth``, the HF LLM folder and the adaptor weights (for LoRA,
  the peft adapter folder and the merged LLM, as ``models/lora.export_lora`` writes).

* ImpAnchor (``--anchor_conf``): :func:`shard_model` builds the anchor after sharding,
  its base values and stiffness laid out like each parameter's shard
  (``ImportanceAnchor.from_report_sharded``); the penalty is computed on the local shards
  and all-reduced.

``tests/test_sharding.py`` checks that two sharded processes train like one process on
the same global batches (Full-FT, Layer-LR, ImpAnchor, LoRA; fp32), that a resumed run
(also one killed with SIGKILL mid-epoch) equals the unbroken one, and that the
consolidated checkpoints load into unsharded models.

Not supported under sharding (each raises at start): the importance probe, ESPnet's
``--use_amp`` grad scaler (use ``param_dtype``), ``--sharded_ddp``, and DeepSpeed.  Activation
checkpointing recomputes each decoder layer in backward.  The shared prompt-prefix cache
(``model_conf.share_prompt_prefix``) is turned off in training: its prefix pass reaches a
decoder layer's gradients only through the key/value cache, i.e. after FSDP2 has
resharded that layer and reduced its gradients (and a recomputed layer would extend the
cache twice).  Without it every sample runs its own prefix: the same function (tested
equal), more compute.  Decoding the consolidated checkpoint shares the prefix as usual.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from espnet_ext.train.trainer import SpeechLLMTrainer

logger = logging.getLogger(__name__)

ENGINES = ("fsdp2",)
DTYPES = ("float32", "bfloat16", "float16")
CHECKPOINT_DIR = "checkpoint.dcp"
TRAINER_STATE = "trainer_state.pth"


@dataclass
class ShardingConfig:
    """``--sharding_conf`` options (null = no sharding: ESPnet's DDP path)."""

    engine: str = "fsdp2"  # the sharding engine; PyTorch FSDP2 (fully_shard) is the only one
    reshard_after_forward: bool = True  # free gathered layers after forward (ZeRO-3); False: ZeRO-2-like
    param_dtype: str = "bfloat16"  # dtype of the gathered weights in forward/backward; shards stay fp32
    reduce_dtype: str = "float32"  # dtype of the gradient reduce-scatter
    activation_checkpointing: bool = False  # recompute each decoder layer in backward (less memory, ~1 more forward)
    shard_encoder: bool = False  # also shard the frozen speech encoder (default: full copy per rank)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"sharding_conf.engine must be one of {ENGINES}, got {self.engine!r}")
        for key in ("param_dtype", "reduce_dtype"):
            if getattr(self, key) not in DTYPES:
                raise ValueError(f"sharding_conf.{key} must be one of {DTYPES}, got {getattr(self, key)!r}")

    def mp_policy(self, cast_forward_inputs: bool = True):
        """FSDP2's ``MixedPrecisionPolicy`` of these options."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(param_dtype=getattr(torch, self.param_dtype),
                                    reduce_dtype=getattr(torch, self.reduce_dtype),
                                    cast_forward_inputs=cast_forward_inputs)


# --------------------------------------------------------------------------------------
# sharding the model
# --------------------------------------------------------------------------------------
def decoder_layers(llm: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a (plain or peft-wrapped) HF causal LM: the ``ModuleList``
    with the most parameters whose entries are all of one class."""
    best, size = None, 0
    for module in llm.modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        n = sum(p.numel() for p in module.parameters())
        if n > size:
            best, size = module, n
    if best is None:
        raise ValueError(f"{type(llm).__name__} has no ModuleList of decoder layers to shard")
    return best


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether :func:`shard_model` (FSDP2) was applied to ``model``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(model: torch.nn.Module, config: ShardingConfig, mesh=None, anchor=None):
    """Apply FSDP2 in place: each decoder layer, (optionally the encoder,) then the root.

    Call after ``torch.distributed`` is initialised and the model is on its device, and
    before building the optimizer (it must see the sharded parameters).  ``anchor`` (an
    ``AnchorConfig``): attach ImpAnchor built on the shards (each rank holds the base
    values and stiffness of its own rows).  Returns the 1-D device mesh over all ranks.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():
        raise RuntimeError("sharding needs torch.distributed (run under torchrun, or --ngpu > 1)")
    if getattr(model, "anchor", None) is not None:
        raise ValueError("the model already holds a whole-tensor anchor; under sharding the task builds it "
                         "on the shards (shard_model(..., anchor=AnchorConfig))")
    bad = [(n, p.dtype) for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if bad:
        raise ValueError(f"sharded training keeps fp32 master weights; {bad[0][0]} is {bad[0][1]} (use "
                         "--train_dtype float32 and llm_conf.torch_dtype float32; sharding_conf.param_dtype "
                         "sets the compute dtype)")
    device = next(model.parameters()).device
    if mesh is None:
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = config.mp_policy()
    layers = decoder_layers(model.llm)
    if getattr(model, "share_prompt_prefix", False):
        logger.info("sharded training: share_prompt_prefix turned off (the shared prefix pass feeds "
                    "gradients into a layer only through the key/value cache, after FSDP2 resharded it)")
        model.share_prompt_prefix = False
    if config.activation_checkpointing:
        from torch.distributed._composable import checkpoint

        # a training forward builds a key/value cache by default (config.use_cache), which a
        # recomputed layer would extend twice; decoding asks for its caches explicitly
        model.llm.model.config.use_cache = False
        for layer in layers:
            checkpoint(layer)  # composable: parameter names unchanged
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=config.reshard_after_forward, mp_policy=policy)
    ignored = None
    encoder = getattr(model, "encoder", None)
    if encoder is not None:
        if config.shard_encoder:
            fully_shard(encoder, mesh=mesh, reshard_after_forward=True, mp_policy=policy)
        else:
            ignored = set(encoder.parameters())
    # the root (adaptor, embeddings, final norm, LM head): inputs are left as they come
    # (a full-precision encoder may take them), the parts cast to their own weights
    fully_shard(model, mesh=mesh, reshard_after_forward=config.reshard_after_forward,
                mp_policy=config.mp_policy(cast_forward_inputs=False), ignored_params=ignored)
    logger.info("FSDP2 over %d ranks (%s): %d decoder layers + root, param %s / reduce %s, "
                "reshard_after_forward=%s, activation checkpointing %s, encoder %s",
                mesh.size(), device.type, len(layers), config.param_dtype, config.reduce_dtype,
                config.reshard_after_forward, config.activation_checkpointing,
                "sharded" if config.shard_encoder else ("replicated" if encoder is not None else "none"))
    if anchor is not None:
        from espnet_ext.optim.anchor import ImportanceAnchor

        model.anchor = ImportanceAnchor.from_report_sharded(model, anchor)
    return mesh


# --------------------------------------------------------------------------------------
# optimizer groups under sharding
# --------------------------------------------------------------------------------------
GroupSignature = List[Tuple[str, float, Tuple[str, ...]]]


def group_signature(model: torch.nn.Module, groups: Sequence) -> GroupSignature:
    """``[(group name, lr, parameter names)]`` of ``ParamGroup``s or optimizer groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for g in groups:
        d = g if isinstance(g, dict) else g.as_dict()
        out.append((str(d.get("name")), float(d.get("initial_lr", d["lr"])),
                    tuple(names.get(id(p), "?") for p in d["params"])))
    return out


def check_sharded_groups(expected: GroupSignature, optimizer: torch.optim.Optimizer,
                         model: torch.nn.Module) -> None:
    """Every rank's optimizer has the groups (names, lrs, members) of the unsharded
    grouping ``expected``, over sharded parameters; raises ``RuntimeError`` otherwise."""
    from torch.distributed.tensor import DTensor

    got = group_signature(model, optimizer.param_groups)
    if got != expected:
        diff = [(e[:2], g[:2]) for e, g in zip(expected, got) if e != g] or [(len(expected), len(got))]
        raise RuntimeError(f"sharded optimizer groups differ from the unsharded grouping: {diff[:3]}")
    plain = [n for (_, _, names), g in zip(got, optimizer.param_groups) for n, p in zip(names, g["params"])
             if not isinstance(p, DTensor)]
    if plain:
        raise RuntimeError(f"optimizer parameters are not sharded: {plain[:3]}")
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, got)
    if any(other != got for other in everyone):
        raise RuntimeError("the ranks disagree on the optimizer groups")
    logger.info("sharded optimizer: %d groups, lrs and members equal the unsharded grouping on %d ranks",
                len(got), len(everyone))


# --------------------------------------------------------------------------------------
# sharded checkpoints (DCP)
# --------------------------------------------------------------------------------------
def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def full_model_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0's CPU (empty on the other ranks); collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(output_dir: Path, model, optimizers, schedulers, reporter) -> Path:
    """Write ``checkpoint.dcp/`` atomically (module docstring); collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = output_dir / CHECKPOINT_DIR
    tmp, prev = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".prev")
    if _rank0() and tmp.exists():
        shutil.rmtree(tmp)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizers)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    if _rank0():
        torch.save({"reporter": reporter.state_dict(),
                    "schedulers": [s.state_dict() if s is not None else None for s in schedulers],
                    "world_size": dist.get_world_size()}, tmp / TRAINER_STATE)
    dist.barrier()  # every shard is complete
    if _rank0():
        if final.exists():
            if prev.exists():
                shutil.rmtree(prev)
            os.replace(final, prev)
        os.replace(tmp, final)
        fd = os.open(output_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    dist.barrier()
    return final


def sharded_checkpoint(output_dir: Path) -> Optional[Path]:
    """The newest complete ``checkpoint.dcp`` (or its ``.prev``) of ``output_dir``."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".prev"):
        path = Path(output_dir) / name
        if (path / ".metadata").is_file() and (path / TRAINER_STATE).is_file():
            return path
    return None


def checkpoint_from_dcp(path: Path, model: torch.nn.Module, optimizers) -> dict:
    """ESPnet's ``checkpoint.pth`` content (model, reporter, optimizers, schedulers) from a
    ``checkpoint.dcp`` saved by any number of ranks, for an *unsharded* ``model`` and its
    optimizers (this process alone reads it; DCP reassembles the shards).  ``model`` and
    ``optimizers`` are loaded with its state on the way."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizers)
    state = {"model": model_sd, "optim": optim_sd}
    with warnings.catch_warnings():  # DCP warns whenever it loads in one process, as meant here
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(state, checkpoint_id=str(path), no_dist=True)
    set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optim"])
    trainer_state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=False)
    return {"model": model.state_dict(), "reporter": trainer_state["reporter"],
            "optimizers": [o.state_dict() for o in optimizers], "schedulers": trainer_state["schedulers"],
            "scaler": None, "sharded_world_size": trainer_state.get("world_size")}


def load_sharded(path: Path, model, optimizers, schedulers, reporter) -> None:
    """Load a ``checkpoint.dcp`` into the sharded model, optimizers, schedulers and reporter."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizers)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optim"])
    trainer_state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=False)
    reporter.load_state_dict(trainer_state["reporter"])
    for scheduler, s in zip(schedulers, trainer_state["schedulers"]):
        if scheduler is not None:
            scheduler.load_state_dict(s)
    logger.info("resumed from %s (saved by %d ranks)", path, trainer_state.get("world_size", -1))


# --------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------
class ShardedSpeechLLMTrainer(SpeechLLMTrainer):
    """:class:`SpeechLLMTrainer` whose ``run`` trains an FSDP2-sharded model.

    With an unsharded model (``sharding_conf: null``) ``run`` is ESPnet's (DDP or one
    process) unchanged.  With a sharded one it is ESPnet's epoch loop without the DDP
    wrapper and with DCP checkpoints (module docstring); ``train_one_epoch`` and
    ``validate_one_epoch`` are ESPnet's own.
    """

    @classmethod
    def run(cls, model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
            plot_attention_iter_factory, trainer_options, distributed_option) -> None:
        if not is_sharded(model):
            cls._resume_unsharded_from_dcp(model, optimizers, trainer_options)
            return super().run(model=model, optimizers=optimizers, schedulers=schedulers,
                               train_iter_factory=train_iter_factory, valid_iter_factory=valid_iter_factory,
                               plot_attention_iter_factory=plot_attention_iter_factory,
                               trainer_options=trainer_options, distributed_option=distributed_option)
        with warnings.catch_warnings():
            # ESPnet's (loss, stats, weight) are 1-element views (force_gatherable); FSDP2 warns
            # about in-place ops on views, but ESPnet's loop scales the loss out of place first
            # (``(loss * weight).sum()``) and only then in place
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
            cls._run_sharded(model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
                             trainer_options, distributed_option)

    @classmethod
    def _run_sharded(cls, model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
                     trainer_options, distributed_option) -> None:
        import espnet2.main_funcs.average_nbest_models as espnet_averaging
        from espnet2.schedulers.abs_scheduler import AbsEpochStepScheduler, AbsValEpochStepScheduler
        from espnet2.torch_utils.set_all_random_seed import set_all_random_seed
        from espnet2.train.reporter import Reporter

        from espnet_ext.train.checkpoint import atomic_torch_save, atomic_trainer_saves

        options = trainer_options
        cls._check_options(options, distributed_option)
        keep = options.keep_nbest_models
        keep_nbest = [keep] if isinstance(keep, int) else (list(keep) or [1])
        output_dir = Path(options.output_dir)
        reporter = Reporter()
        if options.resume:
            path = sharded_checkpoint(output_dir)
            if path is not None:
                load_sharded(path, model, optimizers, schedulers, reporter)
        start_epoch = reporter.get_epoch() + 1
        if start_epoch == options.max_epoch + 1:
            logger.warning("The training has already reached at max_epoch: %d", start_epoch)
        train_writer = valid_writer = None
        if options.use_tensorboard and _rank0():
            from torch.utils.tensorboard import SummaryWriter

            train_writer = SummaryWriter(str(output_dir / "tensorboard" / "train"))
            valid_writer = SummaryWriter(str(output_dir / "tensorboard" / "valid"))
        start_time = time.perf_counter()
        for iepoch in range(start_epoch, options.max_epoch + 1):
            if iepoch != start_epoch:
                left = (time.perf_counter() - start_time) / (iepoch - start_epoch) * (options.max_epoch - iepoch + 1)
                logger.info("%d/%depoch started. Estimated time to finish: %.0f s", iepoch, options.max_epoch, left)
            else:
                logger.info("%d/%depoch started", iepoch, options.max_epoch)
            set_all_random_seed(options.seed + iepoch)
            reporter.set_epoch(iepoch)
            # 1. Train and validate (ESPnet's loops; FSDP2 reduces the gradients)
            with reporter.observe("train") as sub_reporter:
                all_steps_are_invalid = cls.train_one_epoch(
                    model=model, optimizers=optimizers, schedulers=schedulers,
                    iterator=train_iter_factory.build_iter(iepoch), reporter=sub_reporter, scaler=None,
                    summary_writer=train_writer, options=options, distributed_option=distributed_option)
            with reporter.observe("valid") as sub_reporter:
                cls.validate_one_epoch(model=model, iterator=valid_iter_factory.build_iter(iepoch),
                                       reporter=sub_reporter, options=options,
                                       distributed_option=distributed_option)
            # 2. Epoch-wise schedulers
            for scheduler in schedulers:
                if isinstance(scheduler, AbsValEpochStepScheduler):
                    scheduler.step(reporter.get_value(*options.val_scheduler_criterion))
                elif isinstance(scheduler, AbsEpochStepScheduler):
                    scheduler.step()
            # 3. Report (rank 0; the statistics are all-reduced already)
            if _rank0():
                logger.info(reporter.log_message())
                if options.use_matplotlib:
                    reporter.matplotlib_plot(output_dir / "images")
                if train_writer is not None:
                    reporter.tensorboard_add_scalar(train_writer, key1="train")
                    reporter.tensorboard_add_scalar(valid_writer, key1="valid")
            # 4. The consolidated model, then the sharded training state (collectives); in
            # this order a crash in between repeats the epoch and never leaves a checkpoint
            # whose reporter names an epoch file that was not written
            full = full_model_state_dict(model)
            if _rank0():
                atomic_torch_save(full, output_dir / f"{iepoch}epoch.pth")
            del full
            save_sharded(output_dir, model, optimizers, schedulers, reporter)
            if _rank0():
                with atomic_trainer_saves([espnet_averaging]):
                    cls._link_and_prune(reporter, output_dir, iepoch, options, keep_nbest)
            dist.barrier()
            # 5. Stop on invalid gradients or early stopping
            if all_steps_are_invalid:
                logger.warning("The gradients at all steps are invalid in this epoch; training "
                               "stopped at %d epoch", iepoch)
                break
            if options.patience is not None and reporter.check_early_stopping(
                    options.patience, *options.early_stopping_criterion):
                break
        else:
            logger.info("The training was finished at %d epochs", options.max_epoch)
        if _rank0():
            with atomic_trainer_saves([espnet_averaging]):
                espnet_averaging.average_nbest_models(
                    reporter=reporter, output_dir=output_dir, best_model_criterion=options.best_model_criterion,
                    nbest=keep_nbest)
        dist.barrier()

    @staticmethod
    def _resume_unsharded_from_dcp(model, optimizers, options) -> None:
        """``--resume true`` without sharding in a run dir that holds only a sharded
        checkpoint (a sharded run continued by one process or by DDP): rank 0 writes
        ``checkpoint.pth`` from ``checkpoint.dcp`` (:func:`checkpoint_from_dcp`), which
        ESPnet's resume then reads."""
        from espnet_ext.train.checkpoint import atomic_torch_save

        output_dir = Path(options.output_dir)
        if not options.resume or any((output_dir / n).exists() for n in ("checkpoint.pth", "checkpoint.prev.pth")):
            return
        path = sharded_checkpoint(output_dir)
        if path is None:
            return
        if _rank0():
            state = checkpoint_from_dcp(path, model, optimizers)
            logger.info("resuming an unsharded run from the sharded checkpoint %s (saved by %s ranks)",
                        path, state.pop("sharded_world_size"))
            atomic_torch_save(state, output_dir / "checkpoint.pth")
        if dist.is_initialized():
            dist.barrier()

    @classmethod
    def _check_options(cls, options, distributed_option) -> None:
        if not distributed_option.distributed:
            raise ValueError("a sharded model needs distributed training (torchrun / --ngpu > 1)")
        for key, why in (("use_amp", "use sharding_conf.param_dtype (FSDP2 mixed precision)"),
                         ("sharded_ddp", "sharding_conf is already sharded"),
                         ("importance_probe_conf", "the probe needs whole parameters"),
                         ("use_wandb", "not wired for sharded runs")):
            if getattr(options, key, None):
                raise ValueError(f"--{key} is not supported with --sharding_conf: {why}")

    @staticmethod
    def _link_and_prune(reporter, output_dir: Path, iepoch: int, options, keep_nbest: List[int]) -> None:
        """ESPnet's steps 5-6 on rank 0: ``latest.pth`` and best-model links, the n-best
        averages at their interval, removal of epochs outside the n-best."""
        from espnet2.main_funcs.average_nbest_models import average_nbest_models

        def link(name: str) -> None:
            p = output_dir / name
            if p.is_symlink() or p.exists():
                p.unlink()
            p.symlink_to(f"{iepoch}epoch.pth")

        link("latest.pth")
        improved = []
        for phase, k, mode in options.best_model_criterion:
            if reporter.has(phase, k) and reporter.get_best_epoch(phase, k, mode) == iepoch:
                link(f"{phase}.{k}.best.pth")
                improved.append(f"{phase}.{k}")
        if improved:
            logger.info("The best model has been updated: %s", ", ".join(improved))
        else:
            logger.info("There are no improvements in this epoch")
        nbests = set().union(*[set(reporter.sort_epochs(ph, k, m)[: max(keep_nbest)])
                               for ph, k, m in options.best_model_criterion if reporter.has(ph, k)])
        if options.nbest_averaging_interval > 0 and iepoch % options.nbest_averaging_interval == 0:
            average_nbest_models(reporter=reporter, output_dir=output_dir,
                                 best_model_criterion=options.best_model_criterion, nbest=keep_nbest,
                                 suffix=f"till{iepoch}epoch")
        for e in range(1, iepoch):
            p = output_dir / f"{e}epoch.pth"
            if p.exists() and e not in nbests:
                p.unlink()
                logger.info("The model file was removed: %s", p)


# --------------------------------------------------------------------------------------
# consolidation (no process group needed)
# --------------------------------------------------------------------------------------
def load_dcp_model(model: torch.nn.Module, path: Path) -> None:
    """Load the model part of a ``checkpoint.dcp`` into an unsharded ``model`` (strict)."""
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # DCP warns whenever it loads in one process, as meant here
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    model.load_state_dict(state["model"], strict=True)


def consolidate(
    model: torch.nn.Module, output_dir: str | Path, out_dir: Optional[str | Path] = None,
    lora: bool = False, adaptor_conf: Optional[dict] = None,
) -> Dict[str, Path]:
    """Plain files from the newest DCP checkpoint of a sharded run (one process).

    ``model`` is the run's unsharded model, built from ``<output_dir>/config.yaml`` by the
    caller (``espnet_ext.bin.consolidate_sharded``); its weights are replaced by the
    checkpoint's.  Writes ``<out_dir>/model.pth`` (ESPnet layout) and, for Full-FT /
    Layer-LR, ``llm/`` (HF ``save_pretrained`` + tokenizer) and ``adaptor.safetensors``;
    for LoRA (``lora``), ``adapter/`` (peft format), ``adaptor.safetensors`` and
    ``merged/`` (plain HF).  ``out_dir`` defaults to ``<output_dir>/consolidated``.
    """
    import json

    from safetensors.torch import save

    from espnet_ext.utils.atomic import atomic_dir, atomic_open

    output_dir = Path(output_dir)
    path = sharded_checkpoint(output_dir)
    if path is None:
        raise FileNotFoundError(f"{output_dir}: no complete {CHECKPOINT_DIR}/ to consolidate")
    load_dcp_model(model, path)
    out = Path(out_dir) if out_dir is not None else output_dir / "consolidated"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": out / "model.pth"}
    with atomic_open(paths["model"], "wb") as f:
        torch.save(model.state_dict(), f)
    if lora:
        from espnet_ext.models.lora import export_lora

        paths.update(export_lora(model, out, adaptor_conf=dict(adaptor_conf or {})))
        return paths
    paths["llm"], paths["adaptor"] = out / "llm", out / "adaptor.safetensors"
    with atomic_dir(paths["llm"]) as tmp:
        model.llm.model.save_pretrained(tmp)
        model.llm.tokenizer.save_pretrained(tmp)
    state = {k: v.detach().cpu().contiguous() for k, v in model.adaptor.state_dict().items()}
    meta = {"adaptor_class": type(model.adaptor).__name__, "adaptor_conf": json.dumps(dict(adaptor_conf or {}))}
    with atomic_open(paths["adaptor"], "wb") as f:
        f.write(save(state, metadata=meta))
    logger.info("consolidated %s into %s", path, out)
    return paths
