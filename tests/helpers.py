"""Plain helpers shared by the test modules (fixtures live in ``conftest.py``).

``conftest.py`` puts this directory on ``sys.path``, so test modules import these as
``from helpers import ...``; no test module imports another one.  Heavy imports (torch,
transformers, espnet_ext) happen inside the functions, so loading ``conftest.py`` stays
cheap for the tests that need none of them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]

# question / reference-answer pairs of the tiny training dumps and the text batches
QA = [("What is the capital of France?", "The capital of France is Paris."),
      ("How many days are in a week?", "There are seven days in a week."),
      ("What is two plus three?", "Two plus three is 5."),
      ("Which planet is red?", "Mars is the red planet.")]
QUESTIONS = ["What is two plus three?", "How many days are in a week? Tell me."]
ANSWERS = ['["Two plus three is 5.", "5"]', '["seven"]']


# --------------------------------------------------------------------------------------
# tokenizer, model arguments, text batches
# --------------------------------------------------------------------------------------
def tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def speech_llm_argv(llm_dir, whisper_dir=None) -> List[str]:
    """Command-line arguments of ``SpeechLLMTask`` for the tiny models (hidden size 32
    adaptor); without ``whisper_dir`` the model has no encoder and takes 32-dim features."""
    argv = ["--llm_conf", f"model_name_or_path={llm_dir}", "--adaptor_conf", "hidden_size=32"]
    if whisper_dir is not None:
        return argv + ["--encoder_conf", f"model_name_or_path={whisper_dir}"]
    return argv + ["--encoder", "none", "--adaptor_conf", "input_size=32"]


def build_speech_llm(llm_dir, whisper_dir=None, *extra: str):
    """A fresh fp32 ``ESPnetSpeechLLM`` in eval mode, parsed like ``speechllm_train`` would."""
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    args = SpeechLLMTask.get_parser().parse_args(speech_llm_argv(llm_dir, whisper_dir) + list(extra))
    return SpeechLLMTask.build_model(args).eval()


def _collate(pre, rows: Sequence[Tuple[str, str, str]]):
    from espnet_ext.train.collate import PadCollate

    samples = [(uid, pre(uid, {"text": q, "answer": a})) for uid, q, a in rows]
    return samples, PadCollate(0.0, -1)(samples)[1]


def text_batch(model, questions=QUESTIONS, answers=ANSWERS):
    """``(samples, batch)``: preprocess + collate like the ESPnet data pipeline (``-1``
    padded token ids), with the QA prompt only; ``answers`` are JSON lists of references."""
    from espnet_ext.train.preprocess import SpeechLLMPreprocessor

    pre = SpeechLLMPreprocessor(model.llm.tokenizer, model.llm.prompt.closing)
    return _collate(pre, [(f"u{i}", q, a) for i, (q, a) in enumerate(zip(questions, answers))])


def qa_batches(model, n: int, bs: int = 2, offset: int = 0) -> List[dict]:
    """``n`` text batches of ``bs`` pairs of :data:`QA`, through the model's own
    training-time preprocessor (``preprocessor_for``)."""
    from espnet_ext.train.batches import preprocessor_for

    pre = preprocessor_for(model)
    out = []
    for b in range(n):
        rows = []
        for i in range(bs):
            q, a = QA[(offset + b * bs + i) % len(QA)]
            rows.append((f"u{b}_{i}", q, json.dumps([a])))
        out.append(_collate(pre, rows)[1])
    return out


# --------------------------------------------------------------------------------------
# Kaldi data dirs and stage-2 dumps
# --------------------------------------------------------------------------------------
def write_noise_kaldi_dir(d: Path, wav_dir: Path, utts: Sequence[tuple], rng: np.random.Generator,
                          scale: float = 0.1, wavs: Optional[Dict[str, object]] = None) -> Path:
    """A Kaldi dir ``d`` of 16 kHz noise wavs written to ``wav_dir``.

    ``utts`` are ``(utt id, speaker, seconds, question, answers)``; each utterance's audio
    is ``scale * rng.standard_normal(int(seconds * 16000))``, drawn in order, unless
    ``wavs`` maps its id to a ready-made waveform or to the path of an existing file
    (e.g. a corrupt one) that ``wav.scp`` should point at.
    """
    from espnet_ext.data.audio import write_wav
    from espnet_ext.data.kaldi_dir import Utterance, write_kaldi_dir

    wavs = dict(wavs or {})
    out = []
    for uid, spk, seconds, question, answers in utts:
        given = wavs.get(uid)
        if isinstance(given, (str, Path)):
            path = Path(given)
        else:
            audio = given if given is not None else scale * rng.standard_normal(int(seconds * 16000))
            path = Path(wav_dir) / f"{uid}.wav"
            write_wav(path, np.asarray(audio, dtype=np.float32))
        out.append(Utterance(uid, spk, str(path), question, list(answers)))
    write_kaldi_dir(d, out)
    return d


def build_tiny_dumps(root: Path, llm_dir: Path, whisper_dir: Path) -> Path:
    """``root/dump/{train,dev}`` (12 and 4 utterances of 0.5-1.6 s noise asking the
    :data:`QA` questions) built with the real stage-2 code; returns ``root``."""
    from espnet_ext.data.dump import dump_encoder_features
    from espnet_ext.models.encoder import WhisperSpeechEncoder
    from espnet_ext.models.llm import ChatPrompt

    rng = np.random.default_rng(0)
    tok = tokenizer(llm_dir)
    prompt = ChatPrompt.from_tokenizer(tok)
    enc = WhisperSpeechEncoder(str(whisper_dir))
    for name, n in (("train", 12), ("dev", 4)):
        utts = []
        for i in range(n):
            q, a = QA[i % len(QA)]
            utts.append((f"spk-{name}{i:02d}", "spk", (8000 + 1600 * i) / 16000, q, [a]))
        write_noise_kaldi_dir(root / "data" / name, root / "wav" / name, utts, rng, scale=0.05)
        dump_encoder_features(root / "data" / name, root / "dump" / name, enc, tok,
                              len(prompt.prefix) + len(prompt.suffix), 5)
    return root


# --------------------------------------------------------------------------------------
# ESPnet training runs on the tiny dumps
# --------------------------------------------------------------------------------------
def train_config(root: Path, llm: Path, whisper: Path, **over) -> Path:
    """A training config for the tiny models (2 epochs × 3 iterations, AdamW, warm-up
    cosine) written to a fresh ``root/conf_<n>.yaml``; ``over`` replaces top-level keys."""
    conf = {
        "encoder": "whisper", "encoder_conf": {"model_name_or_path": str(whisper)},
        "adaptor": "concat", "adaptor_conf": {"downsample_rate": 5, "hidden_size": 32},
        "llm": "hf", "llm_conf": {"model_name_or_path": str(llm)},
        "model_conf": {"modality": "speech"}, "optim": "adamw", "optim_conf": {"lr": 1e-3},
        "adaptor_lr": 3e-3, "scheduler": "warmupcosinelr",
        "scheduler_conf": {"total_steps": 6, "warmup_ratio": 0.2},
        "max_epoch": 2, "num_iters_per_epoch": 3, "batch_type": "sorted", "batch_size": 4,
        "num_workers": 0, "num_att_plot": 0, "seed": 0, "keep_nbest_models": 1,
        "best_model_criterion": [["valid", "loss", "min"]],
        **over,
    }
    path = root / f"conf_{len(list(root.glob('conf_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def train_cmd(root: Path, config: Path, out: Path, *extra: str) -> list:
    """``speechllm_train`` arguments training on ``root/dump/train`` (valid: ``dump/dev``)."""
    data = []
    for part in ("enc_feats.scp,enc_feats,kaldi_ark", "text,text,text", "answer,answer,text"):
        data += ["--train_data_path_and_name_and_type", f"{root}/dump/train/{part}",
                 "--valid_data_path_and_name_and_type", f"{root}/dump/dev/{part}"]
    return ["--config", str(config), "--output_dir", str(out), *data,
            "--train_shape_file", f"{root}/dump/train/llm_len.speech",
            "--valid_shape_file", f"{root}/dump/dev/llm_len.speech", *extra]


def run_train(args: list, nproc: int = 1) -> subprocess.CompletedProcess:
    """``speechllm_train`` in a subprocess (``nproc`` > 1: torchrun with gloo); asserts success."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "espnet_ext.bin.speechllm_train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "espnet_ext.bin.speechllm_train", "--multiprocessing_distributed", "false",
               "--dist_backend", "gloo", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def load_state(path: Path) -> dict:
    """A checkpoint (``*.pth``) on the CPU, pickles allowed (ESPnet's own files)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


# --------------------------------------------------------------------------------------
# real-corpus fixtures in their Hugging Face schemas (parquet, Arrow shards)
# --------------------------------------------------------------------------------------
AUDIO_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def tone(sr: int, seconds: float = 0.25, freq: float = 440.0, noise: bool = False) -> np.ndarray:
    """A short sine (or seeded noise) signal at ``sr``."""
    n = int(round(sr * seconds))
    if noise:
        return (0.1 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def audio_bytes(sr: int, seconds: float = 0.25, fmt: str = "WAV", **kw: Any) -> bytes:
    """Encoded audio file bytes (WAV or FLAC)."""
    buf = io.BytesIO()
    sf.write(buf, tone(sr, seconds, **kw), sr, format=fmt)
    return buf.getvalue()


def hf_audio(data: Optional[bytes], path: Optional[str] = None) -> Dict[str, Any]:
    """An HF ``Audio`` cell as stored in parquet/Arrow."""
    return {"bytes": data, "path": path}


def write_parquet(
    path: Path, columns: Dict[str, list], audio_col: str, row_group_size: int = 2
) -> None:
    """Write a parquet shard whose ``audio_col`` is the HF ``{bytes, path}`` struct."""
    fields = []
    for name, values in columns.items():
        if name == audio_col:
            fields.append(pa.field(name, AUDIO_STRUCT))
        elif values and isinstance(values[0], list):
            fields.append(pa.field(name, pa.list_(pa.string())))
        else:
            fields.append(pa.field(name, pa.string()))
    table = pa.table(columns, schema=pa.schema(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)


def llama_rows(n: int = 3, sr: int = 16000) -> Dict[str, list]:
    """``fixie-ai/llama-questions`` columns with ``n`` good rows."""
    return {
        "question": [f"Question number {i}?" for i in range(n)],
        "answer": [f"Answer {i}" for i in range(n)],
        "audio": [hf_audio(audio_bytes(sr, freq=300 + 50 * i)) for i in range(n)],
    }


def make_va(root: Path) -> Path:
    """VoiceAssistant-400K: two parquet shards at 24 kHz with multi-turn rows."""
    rows = [
        ("identity", "0", "0", "What is your name?", "I am a helpful assistant."),
        ("ultrachat", "1", "0", "<USER>: How tall is Mount Everest?", "<ASSISTANT>: About 8849 m."),
        ("ultrachat", "1", "1",
         "<USER>: How tall is Mount Everest?\n<ASSISTANT>: About 8849 m.\n<USER>: And K2?",
         "About 8611 m."),
        ("ultrachat", "2", "1", "Name a primary colour.", "Red."),  # later turn, no markers
        ("ultrachat", "2", "0", "Tell me a fun fact.", "Octopuses have three hearts."),
        ("ultrachat", "3", "0", "What is two plus two?", "Four."),
    ]
    cols: Dict[str, list] = {k: [] for k in
                             ("split_name", "index", "round", "question", "answer", "answer_snac",
                              "question_audio")}
    for i, (sn, ix, rd, q, a) in enumerate(rows):
        for k, v in zip(("split_name", "index", "round", "question", "answer"), (sn, ix, rd, q, a)):
            cols[k].append(v)
        cols["answer_snac"].append("# 1 2 3 #")
        cols["question_audio"].append(hf_audio(audio_bytes(24000, 0.3, freq=200 + 40 * i)))
    for shard, sl in enumerate((slice(0, 3), slice(3, 6))):
        write_parquet(root / "data" / f"train-0000{shard}-of-00002.parquet",
                      {k: v[sl] for k, v in cols.items()}, "question_audio")
    return root


def make_alpaca(root: Path, as_dict: bool = False) -> Path:
    """spoken-alpaca-gpt4: ``save_to_disk`` Arrow shards with ``Audio`` columns at 22.05 kHz."""
    from datasets import Audio, Dataset, DatasetDict

    data = {
        "instruction": ["Give three tips for staying healthy.", "Translate to French.",
                        "Name a colour."],
        "input": ["", "Good morning", ""],
        "output": ["Eat well, sleep, exercise.", "Bonjour", "Blue"],
        "speech_input": ["Give three tips for staying healthy.", "", "Name a colour."],
        "input_audio": [hf_audio(audio_bytes(22050, 0.3, noise=(i == 2))) for i in range(3)],
        "output_audio": [hf_audio(audio_bytes(22050, 0.1)) for _ in range(3)],
    }
    # Audio.encode_example needs torchcodec; casting the raw struct does not
    ds = Dataset.from_dict(data).cast_column("input_audio", Audio()).cast_column(
        "output_audio", Audio())
    if as_dict:
        DatasetDict({"train": ds}).save_to_disk(str(root))
    else:
        ds.save_to_disk(str(root), num_shards=2)
    return root
