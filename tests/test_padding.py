"""LLaMA-Omni's 30 s padding on the stage-2 path (espnet_ext/bin/dump_features.py,
espnet_ext/data/dump.py, espnet_ext/models/encoder.py): 3000 mel frames → 1500 encoder
frames → 300 adaptor embeddings (k = 5) for every utterance, whatever its length."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import write_noise_kaldi_dir

UTTS = [("spk-p0", "spk", 0.6, "What is two plus three?", ["5"]),
        ("spk-p1", "spk", 1.3, "Which planet is red?", ["Mars"])]


def _ids_values(path: Path) -> dict:
    return {u: int(v) for u, v in (line.split() for line in path.read_text().splitlines())}


@pytest.mark.usefixtures("one_thread")
def test_pad_to_30s_dump_is_1500_frames_and_redoes_a_real_length_dump(tiny_llm_dir, tiny_whisper_dir, tmp_path):
    import kaldiio
    import torch
    from transformers import WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from espnet_ext.bin import dump_features
    from espnet_ext.data.audio import load_audio
    from espnet_ext.data.kaldi_dir import read_table
    from espnet_ext.models.encoder import load_whisper_encoder

    data = write_noise_kaldi_dir(tmp_path / "data", tmp_path / "wav", UTTS, np.random.default_rng(3))
    out = tmp_path / "dump"
    argv = ["--whisper", str(tiny_whisper_dir), "--llm", str(tiny_llm_dir), "--data_dir", str(data),
            "--out_dir", str(out), "--downsample_rate", "5"]
    dump_features.main(argv)  # real length first (the old stage 2, whatever the preset said)
    real = {u: m.shape[0] for u, m in kaldiio.load_scp(str(out / "enc_feats.scp")).items()}
    assert real == {"spk-p0": 30, "spk-p1": 65}  # (seconds * 100 + 1) // 2
    real_speech = _ids_values(out / "llm_len.speech")

    dump_features.main(argv + ["--pad_to_30s", "true"])  # the preset asks for padding: redone
    feats = dict(kaldiio.load_scp(str(out / "enc_feats.scp")))
    assert {u: m.shape for u, m in feats.items()} == {u: (1500, 32) for u in real}
    speech = _ids_values(out / "llm_len.speech")
    for u in real:  # 300 speech positions instead of frames // 5; the rest of the prompt unchanged
        assert speech[u] - real_speech[u] == 300 - real[u] // 5, u
    report = json.loads((out / "dump_report.json").read_text())
    assert report["pad_to_30s"] is True and report["downsample_rate"] == 5
    assert report["encoder_frames"] == {"min": 1500, "max": 1500}

    # the padded features are transformers' own WhisperEncoder on the 3000-frame log-mel
    encoder = load_whisper_encoder(str(tiny_whisper_dir)).eval()
    assert isinstance(encoder, WhisperEncoder)
    fe = WhisperFeatureExtractor.from_pretrained(str(tiny_whisper_dir))
    for u, wav_path in read_table(data / "wav.scp").items():
        mel = fe(load_audio(wav_path, u), sampling_rate=16000, padding="max_length", return_tensors="pt")
        assert mel.input_features.shape[-1] == 3000
        with torch.inference_mode():
            ref = encoder(mel.input_features).last_hidden_state[0].numpy()
        np.testing.assert_allclose(feats[u], ref, rtol=1e-4, atol=1e-5, err_msg=u)

    before = (out / "enc_feats.ark").stat().st_mtime_ns
    dump_features.main(argv + ["--pad_to_30s", "true"])  # same options: kept
    assert (out / "enc_feats.ark").stat().st_mtime_ns == before
    dump_features.main(argv)  # and back: a padded dump is not reused for real length either
    assert {u: m.shape[0] for u, m in kaldiio.load_scp(str(out / "enc_feats.scp")).items()} == real
