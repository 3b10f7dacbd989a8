"""Crash-safe training saves (espnet_ext/train/checkpoint.py): atomic torch.save, the
kept previous checkpoint, the damaged-file fallback, disk full, and the scoped patch of
ESPnet's trainer module."""

from __future__ import annotations

import errno
import types
from pathlib import Path

import pytest
import torch

from espnet_ext.train import checkpoint as ck


def _save(path: Path, value: float) -> None:
    ck.atomic_torch_save({"w": torch.full((4,), value)}, path)


def _value(path: Path) -> float:
    return float(torch.load(path, weights_only=True)["w"][0])


def test_atomic_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / ck.CHECKPOINT
    _save(path, 1.0)
    assert not (tmp_path / ck.PREVIOUS).exists()
    _save(path, 2.0)
    _save(path, 3.0)
    assert _value(path) == 3.0 and _value(tmp_path / ck.PREVIOUS) == 2.0
    other = tmp_path / "5epoch.pth"  # only checkpoint.pth keeps a previous copy
    _save(other, 1.0)
    _save(other, 2.0)
    assert _value(other) == 2.0 and sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "5epoch.pth", ck.CHECKPOINT, ck.PREVIOUS])


def test_a_crash_during_the_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / ck.CHECKPOINT
    _save(path, 1.0)
    real_save = torch.save

    def dies_halfway(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half of an archive")
        raise KeyboardInterrupt  # what a signal handler would raise mid-write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        _save(path, 2.0)
    monkeypatch.setattr(torch, "save", real_save)
    assert _value(path) == 1.0 and not (tmp_path / ck.PREVIOUS).exists()
    assert [p.name for p in tmp_path.iterdir()] == [ck.CHECKPOINT]  # no temporary left


def test_disk_full_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / ck.CHECKPOINT
    _save(path, 1.0)

    def no_space(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(ck.CheckpointError, match="no space left") as e:
        _save(path, 2.0)
    assert str(path) in str(e.value)
    monkeypatch.undo()
    assert _value(path) == 1.0 and [p.name for p in tmp_path.iterdir()] == [ck.CHECKPOINT]


def test_file_objects_pass_through(tmp_path):
    with open(tmp_path / "x.pth", "wb") as f:
        ck.atomic_torch_save({"a": 1}, f)
    assert torch.load(tmp_path / "x.pth") == {"a": 1}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_loadable_checkpoint_prefers_newest_then_falls_back(tmp_path):
    assert ck.loadable_checkpoint(tmp_path) == (None, [])  # a fresh run
    _save(tmp_path / ck.CHECKPOINT, 1.0)
    _save(tmp_path / ck.CHECKPOINT, 2.0)
    assert ck.loadable_checkpoint(tmp_path) == (tmp_path / ck.CHECKPOINT, [])
    _truncate(tmp_path / ck.CHECKPOINT)
    path, skipped = ck.loadable_checkpoint(tmp_path)
    assert path == tmp_path / ck.PREVIOUS and _value(path) == 1.0
    assert len(skipped) == 1 and str(tmp_path / ck.CHECKPOINT) in skipped[0]
    _truncate(tmp_path / ck.PREVIOUS)
    with pytest.raises(ck.CheckpointError, match="no loadable checkpoint") as e:
        ck.loadable_checkpoint(tmp_path)
    assert ck.CHECKPOINT in str(e.value) and ck.PREVIOUS in str(e.value)


@pytest.mark.parametrize("content,why", [(b"", "not a complete torch archive"),
                                         (b"not a zip at all", "not a complete torch archive")])
def test_check_archive(tmp_path, content, why):
    (tmp_path / "c.pth").write_bytes(content)
    assert why in ck.check_archive(tmp_path / "c.pth")
    assert ck.check_archive(tmp_path / "missing.pth") == "missing"


def test_atomic_trainer_saves_patches_only_inside_the_block(tmp_path):
    module = types.ModuleType("fake_trainer")
    module.torch = torch
    with ck.atomic_trainer_saves([module]):
        assert module.torch is not torch
        assert module.torch.save is ck.atomic_torch_save
        assert module.torch.zeros(2).shape == (2,)  # everything else is torch's
        module.torch.save({"w": torch.ones(1)}, tmp_path / ck.CHECKPOINT)
    assert module.torch is torch
    assert (tmp_path / ck.CHECKPOINT).is_file()


def test_the_trainer_saves_through_the_patch():
    """ESPnet's trainer and model-averaging modules save with the module-level ``torch``
    the patch replaces (an ESPnet upgrade that changes this fails here)."""
    import espnet2.main_funcs.average_nbest_models as averaging
    import espnet2.train.trainer as trainer

    for m in (trainer, averaging):
        assert m.torch is torch and "torch.save(" in Path(m.__file__).read_text()


def test_a_damaged_checkpoint_is_not_kept_as_the_previous_one(tmp_path):
    """After resuming from checkpoint.prev.pth past a damaged checkpoint.pth, the next save
    must not turn the damaged file into the kept previous one."""
    path = tmp_path / ck.CHECKPOINT
    _save(path, 1.0)
    _save(path, 2.0)
    _truncate(path)
    _save(path, 3.0)
    assert _value(path) == 3.0 and _value(tmp_path / ck.PREVIOUS) == 1.0
