"""Eq. 2, Table 1 and the report on an FSDP2-sharded model (an addition: the paper's
analysis at a scale where no rank holds the whole model).

The model is sharded with FSDP2 (``fully_shard``, one dim-0 shard of every parameter per
rank, as ``espnet_ext.train.sharding.shard_model`` lays it out) before anything here
runs; the job that loads it (:mod:`espnet_ext.analysis.score`) merges LoRA adapters and
leaves only the scored parameters trainable first.  Nothing below gathers a whole score
or gradient vector on any rank:

* :func:`score_importance_sharded` — eq. 2 with the signed gradient sum of
  :func:`~espnet_ext.importance.scoring.score_importance`: the ranks take every
  ``world``-th batch, each backward's reduce-scatter adds the ranks' gradients into the
  sharded ``.grad`` (fp32), so after the last batch each rank holds its shard of
  Σ_b g_b, and I = |θ ⊙ Σ_b g_b| is computed on that shard.  Scores are DTensors laid out
  like their parameters.  Ranks with fewer batches run a zero-weighted batch so that
  every rank makes the same collectives.  The per-batch alternative (``abs_per_batch``)
  needs each batch's own gradient, which the reduce-scatter never shows; it is refused.
* :func:`sharded_masks` — Table 1's selections: the top/bottom thresholds come from the
  exact radix search of :mod:`espnet_ext.importance.sharded_threshold` (the same value
  the one-process search finds, ties kept together by ``>=`` / ``<=``), the random mask
  draws the one-process coin flips (each rank generates every tensor's flips from the
  same seeded generator, one tensor at a time, and keeps its rows), so every mask
  decision equals the one-process mask's on the same scores.
* :func:`deactivated_shards` / :func:`perplexity_sharded` — zero the selected entries of
  the local shards, measure perplexity data-parallel (token-weighted sums all-reduced),
  restore bit-exactly (a checksum of every touched shard is compared on every rank).
* :func:`write_report_sharded` — the report format of :mod:`espnet_ext.importance.report`:
  the summary's sums are all-reduced, its thresholds come from the radix search, and
  ``scores.safetensors`` is written once: rank 0 creates a temporary file with the
  safetensors header at its full size, each rank writes its rows' bytes at their offsets,
  and rank 0 renames the complete file into place (all ranks must share the file system,
  as for DCP checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Literal, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from espnet_ext.importance.deactivate import _checksum
from espnet_ext.importance.params import select_parameters
from espnet_ext.importance.report import (
    QUANTILES,
    SCORES_FILE,
    SUMMARY_FILE,
    assemble_summary,
)
from espnet_ext.importance.scoring import (
    ImportanceConfig,
    ImportanceResult,
    check_score_dtype,
    training_modes_kept,
)
from espnet_ext.importance.sharded_threshold import thresholds_sharded
from espnet_ext.importance.threshold import selection_mask
from espnet_ext.utils.atomic import atomic_write_text

logger = logging.getLogger(__name__)

_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16"}


# --------------------------------------------------------------------------------------
# shards
# --------------------------------------------------------------------------------------
def _rank_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (the tensor itself when it is not one)."""
    return t.to_local() if is_dtensor(t) else t


