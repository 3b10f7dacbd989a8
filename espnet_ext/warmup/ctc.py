"""Adaptor warm-up by CTC onto the LLM's input-embedding table.

**An addition to the paper's recipe** (LLaMA-Omni stage 1 starts from a random adaptor);
switch it off by not passing ``init_param`` to stage-1 training.

Why: on a CPU demo budget stage-1 training gets a few dozen steps, and a randomly
initialised adaptor then learns answer templates, not speech: with 210 utterances and 100–150 steps of LoRA
training, held-out S2T stayed at 0/15 and transcripts named training entities.
This warm-up never runs the LLM: only the adaptor, on cached encoder outputs, so a
hundred steps cost seconds to a minute.

Objective (per adaptor output frame, 10 Hz with Whisper + k = 5)::

    logits[t, c] = s · cos(adaptor_out[t], e_c),   c ∈ {blank} ∪ V
    loss = CTC(logits, LLM token ids of the transcript)

* ``e_c`` are the frozen LLM input embeddings of an output vocabulary ``V`` — the tokens
  that occur in the warm-up transcripts (not the full vocabulary: over all 49k SmolLM2
  tokens the CTC stays all-blank for hundreds of steps: 400 steps at lr 1e-3 ended with
  empty greedy outputs);
* the blank gets a learned vector, ``s`` a learned temperature (log-parameterised).

Cosine logits make adaptor outputs point at the embeddings of the words spoken, which
is what the frozen LLM reads.  Blank frames remain between them; stage-1 training learns
to read past them.

The trainer (:class:`AdaptorWarmup`) samples batches from the task's transcripts and,
optionally, from a broad-vocabulary alignment set (``espnet_ext.data.alignment``),
keeps model/optimizer/scheduler/RNG state in ``checkpoint.pth`` (resume is automatic)
and writes ``adaptor.pth`` — the adaptor's state dict alone, for ESPnet's
``--init_param <out>/adaptor.pth::adaptor``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from itertools import groupby
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from espnet_ext.data.alignment import AlignmentSetConfig
from espnet_ext.utils.atomic import atomic_open, atomic_write_text

logger = logging.getLogger(__name__)


@dataclass
class WarmupConfig:
    """Settings of the CTC warm-up (``conf/warmup.yaml``, key ``warmup_conf``)."""

    steps: int = 300  # optimizer steps (300 × batch 32 converges on the demo's train set)
    batch_size: int = 32  # utterances per step
    lr: float = 3e-3  # AdamW peak learning rate (1e-3 converges ~3× slower)
    warmup_steps: int = 50  # linear LR warm-up, then cosine decay to 0 at ``steps``
    grad_clip: float = 5.0  # max global gradient norm
    init_scale: float = 10.0  # initial cosine temperature s
    learn_scale: bool = True  # learn s (it grows to ~14–18)
    align_fraction: float = 0.5  # share of each batch from the alignment set (if one is given)
    eval_every: int = 100  # greedy-CTC token error rate on the valid set every N steps
    checkpoint_every: int = 100  # write checkpoint.pth every N steps
    seed: int = 0  # parameters init, batch sampling

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"warmup_conf.steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"warmup_conf.batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"warmup_conf.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_conf.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.init_scale > 0:
            raise ValueError(f"warmup_conf.init_scale must be > 0, got {self.init_scale}")
        if not 0.0 <= self.align_fraction < 1.0:
            raise ValueError(f"warmup_conf.align_fraction must be in [0, 1), got {self.align_fraction}")
        if self.eval_every < 1 or self.checkpoint_every < 1:
            raise ValueError("warmup_conf.eval_every and checkpoint_every must be >= 1")


# ---- the objective ----------------------------------------------------------------------
class CTCEmbeddingHead(torch.nn.Module):
    """Cosine-similarity CTC classifier over frozen LLM input embeddings.

    Class 0 is the blank (a learned vector); class ``i + 1`` is token ``vocab[i]``.

    Args:
        embeddings: the LLM's input-embedding table ``(Vocab, Hidden)`` (copied, frozen).
        vocab: the token ids that form the output vocabulary V.
        init_scale: initial temperature s.
        learn_scale: whether s is trained.
    """

    def __init__(
        self, embeddings: torch.Tensor, vocab: Sequence[int], init_scale: float = 10.0, learn_scale: bool = True
    ) -> None:
        super().__init__()
        vocab = sorted(set(int(v) for v in vocab))
        if not vocab:
            raise ValueError("the CTC output vocabulary is empty")
        if vocab[0] < 0 or vocab[-1] >= embeddings.shape[0]:
            raise ValueError(f"vocab ids must lie in [0, {embeddings.shape[0]})")
        ids = torch.tensor(vocab, dtype=torch.long)
        self.register_buffer("vocab", ids)
        self.register_buffer("targets", F.normalize(embeddings.detach()[ids].float(), dim=-1))  # (V, H)
        class_of = torch.full((embeddings.shape[0],), -1, dtype=torch.long)
        class_of[ids] = torch.arange(1, len(vocab) + 1)
        self.register_buffer("class_of", class_of, persistent=False)  # token id → class (-1: not in V)
        self.blank = torch.nn.Parameter(0.02 * torch.randn(embeddings.shape[1]))
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(init_scale)), requires_grad=learn_scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(Batch, T, Hidden)`` → logits ``(Batch, T, 1 + |V|)``."""
        classes = torch.cat([F.normalize(self.blank, dim=-1)[None], self.targets], dim=0)
        return self.scale * F.normalize(x.float(), dim=-1) @ classes.T

    def to_classes(self, tokens: Sequence[int]) -> torch.Tensor:
        """Token ids → class ids (``-1`` for tokens outside V)."""
        return self.class_of[torch.as_tensor(list(tokens), dtype=torch.long, device=self.class_of.device)]


