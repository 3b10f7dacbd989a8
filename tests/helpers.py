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


def build_tiny_dumps(root: Path, llm_dir: Path, whisper_dir: Path, cache_features: bool = True,
                     pad_to_30s: bool = False) -> Path:
    """``root/dump/{train,dev}`` (12 and 4 utterances of 0.5-1.6 s noise asking the
    :data:`QA` questions) built with the real stage-2 code; returns ``root``.  The audio
    is the same for every call; ``cache_features=False`` makes on-the-fly dumps (no
    features), ``pad_to_30s`` counts 30 s windows in the shape files."""
    from espnet_ext.data.dump import dump_encoder_features
    from espnet_ext.models.encoder import WhisperSpeechEncoder
    from espnet_ext.models.llm import ChatPrompt

    rng = np.random.default_rng(0)
    tok = tokenizer(llm_dir)
    prompt = ChatPrompt.from_tokenizer(tok)
    enc = WhisperSpeechEncoder(str(whisper_dir), pad_to_30s=pad_to_30s, cache_features=cache_features)
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


def train_cmd(root: Path, config: Path, out: Path, *extra: str, speech: str = "enc_feats.scp,enc_feats,kaldi_ark",
              text_type: str = "text") -> list:
    """``speechllm_train`` arguments training on ``root/dump/train`` (valid: ``dump/dev``);
    ``speech="wav.scp,speech,sound"`` reads the audio (on-the-fly encoding), ``text_type``
    is the ESPnet data type of ``text`` and ``answer``."""
    data = []
    for part in (speech, f"text,text,{text_type}", f"answer,answer,{text_type}"):
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


# --------------------------------------------------------------------------------------
# bad-input fixtures for the four corpus converters (any row, any layout)
# --------------------------------------------------------------------------------------
#: corpus → (split, audio column, question column(s), answer column) of the hub schema
CORPUS_SCHEMA: Dict[str, Tuple[str, str, Tuple[str, ...], str]] = {
    "voiceassistant": ("train", "question_audio", ("question",), "answer"),
    "spoken_alpaca": ("train", "input_audio", ("speech_input", "instruction", "input"), "output"),
    "llama_questions": ("test", "audio", ("question",), "answer"),
    "web_questions": ("test", "audio", ("question",), "answers"),
}


def wav_bytes(samples: np.ndarray, sr: int, subtype: str = "FLOAT",
              header_rate: Optional[int] = None) -> bytes:
    """WAV bytes of ``samples`` (float WAV keeps NaN/Inf); ``header_rate`` overwrites the
    sample rate written in the header (and the byte rate), to fake a broken file."""
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="WAV", subtype=subtype)
    data = bytearray(buf.getvalue())
    if header_rate is not None:
        block_align = int.from_bytes(data[32:34], "little")
        data[24:28] = header_rate.to_bytes(4, "little")
        data[28:32] = (header_rate * block_align % 2**32).to_bytes(4, "little")
    return bytes(data)


def decoded_audio(array: Any, sampling_rate: Any) -> Dict[str, Any]:
    """An HF ``Audio`` cell in its decoded ``{array, sampling_rate}`` form."""
    return {"bytes": None, "path": None, "array": np.asarray(array).tolist(),
            "sampling_rate": sampling_rate}


def corpus_rows(corpus: str, n: int = 3) -> Dict[str, list]:
    """``n`` good rows of ``corpus`` in its hub schema; audio is 16 kHz WAV ``{bytes, path}``."""
    audio = [hf_audio(audio_bytes(16000, freq=300 + 50 * i)) for i in range(n)]
    questions = [f"Question number {i}?" for i in range(n)]
    answers = [f"Answer {i}" for i in range(n)]
    if corpus == "voiceassistant":
        return {"split_name": ["ultrachat"] * n, "index": [str(i) for i in range(n)],
                "round": ["0"] * n, "question": [f"<USER>: {q}" for q in questions],
                "answer": answers, "answer_snac": ["# 1 2 #"] * n, "question_audio": audio}
    if corpus == "spoken_alpaca":
        return {"instruction": questions, "input": [""] * n, "output": answers,
                "speech_input": questions, "input_audio": audio,
                "output_audio": [hf_audio(audio_bytes(16000, 0.1)) for _ in range(n)]}
    if corpus == "llama_questions":
        return {"question": questions, "answer": answers, "audio": audio}
    if corpus == "web_questions":
        return {"url": [f"http://www.freebase.com/view/en/x{i}" for i in range(n)],
                "question": questions, "answers": [[a, f"{a} (alt)"] for a in answers],
                "audio": audio}
    raise ValueError(corpus)


