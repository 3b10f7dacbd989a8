"""Batch collation: pad each array to the longest in the batch and add ``<name>_lengths``.

Same contract as ESPnet's ``CommonCollateFn`` (whose module we do not import: it pulls
in ESPnet's text preprocessors, and their g2p dependency tries to download NLTK data at
import time).  Integer arrays (token ids) are padded with ``int_pad_value``, float
arrays (waveforms, encoder features) with ``float_pad_value``.
"""

from __future__ import annotations

from typing import Collection, Dict, List, Tuple

import numpy as np
import torch


class PadCollate:
    """Collate ``[(utt_id, {name: array})]`` into ``(utt_ids, {name: tensor, name_lengths: tensor})``."""

    def __init__(self, float_pad_value: float = 0.0, int_pad_value: int = -1) -> None:
        self.float_pad_value = float_pad_value
        self.int_pad_value = int_pad_value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(float_pad_value={self.float_pad_value}, int_pad_value={self.int_pad_value})"

    def __call__(
        self, data: Collection[Tuple[str, Dict[str, np.ndarray]]]
    ) -> Tuple[List[str], Dict[str, torch.Tensor]]:
        uttids = [u for u, _ in data]
        samples = [d for _, d in data]
        keys = samples[0].keys()
        if any(s.keys() != keys for s in samples):
            raise ValueError(f"utterances {uttids} do not carry the same data names")
        out: Dict[str, torch.Tensor] = {}
        for key in keys:
            arrays = [np.asarray(s[key]) for s in samples]
            is_int = np.issubdtype(arrays[0].dtype, np.integer)
            pad = self.int_pad_value if is_int else self.float_pad_value
            lengths = [a.shape[0] if a.ndim > 0 else 1 for a in arrays]
            shape = (len(arrays), max(lengths), *arrays[0].shape[1:])
            batch = np.full(shape, pad, dtype=arrays[0].dtype)
            for i, a in enumerate(arrays):
                batch[i, : lengths[i]] = a
            out[key] = torch.from_numpy(batch)
            out[f"{key}_lengths"] = torch.tensor(lengths, dtype=torch.long)
        return uttids, out
