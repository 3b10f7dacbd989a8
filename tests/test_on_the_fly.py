"""On-the-fly frozen-encoder mode (``encoder_conf.cache_features: false``) against the
cached features, and the Python inference class (``SpeechLLMInference``).

The on-the-fly dump writes no features and only the audio ESPnet's ``sound`` loader can
read as the encoder's input; the loss, its gradient, ESPnet training and decoding equal
the cached path's (fp32, tiny models), with and without 30 s padding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import (
    build_speech_llm,
    build_tiny_dumps,
    load_state,
    run_train,
    train_cmd,
    train_config,
    write_noise_kaldi_dir,
)

from espnet_ext.data.audio import fit_to_window, load_audio
from espnet_ext.data.kaldi_dir import read_table
from espnet_ext.inference.decode import decode_dump_dir
from espnet_ext.train.batches import DumpReader, preprocessor_for

pytestmark = pytest.mark.usefixtures("one_thread")

UTTS = [("spk-a0", "spk", 0.8, "What is two plus three?", ["5"]),
        ("spk-a1", "spk", 1.2, "Which planet is red?", ["Mars"]),
        ("spk-a2", "spk", 1.0, "How many days are in a week?", ["seven"]),
        ("spk-a3", "spk", 31.0, "What is a long question?", ["long"])]


def _dump(data: Path, out: Path, llm: Path, whisper: Path, cache: bool, pad: bool = False) -> dict:
    from espnet_ext.bin import dump_features

    dump_features.main(["--whisper", str(whisper), "--llm", str(llm), "--data_dir", str(data), "--out_dir", str(out),
                        "--cache_features", str(cache).lower(), "--pad_to_30s", str(pad).lower()])
    return json.loads((out / "dump_report.json").read_text())


def test_on_the_fly_dump_has_no_features_and_audio_the_sound_loader_reads_as_the_encoder_input(
        tiny_llm_dir, tiny_whisper_dir, tmp_path):
    from espnet2.train.dataset import DATA_TYPES

    rng = np.random.default_rng(5)
    stereo_22k = 0.1 * rng.standard_normal((22050, 2)).astype(np.float32)  # 1 s, two channels
    sf.write(tmp_path / "stereo.wav", stereo_22k, 22050, subtype="PCM_16")
    data = write_noise_kaldi_dir(tmp_path / "data", tmp_path / "wav", UTTS, rng, 0.1,
                                 {"spk-a2": tmp_path / "stereo.wav"})
    cached, otf = tmp_path / "dump_cached", tmp_path / "dump_otf"
    _dump(data, cached, tiny_llm_dir, tiny_whisper_dir, cache=True)
    report = _dump(data, otf, tiny_llm_dir, tiny_whisper_dir, cache=False)
    assert report["cache_features"] is False and report["n_truncated"] == 1
    assert report["n_audio_copies"] == 2  # the 22.05 kHz stereo file and the truncated 31 s one
    assert not list(otf.glob("enc_feats*"))
    for f in ("llm_len.speech", "llm_len.text", "text", "answer", "utt2spk", "spk2utt"):
        assert (otf / f).read_text() == (cached / f).read_text(), f
    wavs = read_table(otf / "wav.scp")
    assert wavs["spk-a0"] == read_table(data / "wav.scp")["spk-a0"]  # 16 kHz mono: the source itself
    assert wavs["spk-a2"] == str((otf / "wav" / "spk-a2.wav").resolve())
    sound = DATA_TYPES["sound"]["func"](str(otf / "wav.scp"), float_dtype="float32")
    for uid, src in read_table(data / "wav.scp").items():
        expected, _ = fit_to_window(load_audio(src, uid), 30.0, "truncate", uid)
        got = sound[uid]
        assert got.ndim == 1 and np.array_equal(got, expected), uid  # exactly the encoder's input
    assert sf.info(wavs["spk-a2"]).samplerate == 16000 and sf.info(wavs["spk-a2"]).channels == 1

    # a dump of the other mode is redone; back on the fly, no features are left behind
    assert _dump(data, otf, tiny_llm_dir, tiny_whisper_dir, cache=True)["cache_features"] is True
    assert (otf / "enc_feats.scp").is_file()
    _dump(data, otf, tiny_llm_dir, tiny_whisper_dir, cache=False)
    assert not list(otf.glob("enc_feats*")) and (otf / "wav" / "spk-a3.wav").is_file()


@pytest.mark.parametrize("pad", [False, True], ids=["real_length", "pad_to_30s"])
def test_on_the_fly_loss_gradient_and_hypotheses_equal_the_cached_features(tiny_llm_dir, tiny_whisper_dir,
                                                                           tmp_path, pad):
    cached = build_tiny_dumps(tmp_path / "cached", tiny_llm_dir, tiny_whisper_dir, True, pad) / "dump"
    otf = build_tiny_dumps(tmp_path / "otf", tiny_llm_dir, tiny_whisper_dir, False, pad) / "dump"
    assert (otf / "train/llm_len.speech").read_text() == (cached / "train/llm_len.speech").read_text()
    torch.manual_seed(0)
    model = build_speech_llm(tiny_llm_dir, tiny_whisper_dir, "--encoder_conf", f"pad_to_30s={pad}")
    pre = preprocessor_for(model)
    from_cache, from_audio = DumpReader(cached / "train", pre, "speech"), DumpReader(otf / "train", pre, "speech")
    assert (from_cache.source, from_audio.source) == ("enc_feats", "speech")
    plan = from_cache.plan(4)
    assert plan == from_audio.plan(4)
    model.train()
    weight = model.adaptor.linear1.weight
    for ids in plan:
        a, b = from_cache.load(ids), from_audio.load(ids)
        assert "enc_feats" in a and "speech" in b and "enc_feats" not in b
        loss_a, loss_b = model(**a)[0], model(**b)[0]
        grad_a, grad_b = (torch.autograd.grad(loss, weight)[0] for loss in (loss_a, loss_b))
        assert abs(loss_a.item() - loss_b.item()) <= 1e-6 * abs(loss_a.item()), ids
        torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-8)
        assert grad_a.abs().max() > 0
    model.eval()
    hyps = []
    for d in (cached, otf):
        out = tmp_path / f"dec_{d.parent.name}"
        report = decode_dump_dir(model, d / "dev", out, "speech", batch_size=3, max_new_tokens=6)
        assert report.n_utts == 4
        hyps.append((out / "hyp").read_text())
    assert hyps[0] == hyps[1] and hyps[0].strip()


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory, tiny_llm_dir, tiny_whisper_dir):
    """The same LoRA training (2 epochs x 2 steps, real-length audio) through ESPnet on
    cached features (``text`` files) and on the fly (``wav.scp,speech,sound``, ``indexed_text``)."""
    root = tmp_path_factory.mktemp("otf_train")
    runs = {}
    for mode, cache in (("cached", True), ("otf", False)):
        data = build_tiny_dumps(root / mode, tiny_llm_dir, tiny_whisper_dir, cache)
        conf = train_config(root, tiny_llm_dir, tiny_whisper_dir, max_epoch=2, num_iters_per_epoch=2,
                            scheduler_conf={"total_steps": 4, "warmup_ratio": 0.2},
                            lora_conf={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
        extra = {} if cache else {"speech": "wav.scp,speech,sound", "text_type": "indexed_text"}
        run_train(train_cmd(data, conf, root / f"exp_{mode}", **extra))
        runs[mode] = (data, root / f"exp_{mode}")
    return runs


def test_espnet_training_on_the_fly_equals_the_cached_features(trained_pair):
    (_, cached), (_, otf) = trained_pair["cached"], trained_pair["otf"]
    stats = [load_state(exp / "checkpoint.pth")["reporter"]["stats"] for exp in (cached, otf)]
    for epoch in (1, 2):
        for split in ("train", "valid"):
            a, b = stats[0][epoch][split]["loss"], stats[1][epoch][split]["loss"]
            assert abs(a - b) <= 1e-6 * abs(a), (epoch, split, a, b)
    final = [load_state(exp / "valid.loss.best.pth") for exp in (cached, otf)]
    assert final[0].keys() == final[1].keys()
    for k in final[0]:
        torch.testing.assert_close(final[0][k], final[1][k], rtol=0, atol=1e-4, msg=k)


def test_inference_class_answers_files_arrays_and_text_as_decoding_does(trained_pair, tmp_path):
    from peft.tuners.lora import LoraLayer

    from espnet_ext.inference.speechllm import SpeechLLMInference

    data, exp = trained_pair["otf"]
    infer = SpeechLLMInference.from_exp_dir(exp, batch_size=8, max_new_tokens=6)
    layers = [m for m in infer.model.modules() if isinstance(m, LoraLayer)]
    assert layers and all(m.merged for m in layers)  # LoRA merged, as stage 5 decodes
    dev = data / "dump" / "dev"
    for modality in ("speech", "text"):
        decode_dump_dir(infer.model, dev, tmp_path / modality, modality, batch_size=8, max_new_tokens=6)
    want = {m: dict(line.split(" ", 1) if " " in line else (line, "")
                    for line in (tmp_path / m / "hyp").read_text().splitlines()) for m in ("speech", "text")}
    wavs, texts = read_table(dev / "wav.scp"), read_table(dev / "text")
    ids = sorted(wavs)
    assert infer([wavs[u] for u in ids]) == [want["speech"][u] for u in ids]
    assert infer.answer_text([texts[u] for u in ids]) == [want["text"][u] for u in ids]
    # arrays at any rate: the same answer as the file at that rate (both resampled the same way)
    wav = load_audio(wavs[ids[1]])
    import soxr

    wav_22k = soxr.resample(wav, 16000, 22050).astype(np.float32)
    sf.write(tmp_path / "q22k.wav", wav_22k, 22050, subtype="FLOAT")
    by_file = infer([tmp_path / "q22k.wav"])
    assert infer([wav_22k], sampling_rate=22050) == by_file == infer([(wav_22k, 22050)])
    assert infer([np.stack([wav, wav], axis=1)], sampling_rate=16000) == infer([wav], sampling_rate=16000)
    with pytest.raises(ValueError, match="sampling rate"):
        infer([wav])
    with pytest.raises(TypeError, match="list of inputs"):
        infer(wavs[ids[0]])
    with pytest.raises(ValueError, match="input 0: .* too short"):
        infer([wav[:100]], sampling_rate=16000)
    with pytest.raises(FileNotFoundError, match="no_such.pth"):
        SpeechLLMInference.from_exp_dir(exp, model_file="no_such.pth")
