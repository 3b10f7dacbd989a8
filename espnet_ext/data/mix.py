"""A stage-1 training dump with a transcription task mixed in (an ADDITION to the paper).

An alignment option measured against the CTC warm-up: broad-vocabulary synthetic speech (the alignment set of
:mod:`espnet_ext.data.alignment`: espeak-ng sentences of tokenizer words, encoded once by
the frozen encoder) trained *in stage 1 itself*, next to the QA data, with its own
instruction ("Please repeat what the user said.", ``llm_conf.task_prompts.transcribe``)
and the transcript as the answer.  The result is an ordinary dump dir::

    dump/<train>_mix/{enc_feats.scp, text, answer, task, llm_len.speech, llm_len.text, mix_report.json}

``task`` names each utterance's instruction (``qa`` for the original data); the scp lines
point into the two source arks (nothing is copied).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, Mapping

from espnet_ext.data.kaldi_dir import DataError, read_table
from espnet_ext.utils.atomic import atomic_dir
from espnet_ext.utils.stamps import file_identity, has_stamp

logger = logging.getLogger(__name__)

MIX_REPORT = "mix_report.json"
QA, TRANSCRIBE = "qa", "transcribe"


def _table(lines: Mapping[str, str]) -> str:
    return "".join(f"{k} {v}\n" for k, v in sorted(lines.items()))


def write_transcription_mix(
    train_dump: str | Path, align_dump: str | Path, out_dir: str | Path, tokenizer,
    overhead: Mapping[str, int], downsample_rate: int,
) -> dict:
    """Write ``out_dir`` = every utterance of ``train_dump`` (task ``qa``) + every one of
    ``align_dump`` (task ``transcribe``, answer = its transcript).

    Args:
        train_dump: a recipe dump dir (``dump/train``).
        align_dump: the alignment set's train split (``text``, ``enc_feats.scp``).
        overhead: prompt tokens around the placeholder per task (prefix + that task's suffix).
        downsample_rate: the adaptor's k (encoder frames per LLM position).
    """
    import kaldiio

    train_dump, align_dump = Path(train_dump), Path(align_dump)
    stamp = {"train_dump": str(train_dump.resolve()), "align_dump": str(align_dump.resolve()),
             "overhead": dict(overhead), "downsample_rate": downsample_rate}
    for d, names in ((train_dump, ("enc_feats.scp", "text", "answer", "llm_len.speech", "llm_len.text")),
                     (align_dump, ("enc_feats.scp", "text"))):
        for n in names:
            if not (d / n).is_file():
                raise FileNotFoundError(f"{d / n} is missing (run stage 2 first)")
    stamp["sources"] = [file_identity(d / "enc_feats.scp", content=False) for d in (train_dump, align_dump)]
    done = Path(out_dir) / MIX_REPORT
    if has_stamp(done, stamp):
        logger.info("%s is up to date; skipping", out_dir)
        return json.loads(done.read_text())

    files: Dict[str, Dict[str, str]] = {
        n: read_table(train_dump / n) for n in ("enc_feats.scp", "text", "answer", "llm_len.speech", "llm_len.text")
    }
    files["task"] = {u: QA for u in files["text"]}
    a_text = read_table(align_dump / "text")
    a_scp = read_table(align_dump / "enc_feats.scp")
    clash = sorted(set(a_text) & set(files["text"]))
    if clash:
        raise DataError(f"{align_dump}: utterance id {clash[0]} also in {train_dump}")
    missing = sorted(set(a_text) - set(a_scp))
    if missing:
        raise DataError(f"{align_dump}: utterance {missing[0]} has text but no enc_feats.scp line")
    closing = 1  # the end-of-turn token after every answer (as in data/dump.py)
    for uid, text in a_text.items():
        n_frames = kaldiio.load_mat(a_scp[uid]).shape[0]
        n_text = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        answer_len = n_text + closing
        files["enc_feats.scp"][uid] = a_scp[uid]
        files["text"][uid] = text
        files["answer"][uid] = json.dumps([text], ensure_ascii=False)
        files["task"][uid] = TRANSCRIBE
        files["llm_len.speech"][uid] = str(n_frames // downsample_rate + overhead[TRANSCRIBE] + answer_len)
        files["llm_len.text"][uid] = str(n_text + overhead[TRANSCRIBE] + answer_len)
    report = {"stamp": stamp, "n_qa": len(files["text"]) - len(a_text), "n_transcribe": len(a_text)}
    with atomic_dir(out_dir) as tmp:
        for name, table in files.items():
            (tmp / name).write_text(_table(table), encoding="utf-8")
        (tmp / MIX_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    logger.info("%s: %d QA + %d transcription utterances", out_dir, report["n_qa"], report["n_transcribe"])
    return report
