"""Import ESPnet's task/trainer machinery without torchaudio.

``espnet2.tasks.abs_task`` imports ESPnet's adapter code, whose import chain reaches
``espnet2.enh.layers.beamformer_th`` and its module-level ``import torchaudio``.
(``espnet2.train.collate_fn`` is avoided altogether: it imports ESPnet's text
preprocessors, whose g2p dependency tries to download NLTK data at import time; see
``espnet_ext.train.collate``.)
torchaudio has no build for the CPU torch 2.13 wheel this project pins, and nothing in
speechimp uses the beamformer.  While that one import chain runs we expose a stand-in
``torchaudio`` module that raises a clear ``ImportError`` on any attribute access, then
remove it from ``sys.modules`` again so no other library ever sees it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from typing import Iterator


class _MissingTorchaudio(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"torchaudio.{name} was requested, but torchaudio is not installed (no build "
            "exists for torch 2.13 CPU); speechimp does not use ESPnet's beamformers"
        )


@contextlib.contextmanager
def _torchaudio_stand_in() -> Iterator[None]:
    if "torchaudio" in sys.modules or importlib.util.find_spec("torchaudio") is not None:
        yield
        return
    # libraries that probe for torchaudio must see the truth (they cache the answer)
    from transformers.utils.import_utils import is_torchaudio_available

    is_torchaudio_available()
    sys.modules["torchaudio"] = _MissingTorchaudio("torchaudio")
    try:
        yield
    finally:
        sys.modules.pop("torchaudio", None)


with _torchaudio_stand_in():
    import espnet2.tasks.abs_task as abs_task_module  # noqa: E402
    from espnet2.tasks.abs_task import AbsTask  # noqa: E402
    from espnet2.train.trainer import Trainer  # noqa: E402

__all__ = ["AbsTask", "Trainer", "abs_task_module"]