def ctc_loss(
    logits: torch.Tensor, lengths: torch.Tensor, targets: Sequence[torch.Tensor]
) -> Tuple[torch.Tensor, int]:
    """Mean CTC loss (per target token, averaged over utterances) and the number used.

    Utterances with a target outside V (class ``-1``) are left out; infeasible ones
    (more labels than frames allow) contribute zero (``zero_infinity``).
    """
    keep = [i for i, t in enumerate(targets) if len(t) > 0 and bool((t > 0).all())]
    if not keep:
        return logits.sum() * 0.0, 0
    log_probs = logits[keep].log_softmax(-1).transpose(0, 1)  # (T, Batch, Classes)
    tgt = torch.cat([targets[i] for i in keep])
    tgt_len = torch.tensor([len(targets[i]) for i in keep])
    loss = F.ctc_loss(log_probs, tgt, lengths[keep].cpu(), tgt_len, blank=0, reduction="mean", zero_infinity=True)
    return loss, len(keep)


def greedy_decode(head: CTCEmbeddingHead, logits: torch.Tensor, lengths: torch.Tensor) -> List[List[int]]:
    """Best-path CTC: argmax per frame, merge repeats, drop blanks → LLM token ids."""
    best = logits.argmax(-1).tolist()
    out = []
    for row, n in zip(best, lengths.tolist()):
        out.append([int(head.vocab[c - 1]) for c, _ in groupby(row[:n]) if c != 0])
    return out


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance between two token sequences."""
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


# ---- data -------------------------------------------------------------------------------
@dataclass
class WarmupExample:
    """One utterance: cached encoder output ``(Frames, D_enc)`` and transcript token ids."""

    utt_id: str
    feats: torch.Tensor
    tokens: List[int]


def load_examples(dump_dir: str | Path, tokenizer) -> List[WarmupExample]:
    """Read ``text`` and ``enc_feats.scp`` of a dump dir (recipe stage 2 layout)."""
    import kaldiio

    from espnet_ext.data.dump import check_feature_archive
    from espnet_ext.data.kaldi_dir import read_table

    dump_dir = Path(dump_dir)
    texts = read_table(dump_dir / "text")
    check_feature_archive(dump_dir / "enc_feats.scp")
    feats = kaldiio.load_scp(str(dump_dir / "enc_feats.scp"))
    return [
        WarmupExample(u, torch.from_numpy(np.array(feats[u], dtype=np.float32)),
                      tokenizer(texts[u], add_special_tokens=False)["input_ids"])
        for u in sorted(texts)
    ]


def pad_feats(examples: Sequence[WarmupExample]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(Batch, T_max, D_enc)`` zero-padded features and their lengths."""
    lengths = torch.tensor([e.feats.shape[0] for e in examples])
    x = torch.zeros(len(examples), int(lengths.max()), examples[0].feats.shape[1])
    for i, e in enumerate(examples):
        x[i, : e.feats.shape[0]] = e.feats
    return x, lengths


