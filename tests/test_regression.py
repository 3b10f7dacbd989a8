"""Pinned regression values: the training losses of a seeded tiny model and its eq. (2)
layer sums, compared with literals computed once from this code.

The other tests check each part against an independent computation; these catch any
change of the numbers end to end (loss masking, prompt assembly, optimizer groups and
schedule, ESPnet's batching, the eq. (2) accumulation, the layer reduction).  A change
that is meant to move them has to re-pin them: set the constant to ``None``, run

    OMP_NUM_THREADS=1 tools/venv/bin/python -m pytest -q tests/test_regression.py

and paste the value that the failure message ("... not pinned yet; got [...]") prints.
That is how the literals below were produced.

Determinism: the weights are not transformers' random init (free to change between
releases) but redrawn here from a fixed ``torch.Generator``; ESPnet seeds the adaptor's
init and the batch order (``seed: 0``); everything runs in fp32 on the CPU.

Tolerance: relative 1e-4.  fp32 rounding (another CPU's kernels, another reduction
order in a newer torch or transformers) moves a result by ~1e-7 relative per operation;
six AdamW steps do not amplify that anywhere near 1e-4 (measured: 1 and 2 threads give
bit-identical values here, and a 1e-5 scale on the logits moves the losses by ~1e-6 and
the layer sums by ~1e-5, both inside the tolerance).  Real changes fail: an off-by-one in
the loss's answer positions moves the losses by 17 % and the layer sums by 290 %; a
0.1 % scale on the logits moves a loss by 1.03e-4 and the layer sums by 1e-3; keeping
only the last batch's gradient in eq. (2) moves the layer sums by 37 %.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import build_speech_llm, build_tiny_dumps, qa_batches, train_cmd, train_config

from espnet_ext.importance.report import layer_sums
from espnet_ext.importance.scoring import ImportanceConfig, score_importance

RTOL = 1e-4

# Produced by `OMP_NUM_THREADS=1 tools/venv/bin/python -m pytest -q tests/test_regression.py`
# with each constant set to None (the failure message prints the value); torch 2.13.0 CPU.
# The training loss of each of the 6 steps (2 epochs × 3), the validation loss after each epoch
# (re-pinned when the warm-up cosine stopped taking an extra step at each epoch's end):
TRAIN_LOSSES = [5.985691070556641, 5.733823299407959, 5.58455753326416,
                5.481633186340332, 5.382575988769531, 5.318975448608398]
VALID_LOSSES = [5.479353904724121, 5.298348903656006]
# eq. (2) layer sums (4 layers) of the seeded text model on qa_batches(model, 2, bs=2), both
# accumulations, and the mean loss of the two batches:
LAYER_SUMS = {
    "signed_sum": [4.814908582693988, 3.9182554985561664, 3.6780425715067686, 3.512574751654742],
    "abs_per_batch": [5.832389911950953, 4.845327386878484, 4.487592773354823, 4.174638303959679],
}
MEAN_LOSS = 5.989675760269165


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


def _redraw_weights(src: Path, dst: Path, seed: int) -> Path:
    """A copy of a tiny pretrained folder whose matrices are redrawn N(0, 0.02²) from
    ``torch.Generator().manual_seed(seed)`` in name order; norms, biases and the
    sinusoidal position tables stay as saved (constants, not random)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    for name in sorted(tensors):
        t = tensors[name]
        if t.dim() >= 2 and "embed_positions" not in name:
            tensors[name] = torch.empty(t.shape, dtype=torch.float32).normal_(0.0, 0.02, generator=g)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_llm_dir, tiny_whisper_dir):
    """``(llm_dir, whisper_dir, dumps_root)``: the tiny models with redrawn weights and
    their stage-2 dumps."""
    root = tmp_path_factory.mktemp("regression")
    llm = _redraw_weights(tiny_llm_dir, root / "llm", seed=1)
    whisper = _redraw_weights(tiny_whisper_dir, root / "whisper", seed=2)
    return llm, whisper, build_tiny_dumps(root, llm, whisper)


def _pinned(got, want, what):
    assert want is not None, f"{what} not pinned yet; got {got!r}"
    assert got == pytest.approx(want, rel=RTOL), f"{what} moved: got {got!r}"


def test_training_losses_are_pinned(seeded, tmp_path, monkeypatch):
    """ESPnet's Trainer in-process (2 epochs × 3 steps of AdamW on speech, warm-up cosine)."""
    from espnet_ext.bin.speechllm_train import main
    from espnet_ext.models.speech_llm import ESPnetSpeechLLM

    llm, whisper, dumps = seeded
    seen = {True: [], False: []}  # model.training → losses, in call order
    forward = ESPnetSpeechLLM.forward

    def recording(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        seen[self.training].append(float(out[1]["loss"]))
        return out

    monkeypatch.setattr(ESPnetSpeechLLM, "forward", recording)
    out = tmp_path / "exp"
    main(train_cmd(dumps, train_config(tmp_path, llm, whisper), out))
    stats = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)["reporter"]["stats"]
    # the recorded steps are the ones ESPnet averaged (3 per epoch, 1 valid batch)
    assert len(seen[True]) == 6 and len(seen[False]) == 2
    for epoch in (1, 2):
        assert stats[epoch]["train"]["loss"] == pytest.approx(sum(seen[True][3 * epoch - 3 : 3 * epoch]) / 3,
                                                              rel=1e-6)
        assert stats[epoch]["valid"]["loss"] == pytest.approx(seen[False][epoch - 1], rel=1e-6)
    _pinned(seen[True], TRAIN_LOSSES, "TRAIN_LOSSES")
    _pinned(seen[False], VALID_LOSSES, "VALID_LOSSES")


def test_importance_layer_sums_are_pinned(seeded):
    model = build_speech_llm(seeded[0])  # text only: the adaptor's random init plays no part
    batches = qa_batches(model, 2, bs=2)
    for accumulate, want in LAYER_SUMS.items():
        res = score_importance(model, batches, ImportanceConfig(accumulate=accumulate))
        assert (res.n_batches, res.n_utts) == (2, 4)
        _pinned(layer_sums(res.scores), want, f"LAYER_SUMS[{accumulate!r}]")
    _pinned(res.mean_loss, MEAN_LOSS, "MEAN_LOSS")