def shard_rows(t: torch.Tensor) -> Tuple[int, int]:
    """``[start, stop)``: the rows (dim 0) of the whole tensor this rank's shard holds.

    FSDP2 shards dim 0 as ``torch.chunk`` does (``ceil(n / world)`` rows a rank, the last
    ranks possibly fewer or none).  A plain tensor holds all its rows.
    """
    if not is_dtensor(t):
        return 0, t.shape[0]
    from torch.distributed.tensor import Shard

    if len(t.placements) != 1 or t.placements[0] != Shard(0):
        raise ValueError(f"sharded analysis expects FSDP2's Shard(0) layout, got {t.placements}")
    mesh = t.device_mesh
    n, world, rank = t.shape[0], mesh.size(), mesh.get_local_rank()
    chunk = -(-n // world)
    start = min(rank * chunk, n)
    stop = min(start + chunk, n)
    if t.to_local().shape[0] != stop - start:
        raise ValueError(f"shard of {tuple(t.shape)} on rank {rank} has {t.to_local().shape[0]} rows, "
                         f"expected {stop - start}")
    return start, stop


def like(values: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """``values`` (a local shard) as a DTensor laid out like ``template`` (plain if it is)."""
    if not is_dtensor(template):
        return values
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(values, template.device_mesh, template.placements, run_check=False,
                              shape=template.shape, stride=template.stride())


def _device_of(tensors: Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(tensors.values())).device if tensors else torch.device("cpu")


def _all_reduce_(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _agree(failed: bool, device: torch.device) -> bool:
    """True when any rank failed (a collective: every rank learns it)."""
    flag = _all_reduce_(torch.tensor([int(failed)], dtype=torch.int64, device=device))
    return bool(int(flag[0]))


def _reshard_all(model: torch.nn.Module) -> None:
    """Free every gathered (unsharded) parameter, so that the next forward gathers the
    shards again: a module kept unsharded after a no-grad forward (FSDP2 keeps the root's)
    would otherwise compute with stale copies of shards changed in place."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def _rank_batches(batches: Sequence, rank: int, world: int) -> Tuple[List, int]:
    """This rank's batches (every ``world``-th) and the number of steps every rank takes."""
    return list(batches[rank::world]), -(-len(batches) // world)


# --------------------------------------------------------------------------------------
# eq. 2
# --------------------------------------------------------------------------------------
def score_importance_sharded(
    model: torch.nn.Module, batches: Sequence[Dict[str, torch.Tensor]], config: ImportanceConfig,
) -> ImportanceResult:
    """Eq. 2 on a sharded model over ``batches`` (all of them, the same list on every rank;
    each rank runs every ``world``-th); collective.  Scores are DTensor shards.

    The scored parameters (``config.groups``) must be the model's only trainable ones
    (set before sharding).  Existing gradients are set aside and put back; every
    submodule's train/eval flag is restored; the model runs in eval mode.
    """
    if config.accumulate != "signed_sum":
        raise ValueError(f"importance accumulate={config.accumulate!r} is not available under sharding: "
                         "each batch's own gradient never exists on one rank (the reduce-scatter sums "
                         "the ranks' gradients); use signed_sum (eq. 2)")
    batches = list(batches)
    if not batches:
        raise ValueError("importance scoring got no batches")
    params = select_parameters(model, config.groups)
    plain = [n for n, p in params.items() if not is_dtensor(p)]
    if plain:
        raise ValueError(f"sharded scoring needs an FSDP2-sharded model; {plain[0]} is not sharded")
    frozen = [n for n, p in params.items() if not p.requires_grad]
    if frozen:
        raise ValueError(f"sharded scoring: {frozen[0]} does not require grad (make the scored parameters "
                         "trainable before sharding)")
    scored = {id(p) for p in params.values()}
    extra = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in scored]
    if extra:
        logger.warning("sharded scoring: %d other trainable parameters (e.g. %s) get gradients too",
                       len(extra), extra[0])
    rank, world = _rank_world()
    mine, steps = _rank_batches(batches, rank, world)
    stashed = {n: p.grad for n, p in params.items()}
    device = _device_of(params)
    n_batches = n_utts = 0
    loss_sum = 0.0
    with training_modes_kept(model), warnings.catch_warnings():
        # the ESPnet model returns 1-element views (force_gatherable); nothing changes them in place
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        model.eval()  # no dropout: the estimate is of the deterministic loss
        try:
            for p in params.values():
                p.grad = None
            with torch.enable_grad():
                for i in range(steps):
                    real = i < len(mine)
                    batch = mine[i] if real else batches[0]  # a zero-weighted stand-in
                    loss, _, _ = model(**batch, modality=config.modality)
                    # the reduce-scatter averages over the ranks: × world makes it the sum
                    (loss.sum() * (world if real else 0.0)).backward()
                    if real:
                        n_batches += 1
                        n_utts += len(next(iter(batch.values())))
                        loss_sum += float(loss.detach().sum())
            scores: Dict[str, torch.Tensor] = {}
            for n, p in params.items():
                g = p.grad
                if g is None:  # no batch reached it: Σ g = 0
                    s = torch.zeros_like(local(p), dtype=torch.float32)
                else:
                    s = (local(p).detach().float() * local(g).float()).abs_()
                scores[n] = like(s, p)
        finally:
            for n, p in params.items():
                p.grad = stashed[n]
    stats = _all_reduce_(torch.tensor([n_batches, n_utts, loss_sum], dtype=torch.float64, device=device))
    n_batches, n_utts, loss_sum = int(stats[0]), int(stats[1]), float(stats[2])
    return ImportanceResult(scores, n_batches, n_utts, loss_sum / n_batches)


# --------------------------------------------------------------------------------------
# Table 1 on the shards
# --------------------------------------------------------------------------------------
def sharded_masks(
    scores: Mapping[str, torch.Tensor], fraction: float, which: Literal["top", "bottom", "random"],
    scope: Literal["global", "per_matrix"] = "global", seed: int = 0,
) -> Dict[str, torch.Tensor]:
    """This rank's rows of :func:`~espnet_ext.importance.deactivate.deactivation_masks` of
    the whole scores (identical decisions, ties and coin flips included); collective."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if which == "random":
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for n, s in scores.items():  # the one-process draw, tensor by tensor; this rank's rows
            start, stop = shard_rows(s)
            out[n] = torch.rand(s.shape, generator=gen)[start:stop] < fraction
        return out
    if which not in ("top", "bottom"):
        raise ValueError(f"which must be top, bottom or random, got {which!r}")
    shards = {n: local(s) for n, s in scores.items()}
    device = _device_of(shards)
    if scope == "global":
        (t,) = thresholds_sharded([(list(shards.values()), fraction, which)], device)
        return {n: selection_mask(s, t, which) for n, s in shards.items()}
    if scope == "per_matrix":
        ts = thresholds_sharded([([s], fraction, which) for s in shards.values()], device)
        return {n: selection_mask(s, t, which) for (n, s), t in zip(shards.items(), ts)}
    raise ValueError(f"scope must be global or per_matrix, got {scope!r}")


@contextlib.contextmanager
def deactivated_shards(params: Mapping[str, torch.nn.Parameter], masks: Mapping[str, torch.Tensor],
                       model: Optional[torch.nn.Module] = None) -> Iterator[int]:
    """Zero ``masks[n]`` of each parameter's local shard inside the block, restore
    bit-exactly after (checked on every rank); yields the number zeroed over all ranks.
    ``model`` (the FSDP2 root) is resharded around each change."""
    saved: Dict[str, Tuple[torch.Tensor, int]] = {}
    device = _device_of(params)
    if model is not None:
        _reshard_all(model)
    with torch.no_grad():
        n_local = 0
        for n, mask in masks.items():
            shard = local(params[n])
            m = mask.to(shard.device)
            saved[n] = (shard[m].clone(), _checksum(shard))
            shard[m] = 0
            n_local += int(m.sum())
    count = int(_all_reduce_(torch.tensor([n_local], dtype=torch.int64, device=device))[0])
    try:
        yield count
    finally:
        if model is not None:
            _reshard_all(model)
        bad = []
        with torch.no_grad():
            for n, (values, checksum) in saved.items():
                shard = local(params[n])
                shard[masks[n].to(shard.device)] = values
                if _checksum(shard) != checksum:
                    bad.append(n)
        if _agree(bool(bad), device):
            raise RuntimeError(f"restore after deactivation is not bit-exact on some rank (here: {bad[:3]})")


@torch.no_grad()
def perplexity_sharded(model: torch.nn.Module, batches: Sequence[Dict[str, torch.Tensor]], modality: str) -> float:
    """:func:`~espnet_ext.importance.deactivate.perplexity` with every rank taking every
    ``world``-th batch (token-weighted sums all-reduced); collective."""
    batches = list(batches)
    rank, world = _rank_world()
    mine, steps = _rank_batches(batches, rank, world)
    was = model.training
    model.eval()
    total = tokens = 0.0
    try:
        for i in range(steps):
            real = i < len(mine)
            loss, _, weight = model(**(mine[i] if real else batches[0]), modality=modality)
            if real:
                total += float(loss.sum()) * float(weight.sum())
                tokens += float(weight.sum())
    finally:
        model.train(was)
    device = next(model.parameters()).device
    sums = _all_reduce_(torch.tensor([total, tokens], dtype=torch.float64, device=device)).tolist()
    return math.exp(sums[0] / sums[1]) if sums[0] / sums[1] < 700 else float("inf")


# --------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------
def summarize_sharded(scores: Mapping[str, torch.Tensor], meta: Optional[dict] = None) -> dict:
    """:func:`~espnet_ext.importance.report.summarize` of the whole scores from the shards
    (sums all-reduced in float64, thresholds by the radix search); collective, the same
    summary on every rank."""
    shards = {n: local(s) for n, s in scores.items()}
    device = _device_of(shards)
    sums = torch.tensor([float(s.double().sum()) for s in shards.values()], dtype=torch.float64, device=device)
    sums = dict(zip(shards, _all_reduce_(sums).cpu().tolist()))
    all_shards = list(shards.values())
    matrices = [n for n, s in scores.items() if s.dim() == 2]
    requests = ([(all_shards, q, "top") for q in QUANTILES] + [(all_shards, q, "bottom") for q in QUANTILES]
                + [([shards[n]], q, "top") for n in matrices for q in QUANTILES])
    values = iter(thresholds_sharded(requests, device))
    thresholds = {f"top_{q:g}": next(values) for q in QUANTILES} | {f"bottom_{q:g}": next(values) for q in QUANTILES}
    per_matrix = {n: {f"top_{q:g}": next(values) for q in QUANTILES} for n in matrices}
    shapes = {n: list(s.shape) for n, s in scores.items()}
    return assemble_summary(sums, shapes, thresholds, per_matrix, meta)


def _header(scores: Mapping[str, torch.Tensor], dtype: torch.dtype, metadata: dict) -> Tuple[bytes, Dict[str, int]]:
    """The safetensors header of ``scores`` (whole shapes, tensors in name order) and each
    tensor's byte offset in the file."""
    entries, offset = {}, 0
    for n in sorted(scores):
        size = math.prod(scores[n].shape) * torch.tensor([], dtype=dtype).element_size()
        entries[n] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(scores[n].shape),
                      "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    head = len(text).to_bytes(8, "little") + text
    return head, {n: len(head) + e["data_offsets"][0] for n, e in entries.items()}


def _write_scores(path: Path, scores: Mapping[str, torch.Tensor], dtype: str) -> None:
    """``scores.safetensors`` from the shards, each rank writing its own rows; collective."""
    rank, _ = _rank_world()
    torch_dtype = getattr(torch, dtype)
    head, offsets = _header(scores, torch_dtype, {"dtype": dtype})
    size = torch.tensor([], dtype=torch_dtype).element_size()
    total = len(head) + sum(math.prod(s.shape) for s in scores.values()) * size
    tmp = path.with_name(f".{path.name}.sharded.tmp")
    device = _device_of(scores)
    error: Optional[BaseException] = None
    if rank == 0:
        try:
            with open(tmp, "wb") as f:
                f.write(head)
                f.truncate(total)
        except OSError as e:
            error = e
    if _agree(error is not None, device):
        raise OSError(f"could not create {tmp}") from error
    try:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            for n, s in scores.items():
                shard = local(s).detach()
                if shard.numel() == 0:
                    continue
                start, _ = shard_rows(s)
                row_bytes = math.prod(s.shape[1:]) * size
                data = shard.to(device="cpu", dtype=torch_dtype).contiguous()
                raw = (data.view(torch.int16) if torch_dtype == torch.bfloat16 else data).numpy().tobytes()
                os.pwrite(fd, raw, offsets[n] + start * row_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        error = e
    if _agree(error is not None, device):
        if rank == 0:
            tmp.unlink(missing_ok=True)
        raise OSError(f"writing the shards of {path} failed on some rank (here: {error})") from error
    if rank == 0:
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_report_sharded(
    out_dir: str | Path, scores: Mapping[str, torch.Tensor], meta: Optional[dict] = None, dtype: str = "float32",
    invalidates: Sequence[str] = (),
) -> dict:
    """:func:`~espnet_ext.importance.report.write_report` from the shards; collective.

    ``summary.json`` (rank 0; with ``invalidates``, files of ``out_dir`` that describe the
    old report) is removed first and written last; the summary is returned on every rank."""
    check_score_dtype(dtype)
    rank, _ = _rank_world()
    out_dir = Path(out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in (SUMMARY_FILE, *invalidates):
            (out_dir / name).unlink(missing_ok=True)
    summary = summarize_sharded(scores, meta)  # collective; also a barrier before the file
    _write_scores(out_dir / SCORES_FILE, scores, dtype)
    if rank == 0:
        atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    return summary