def output_vocab(*example_sets: Sequence[WarmupExample]) -> List[int]:
    """V: every token id that occurs in the given transcripts."""
    return sorted({t for examples in example_sets for e in examples for t in e.tokens})


# ---- the trainer ------------------------------------------------------------------------
class AdaptorWarmup:
    """CTC warm-up loop for an adaptor (no LLM forward).

    Args:
        adaptor: the ESPnet model's adaptor module (``FrameConcatAdaptor``).
        head: the CTC head over the LLM embeddings.
        config: :class:`WarmupConfig`.
        train: transcribed utterances of the task (``dump/train``).
        valid: held-out utterances for token error rate (``dump/dev``).
        align: optional broad-vocabulary alignment set (``dump/align``).
        output_dir: where ``checkpoint.pth``, ``adaptor.pth`` and logs go.
    """

    def __init__(
        self,
        adaptor: torch.nn.Module,
        head: CTCEmbeddingHead,
        config: WarmupConfig,
        train: Sequence[WarmupExample],
        valid: Sequence[WarmupExample],
        output_dir: str | Path,
        align: Sequence[WarmupExample] = (),
    ) -> None:
        if not train:
            raise ValueError("the warm-up needs at least one training utterance")
        self.adaptor, self.head, self.config = adaptor, head, config
        self.train_set, self.valid_set, self.align_set = list(train), list(valid), list(align)
        self.output_dir = Path(output_dir)
        params = [p for p in list(adaptor.parameters()) + list(head.parameters()) if p.requires_grad]
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        warm, total = max(config.warmup_steps, 1), config.steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)),
        )
        self.rng = random.Random(config.seed)
        self.step = 0
        self.history: List[Dict[str, float]] = []

    # -- batches
    def sample_batch(self) -> List[WarmupExample]:
        bs = self.config.batch_size
        n_align = int(round(bs * self.config.align_fraction)) if self.align_set else 0
        pick = lambda pool, n: [pool[self.rng.randrange(len(pool))] for _ in range(n)]  # noqa: E731
        return pick(self.train_set, bs - n_align) + pick(self.align_set, n_align)

    def forward(self, examples: Sequence[WarmupExample]) -> Tuple[torch.Tensor, torch.Tensor]:
        device = self.head.targets.device
        x, lengths = pad_feats(examples)
        out, out_lengths = self.adaptor(x.to(device), lengths.to(device))  # (Batch, T // k, Hidden)
        return self.head(out), out_lengths

    def train_step(self, examples: Sequence[WarmupExample]) -> float:
        self.adaptor.train()
        logits, lengths = self.forward(examples)
        loss, _ = ctc_loss(logits, lengths, [self.head.to_classes(e.tokens) for e in examples])
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self, examples: Sequence[WarmupExample], batch_size: int = 64) -> Dict[str, float]:
        """Greedy-CTC token error rate, exact-match rate and blank share of frames."""
        self.adaptor.eval()
        errors = n_ref = exact = blank = frames = 0
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            logits, lengths = self.forward(chunk)
            best = logits.argmax(-1)
            valid = torch.arange(best.shape[1], device=best.device)[None] < lengths[:, None]
            blank += int(((best == 0) & valid).sum())
            frames += int(valid.sum())
            for e, hyp in zip(chunk, greedy_decode(self.head, logits, lengths)):
                err = edit_distance(hyp, e.tokens)
                errors, n_ref, exact = errors + err, n_ref + len(e.tokens), exact + (err == 0)
        self.adaptor.train()
        return {"ter": errors / max(n_ref, 1), "exact": exact / max(len(examples), 1),
                "blank_frac": blank / max(frames, 1)}

    # -- state
    def state_dict(self) -> dict:
        return {"step": self.step, "adaptor": self.adaptor.state_dict(), "head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": self.rng.getstate(), "history": self.history, "config": asdict(self.config)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("config") != asdict(self.config):
            logger.warning("warmup_conf differs from the checkpoint's; resuming with the new one")
        if not torch.equal(state["head"]["vocab"].cpu(), self.head.vocab.cpu()):
            raise ValueError("the checkpoint's output vocabulary differs (other transcripts?); "
                             f"remove {self.output_dir}/checkpoint.pth to start over")
        self.adaptor.load_state_dict(state["adaptor"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.setstate(state["rng"])
        self.step, self.history = state["step"], list(state["history"])

    def save(self, name: str, obj) -> None:
        with atomic_open(self.output_dir / name, "wb") as f:
            torch.save(obj, f)

    # -- loop
    def run(self, stop_at: Optional[int] = None) -> dict:
        """Train to ``config.steps`` (resuming from ``checkpoint.pth``); return the summary.

        ``stop_at`` ends this run early after that step, with a checkpoint (an interruption).
        """
        cfg = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        ckpt = self.output_dir / "checkpoint.pth"
        if ckpt.exists():
            self.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False))
            logger.info("resumed the warm-up from %s at step %d", ckpt, self.step)
        torch.manual_seed(cfg.seed + self.step)
        start, losses = time.perf_counter(), []
        bar = tqdm(total=cfg.steps, initial=self.step, desc="adaptor warm-up", unit="step")
        last = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        while self.step < last:
            losses.append(self.train_step(self.sample_batch()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", scale=f"{float(self.head.scale.detach()):.1f}")
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                row = {"step": self.step, "loss": float(np.mean(losses)), "scale": float(self.head.scale.detach())}
                if self.valid_set:
                    row.update({f"valid_{k}": v for k, v in self.evaluate(self.valid_set).items()})
                self.history.append(row)
                losses = []
                logger.info("warm-up %s", " ".join(f"{k}={v:.4g}" for k, v in row.items()))
            if self.step % cfg.checkpoint_every == 0 or self.step == last:
                self.save("checkpoint.pth", self.state_dict())
        bar.close()
        seconds = time.perf_counter() - start
        if self.step < cfg.steps:  # interrupted on purpose: no final outputs yet
            return {"steps": self.step, "seconds_this_run": round(seconds, 1), "finished": False}
        self.save("adaptor.pth", self.adaptor.state_dict())  # for --init_param <this>::adaptor
        self.save("head.pth", self.head.state_dict())
        summary = {"steps": self.step, "finished": True, "seconds_this_run": round(seconds, 1),
                   "vocab_size": len(self.head.vocab),
                   "n_train": len(self.train_set), "n_align": len(self.align_set), "n_valid": len(self.valid_set),
                   "final": self.history[-1] if self.history else {}}
        atomic_write_text(self.output_dir / "warmup_summary.json", json.dumps(summary, indent=2) + "\n")
        with atomic_open(self.output_dir / "history.tsv") as f:
            keys = list(self.history[0]) if self.history else []
            f.write("\t".join(keys) + "\n")
            fmt = lambda v: str(v) if isinstance(v, int) else f"{v:.4f}"  # noqa: E731
            f.writelines("\t".join(fmt(r.get(k, float("nan"))) for k in keys) + "\n" for r in self.history)
        return summary


def load_input_embeddings(model_name_or_path: str | Path) -> torch.Tensor:
    """The LLM's input-embedding table ``(Vocab, Hidden)`` without building the model when
    the folder holds safetensors (a Llama-3.1-8B is never materialised for 0.5 GB)."""
    folder = Path(model_name_or_path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if files:
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), framework="pt") as sf:
                keys = [k for k in sf.keys() if k.endswith("embed_tokens.weight")]
                if keys:
                    return sf.get_tensor(keys[0]).float()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_name_or_path))
    return model.get_input_embeddings().weight.detach().float()


