"""Crash-safe training state for ESPnet's ``Trainer`` (an ADDITION to ESPnet's behaviour).

ESPnet's ``Trainer.run`` writes ``checkpoint.pth`` (model, optimizers, schedulers,
reporter) in place with ``torch.save`` once per epoch, and ``<N>epoch.pth`` and the
averaged model the same way.  A kill during that write leaves a truncated
``checkpoint.pth``: the next ``--resume true`` crashes, and the previous checkpoint is
already gone.  At 8B scale the write takes minutes, so that is the likeliest way for a
long run to lose its progress.

This module makes every ``torch.save`` of the trainer atomic and keeps the previous
checkpoint:

* :func:`atomic_torch_save` writes to a temporary sibling, fsyncs it, and renames it over
  the target (the target is always either the old or the new complete file).  For
  ``checkpoint.pth`` the old file is first hard-linked to ``checkpoint.prev.pth``, so the
  last good state survives even if the new file is later found damaged.
* :func:`loadable_checkpoint` picks the newest of ``checkpoint.pth`` /
  ``checkpoint.prev.pth`` that opens as a torch archive (a truncated zip fails at once,
  without reading the tensors), and says which one it skipped and why.
* :func:`atomic_trainer_saves` routes ``torch.save`` of ESPnet's trainer and model
  averaging modules through :func:`atomic_torch_save` while a training run lasts.

A disk-full error (``ENOSPC``) while saving names the file and says that the previous
state is intact; the temporary file is removed.

Checkpoint granularity is ESPnet's: one checkpoint per epoch.  Set ``num_iters_per_epoch``
to bound the work a kill can lose (an "epoch" of N iterations; ESPnet reseeds every
epoch, so a resumed run repeats the lost epoch exactly).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import types
import zipfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch

from espnet_ext.utils.atomic import atomic_open, temp_sibling

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
CHECKPOINT = "checkpoint.pth"
PREVIOUS = "checkpoint.prev.pth"


class CheckpointError(RuntimeError):
    """No loadable training checkpoint, or one could not be written."""


def _keep_previous(path: Path) -> None:
    """Hard-link ``path`` to its ``.prev`` name (atomically replacing an older one).

    A damaged ``path`` (the run resumed from ``.prev`` past it) is not kept: ``.prev``
    stays the last good checkpoint."""
    if path.name != CHECKPOINT or not path.is_file() or check_archive(path) is not None:
        return
    prev = path.with_name(PREVIOUS)
    tmp = temp_sibling(prev)
    try:
        os.link(path, tmp)
    except OSError:  # a file system without hard links: copy is too slow at scale; skip
        logger.warning("%s: cannot hard-link the previous checkpoint; keeping only the newest", path)
        return
    os.replace(tmp, prev)


def atomic_torch_save(obj, f, *args, **kwargs) -> None:
    """``torch.save(obj, f)``, atomic when ``f`` is a path (file objects pass through)."""
    if not isinstance(f, (str, os.PathLike)):
        torch.save(obj, f, *args, **kwargs)
        return
    path = Path(f)
    try:
        with atomic_open(path, "wb") as out:
            torch.save(obj, out, *args, **kwargs)
            out.flush()
            _keep_previous(path)  # inside the block: runs after the new file is complete
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CheckpointError(f"{path}: no space left on the device while saving; the previous "
                                  f"{path.name} (if any) is intact. Free space and rerun with "
                                  "--resume true") from e
        raise


def check_archive(path: PathLike) -> Optional[str]:
    """``None`` when ``path`` opens as a torch zip archive, else why not (cheap: reads
    the zip directory, not the tensors)."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        return f"not a complete torch archive ({e})"
    if not any(n.endswith("data.pkl") for n in names):
        return "no data.pkl in the archive"
    return None


def loadable_checkpoint(output_dir: PathLike) -> Tuple[Optional[Path], List[str]]:
    """The newest loadable training checkpoint of ``output_dir`` and the reasons the
    others were skipped.  ``(None, [])`` when there is none at all (a fresh run)."""
    output_dir = Path(output_dir)
    skipped = []
    for name in (CHECKPOINT, PREVIOUS):
        path = output_dir / name
        if not path.exists():
            continue
        why = check_archive(path)
        if why is None:
            return path, skipped
        skipped.append(f"{path}: {why}")
    if skipped:
        raise CheckpointError(
            f"{output_dir}: no loadable checkpoint ({'; '.join(skipped)}). Remove them to "
            "restart the training from scratch, or restore a backup")
    return None, skipped


class _TorchWithAtomicSave(types.ModuleType):
    """``torch`` as seen by one ESPnet module, with :func:`atomic_torch_save` as ``save``."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str):
        return getattr(torch, name)

    save = staticmethod(atomic_torch_save)


@contextlib.contextmanager
def atomic_trainer_saves(modules: Sequence[types.ModuleType]) -> Iterator[None]:
    """While the block runs, ``torch.save`` inside each of ``modules`` is atomic."""
    proxy = _TorchWithAtomicSave()
    saved = [(m, m.__dict__.get("torch")) for m in modules]
    for m, original in saved:
        if original is not torch:
            raise RuntimeError(f"{m.__name__}.torch is not the torch module; cannot patch its saves")
        m.torch = proxy
    try:
        yield
    finally:
        for m, original in saved:
            m.torch = original