def _audio_type(values: Sequence[Any]) -> pa.DataType:
    """``{bytes, path}``, plus ``array``/``sampling_rate`` when some row is decoded."""
    fields = [("bytes", pa.binary()), ("path", pa.string())]
    dicts = [v for v in values if isinstance(v, dict)]
    arrays = [v["array"] for v in dicts if v.get("array") is not None]
    if arrays:
        typ = pa.array(arrays).type
        fields.append(("array", pa.list_(pa.float32()) if typ == pa.list_(pa.null()) else typ))
    rates = [v["sampling_rate"] for v in dicts if v.get("sampling_rate") is not None]
    if rates:
        fields.append(("sampling_rate",
                       pa.float64() if any(isinstance(r, float) for r in rates) else pa.int64()))
    return pa.struct(fields)


def corpus_table(columns: Dict[str, list], audio_cols: Sequence[str]) -> pa.Table:
    """A table of hub-schema columns: strings, lists of strings, and ``Audio`` structs (whose
    type grows ``array``/``sampling_rate`` fields when a row holds a decoded value)."""
    arrays, fields = [], []
    for name, values in columns.items():
        if name in audio_cols:
            typ = _audio_type(values)
        elif any(isinstance(v, list) for v in values):
            typ = pa.list_(pa.string())
        else:
            typ = pa.string()
        arrays.append(pa.array(values, type=typ))
        fields.append(pa.field(name, typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_arrow_dataset(folder: Path, table: pa.Table, n_shards: int = 1,
                        split: Optional[str] = None) -> Path:
    """A ``save_to_disk`` Dataset folder: ``data-XXXXX-of-YYYYY.arrow`` IPC streams (rows
    split as evenly as ``datasets`` does) + ``state.json`` (+ ``dataset_info.json``)."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, n_shards + 1).round().astype(int)
    names = []
    for k in range(n_shards):
        name = f"data-{k:05d}-of-{n_shards:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]))
        names.append(name)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "0" * 16,
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
             "_output_all_columns": False, "_split": split}
    (folder / "state.json").write_text(json.dumps(state, indent=2))
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "features": {}}))
    return folder


def write_corpus(root: Path, corpus: str, columns: Dict[str, list],
                 layout: str = "hub") -> Path:
    """Write ``columns`` of ``corpus`` as a local copy and return its root.

    ``layout``: ``hub`` — as published (parquet ``data/<split>-00000-of-00001.parquet``,
    one shard, row groups of 2; spoken-alpaca: a ``save_to_disk`` Dataset of two Arrow
    shards, rows ``[0, 2)`` and ``[2, n)`` for ``n = 3``); ``dataset`` — a ``save_to_disk``
    Dataset of two shards saved with its split; ``dataset_dict`` — a ``save_to_disk``
    DatasetDict holding that split as a two-shard Dataset.
    """
    split, audio_col, _, _ = CORPUS_SCHEMA[corpus]
    audio_cols = [c for c in (audio_col, "output_audio") if c in columns]
    table = corpus_table(columns, audio_cols)
    if layout == "hub" and corpus != "spoken_alpaca":
        path = root / "data" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=2)
    elif layout in ("hub", "dataset"):
        write_arrow_dataset(root, table, 2, split if layout == "dataset" else None)
    elif layout == "dataset_dict":
        write_arrow_dataset(root / split, table, 2, split)
        (root / "dataset_dict.json").write_text(json.dumps({"splits": [split]}))
    else:
        raise ValueError(layout)
    return root