def run_warmup_job(
    model_config: str | Path,
    train_dump: str | Path,
    valid_dump: Optional[str | Path],
    output_dir: str | Path,
    warmup_conf: WarmupConfig,
    alignment_conf=None,
    align_dump: Optional[str | Path] = None,
    device: str = "cpu",
) -> dict:
    """Recipe job: (build the alignment set,) build the adaptor of ``model_config``'s
    preset, warm it up and write ``output_dir/adaptor.pth``.

    ``model_config`` is a training-style YAML with ``encoder_conf``, ``adaptor``,
    ``adaptor_conf`` and ``llm_conf`` (``exp/pretrained/model.yaml``); paths in it are
    relative to the working directory, as in ESPnet recipes.
    """
    import yaml
    from transformers import AutoTokenizer

    from espnet_ext.tasks.speech_llm import adaptor_choices

    with open(model_config, encoding="utf-8") as f:
        conf = yaml.safe_load(f) or {}
    llm_path = conf["llm_conf"]["model_name_or_path"]
    tokenizer = AutoTokenizer.from_pretrained(llm_path)
    align: List[WarmupExample] = []
    if alignment_conf is not None and alignment_conf.num_utts > 0:
        if align_dump is None:
            raise ValueError("alignment_conf.num_utts > 0 needs an align_dump directory")
        from espnet_ext.data.alignment import build_alignment_dump
        from espnet_ext.models.encoder import WhisperSpeechEncoder

        enc_conf = dict(conf.get("encoder_conf") or {})
        encoder = WhisperSpeechEncoder(enc_conf["model_name_or_path"], pad_to_30s=enc_conf.get("pad_to_30s", False))
        build_alignment_dump(align_dump, tokenizer, encoder.to(device), alignment_conf)
        align = load_examples(Path(align_dump) / "train", tokenizer)
    train = load_examples(train_dump, tokenizer)
    valid = load_examples(valid_dump, tokenizer) if valid_dump else []
    embeddings = load_input_embeddings(llm_path)

    # (Batch, Frames, D_enc) → (Batch, Frames // k, D_llm), the preset's adaptor
    adaptor_conf = dict(conf.get("adaptor_conf") or {})
    adaptor_conf.setdefault("input_size", int(train[0].feats.shape[1]))
    adaptor_conf.setdefault("output_size", int(embeddings.shape[1]))
    torch.manual_seed(warmup_conf.seed)
    adaptor = adaptor_choices.get_class(conf.get("adaptor", "concat"))(**adaptor_conf)
    head = CTCEmbeddingHead(embeddings, output_vocab(train, align), warmup_conf.init_scale, warmup_conf.learn_scale)
    logger.info("warm-up: %d train + %d alignment utterances, |V| = %d, %d valid",
                len(train), len(align), len(head.vocab), len(valid))
    trainer = AdaptorWarmup(adaptor.to(device), head.to(device), warmup_conf, train, valid, output_dir, align)
    return trainer.run()


def load_warmup_settings(path: str | Path) -> Tuple[WarmupConfig, AlignmentSetConfig]:
    """``conf/warmup.yaml``: its ``warmup_conf`` and ``alignment_conf`` sections; unknown keys
    and bad values name the file and section."""
    from espnet_ext.utils.conf import load_sections

    conf = load_sections(path, {"warmup_conf": WarmupConfig, "alignment_conf": AlignmentSetConfig})
    return conf["warmup_conf"], conf["alignment_conf"]
