"""The ESPnet model: frozen speech encoder → frame-concat adaptor → causal LM.

One code path for both input modalities (LLaMA-Omni §2.1 prompt, see ``llm.py``)::

    [prefix tokens] [speech embeddings | question tokens] [suffix tokens] [answer + closing]
     ─────────────────────── prompt: no loss ─────────────────────────  ─── loss ───

* ``modality="speech"`` (S2T): the placeholder is replaced by the adaptor outputs of
  either cached encoder features (``enc_feats``, recipe stage 2) or raw waveforms
  (``speech``), encoded on the fly by the frozen encoder.
* ``modality="text"`` (T2T): the placeholder is replaced by the transcript tokens.
* ``modality="chat"`` (T2T, decoding only): the transcript in the LLM's own chat template
  (``llm.own_chat_prompt``) instead of the speech LLM's prompt: the other reading of the
  paper's T2T column (the text LLM queried as a text LLM).

The loss is the mean cross-entropy over response tokens and the closing end-of-turn
token; logits are computed for those positions only (never the full sequence).

The prompt prefix (system prompt and chat-template head, 43 of ~90 tokens for SmolLM2)
is identical for every sample, so by default (``share_prompt_prefix``) it is run through
the LLM once per batch and its key/value cache is repeated over the batch, in training
(gradients flow through the shared prefix) and in decoding.  The result equals the
unshared computation up to float rounding (tests/test_model.py); the saving is measured
by ``benchmarks/bench_prefix_cache.py``.
"""

from __future__ import annotations

from typing import Dict, List, Literal, Optional, Tuple

import torch
from espnet2.torch_utils.device_funcs import force_gatherable
from espnet2.train.abs_espnet_model import AbsESPnetModel

from espnet_ext.models.adaptor import FrameConcatAdaptor
from espnet_ext.models.encoder import AbsSpeechEncoder
from espnet_ext.models.llm import HFCausalLM, prompt_prefix_cache
from espnet_ext.utils.precision import MixedPrecision, autocast_dtype, maybe_autocast

Modality = Literal["speech", "text", "chat"]  # chat: T2T in the LLM's own template (decoding)


class ESPnetSpeechLLM(AbsESPnetModel):
    """LLaMA-Omni-style speech LLM (stage 1: speech-to-text instruction tuning).

    Args:
        encoder: frozen speech encoder (``None`` when only cached features are used).
        adaptor: the frame-concatenating projector.
        llm: the causal LM with its prompt pieces.
        modality: default input modality for ``forward``.
        share_prompt_prefix: compute the common prompt prefix once per batch and share
            its key/value cache (an exact reformulation, see the module docstring).
        mixed_precision: ``none`` | ``bf16`` | ``auto``: run the adaptor and the LLM under
            bf16 autocast with fp32 master weights (``espnet_ext/utils/precision.py``).
    """

    def __init__(
        self,
        encoder: Optional[AbsSpeechEncoder],
        adaptor: FrameConcatAdaptor,
        llm: HFCausalLM,
        modality: Modality = "speech",
        share_prompt_prefix: bool = True,
        mixed_precision: MixedPrecision = "none",
    ) -> None:
        super().__init__()
        if modality not in ("speech", "text"):  # training modalities ("chat" only decodes)
            raise ValueError(f"model_conf.modality must be 'speech' or 'text', got {modality!r}")
        self.encoder = encoder
        self.adaptor = adaptor
        self.llm = llm
        self.modality = modality
        self.share_prompt_prefix = share_prompt_prefix
        autocast_dtype(mixed_precision, torch.device("cpu"))  # validate the mode now
        self.mixed_precision = mixed_precision
        # optional training-only loss term (optim/anchor.py), set by the task
        self.anchor: Optional[torch.nn.Module] = None
        prompt = llm.prompt
        self.register_buffer("prefix_ids", torch.tensor(prompt.prefix), persistent=False)
        self.register_buffer("suffix_ids", torch.tensor(prompt.suffix), persistent=False)
        # one suffix per task (task 0 = QA = suffix_ids); the prefix is shared by all
        self.tasks = list(llm.task_prompts)
        for i, p in enumerate(llm.task_prompts.values()):
            self.register_buffer(f"task_suffix_ids_{i}", torch.tensor(p.suffix), persistent=False)

    # ---- building the input sequence -------------------------------------------------
    def placeholder_embeddings(
        self,
        modality: Modality,
        text: Optional[torch.Tensor] = None,
        text_lengths: Optional[torch.Tensor] = None,
        speech: Optional[torch.Tensor] = None,
        speech_lengths: Optional[torch.Tensor] = None,
        enc_feats: Optional[torch.Tensor] = None,
        enc_feats_lengths: Optional[torch.Tensor] = None,
    ) -> List[torch.Tensor]:
        """What replaces the placeholder, one ``(Length_i, Hidden)`` tensor per sample."""
        if modality in ("text", "chat"):
            if text is None:
                raise ValueError("modality 'text' needs the question transcript ('text')")
            emb = self.llm.embed(text.clamp(min=0))  # (Batch, Tq, Hidden)
            return [emb[i, : text_lengths[i]] for i in range(len(emb))]
        if enc_feats is None:
            if speech is None:
                raise ValueError("modality 'speech' needs 'enc_feats' or 'speech'")
            if self.encoder is None:
                raise ValueError("raw 'speech' given but the model has no encoder")
            # the frozen encoder runs in its own precision, outside the LLM's autocast, as in
            # stage 2's cached features (its numpy feature extractor cannot take bf16 either)
            with torch.autocast(speech.device.type, enabled=False):
                enc_feats, enc_feats_lengths = self.encoder(speech, speech_lengths)
        adaptor_dtype = self.adaptor.linear1.weight.dtype
        emb, lengths = self.adaptor(enc_feats.to(adaptor_dtype), enc_feats_lengths)  # (B, T/k, H)
        if bool((lengths <= 0).any()):
            raise ValueError("an utterance is shorter than one adaptor step (too short audio)")
        emb = emb.to(self.llm.model.dtype)
        return [emb[i, : lengths[i]] for i in range(len(emb))]

    def embed_pieces(self, pieces: List[torch.Tensor]) -> List[torch.Tensor]:
        """Embeddings of several token-id sequences, from one lookup of the table.

        One lookup per batch matters for speed: every separate lookup of a trainable
        (and, in SmolLM2, tied) embedding table builds its own dense gradient of the
        whole table in backward; one lookup builds one.
        """
        lengths = [int(p.shape[0]) for p in pieces]
        return list(self.llm.embed(torch.cat(pieces)).split(lengths))

    def prompt_embeddings(
        self, tasks: List[int], answers: Optional[List[torch.Tensor]] = None,
        questions: Optional[List[torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, Dict[int, torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """The prefix, each used task's suffix, each answer and each text question
        (T2T), embedded in one lookup.

        Returns ``(prefix (Prefix, Hidden), {task: suffix (Suffix, Hidden)}, [answer_i],
        [question_i])``.
        """
        used = sorted(set(tasks))
        answers, questions = list(answers or []), list(questions or [])
        suffix_ids = [getattr(self, f"task_suffix_ids_{t}") for t in used]
        table = self.embed_pieces([self.prefix_ids] + suffix_ids + answers + questions)
        n = 1 + len(used) + len(answers)
        return table[0], dict(zip(used, table[1 : 1 + len(used)])), table[1 + len(used) : n], table[n:]

    def build_inputs(
        self,
        middles: List[torch.Tensor],
        answers: Optional[List[torch.Tensor]] = None,
        left_pad: bool = False,
        include_prefix: bool = True,
        tasks: Optional[List[int]] = None,
        embedded: Optional[tuple] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
        """Assemble ``[prefix][middle][suffix][answer]`` per sample and pad.

        Returns ``inputs_embeds (Batch, Length, Hidden)``, ``attention_mask`` and the
        prompt length of each sample (where its answer starts, before padding).  With
        ``include_prefix=False`` the prefix is left out (it comes from a shared cache).
        ``tasks`` (task index per sample, default all 0 = QA) selects each sample's suffix.
        ``embedded``: :meth:`prompt_embeddings` of ``tasks`` and ``answers`` when the
        caller already has them (else they are computed here).
        """
        tasks = tasks if tasks is not None else [0] * len(middles)
        prefix, suffixes, answer_embs, _ = embedded or self.prompt_embeddings(tasks, answers)
        head = [prefix] if include_prefix else []
        seqs, prompt_lens = [], []
        for i, mid in enumerate(middles):
            parts = head + [mid, suffixes[tasks[i]]]
            prompt_lens.append(sum(p.shape[0] for p in parts))
            if answers is not None:
                parts.append(answer_embs[i])
            seqs.append(torch.cat(parts, dim=0))
        length = max(s.shape[0] for s in seqs)
        hidden = seqs[0].shape[-1]
        x = seqs[0].new_zeros(len(seqs), length, hidden)
        mask = torch.zeros(len(seqs), length, dtype=torch.long, device=x.device)
        for i, s in enumerate(seqs):
            sl = slice(length - s.shape[0], length) if left_pad else slice(0, s.shape[0])
            x[i, sl] = s
            mask[i, sl] = 1
        return x, mask, prompt_lens

    def task_indices(self, task: Optional[torch.Tensor], batch_size: int) -> List[int]:
        """Per-sample task index from the collated ``task`` column (``(Batch, 1)``), or QA."""
        if task is None:
            return [0] * batch_size
        tasks = task[:, 0].tolist()
        bad = [t for t in tasks if not 0 <= t < len(self.tasks)]
        if bad:
            raise ValueError(f"task index {bad[0]} outside the model's tasks {self.tasks}")
        return tasks

    def autocast(self):
        """The mixed-precision context of this model's device (a no-op for ``none``)."""
        device = self.prefix_ids.device
        return maybe_autocast(autocast_dtype(self.mixed_precision, device), device)

    def prefix_cache(self, batch_size: int, prefix: Optional[torch.Tensor] = None):
        """Key/value cache of the prompt prefix, computed once and repeated over the batch.

        Differentiable: in training, each sample's gradient reaches the prefix through
        the repeated keys and values.  ``prefix``: its embeddings ``(Prefix, Hidden)``
        when the caller has them (else looked up here).
        """
        if prefix is None:
            prefix = self.llm.embed(self.prefix_ids)
        return prompt_prefix_cache(self.llm.model, prefix, batch_size)

    # ---- training ----------------------------------------------------------------------
    def forward(
        self,
        answer: torch.Tensor,
        answer_lengths: torch.Tensor,
        text: Optional[torch.Tensor] = None,
        text_lengths: Optional[torch.Tensor] = None,
        speech: Optional[torch.Tensor] = None,
        speech_lengths: Optional[torch.Tensor] = None,
        enc_feats: Optional[torch.Tensor] = None,
        enc_feats_lengths: Optional[torch.Tensor] = None,
        modality: Optional[Modality] = None,
        task: Optional[torch.Tensor] = None,
        task_lengths: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Mean cross-entropy on response + closing tokens; ``(loss, stats, weight)``.

        In training mode an attached ``anchor`` adds its penalty to the returned loss and
        reports it as ``stats["anchor"]``; ``stats["loss"]`` is always the cross-entropy.

        ``answer`` holds the response tokens followed by the closing token(s), padded with
        -1 (ESPnet's ``CommonCollateFn``).  ``weight`` is the number of loss tokens, so
        ESPnet's distributed averaging is token-weighted.
        """
        modality = modality or self.modality
        answers = [answer[i, : answer_lengths[i]] for i in range(len(answer))]
        tasks = self.task_indices(task, len(answers))
        with self.autocast():
            # T2T: the questions join the batch's one embedding lookup
            questions = ([text[i, : text_lengths[i]] for i in range(len(text))]
                         if modality == "text" and text is not None else None)
            embedded = self.prompt_embeddings(tasks, answers, questions)
            middles = embedded[3] if questions is not None else self.placeholder_embeddings(
                modality, text, text_lengths, speech, speech_lengths, enc_feats, enc_feats_lengths
            )
            if self.share_prompt_prefix:
                x, mask, prompt_lens = self.build_inputs(
                    middles, answers, include_prefix=False, tasks=tasks, embedded=embedded)
                cache = self.prefix_cache(len(answers), prefix=embedded[0])
                hidden = self.llm.hidden_states(x, mask, cache=cache)
            else:
                x, mask, prompt_lens = self.build_inputs(middles, answers, tasks=tasks, embedded=embedded)
                hidden = self.llm.hidden_states(x, mask)  # (Batch, Length, Hidden)
            # hidden state at position t predicts token t + 1: select positions that predict
            # each answer token, then run the LM head on those rows only.
            rows = torch.cat([torch.full((len(a),), i, device=x.device) for i, a in enumerate(answers)])
            cols = torch.cat(
                [torch.arange(len(a), device=x.device) + p - 1 for a, p in zip(answers, prompt_lens)]
            )
            logits = self.llm.logits(hidden[rows, cols])
        targets = torch.cat(answers)
        logits = logits.float()  # (N_tokens, Vocab); the loss in fp32
        loss = torch.nn.functional.cross_entropy(logits, targets)
        with torch.no_grad():
            acc = (logits.argmax(-1) == targets).float().mean()
        stats = {"loss": loss.detach(), "acc": acc}
        if self.anchor is not None and self.training:
            penalty = self.anchor(self, n_tokens=len(targets))  # importance-weighted anchoring, training only
            stats["anchor"] = penalty.detach()
            loss = loss + penalty
        loss, stats, weight = force_gatherable((loss, stats, torch.tensor(len(targets))), loss.device)
        return loss, stats, weight

    def collect_feats(self, **batch: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {}

    # ---- inference ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        modality: Modality,
        max_new_tokens: int = 256,
        **inputs: torch.Tensor,
    ) -> List[List[int]]:
        """Batched greedy decoding with a KV cache; returns new token ids per sample.

        Generation stops at the end-of-turn token (LLaMA-Omni decodes greedily).  An
        optional ``task`` column selects each sample's instruction (default: QA).
        """
        with self.autocast():
            return self._generate(modality, max_new_tokens, **inputs)

    def _generate(self, modality: Modality, max_new_tokens: int, **inputs: torch.Tensor) -> List[List[int]]:
        task, _ = inputs.pop("task", None), inputs.pop("task_lengths", None)
        middles = self.placeholder_embeddings(modality, **inputs)
        tasks = self.task_indices(task, len(middles))
        extra = {}
        prompt = self.llm.chat_prompt if modality == "chat" else self.llm.prompt
        if modality == "chat":
            # the LLM's own template: its prefix and suffix, one lookup, no shared cache
            if any(tasks):
                raise ValueError("modality 'chat' decodes the QA task only (no task column)")
            device = self.prefix_ids.device
            prefix, suffix = self.embed_pieces([torch.tensor(prompt.prefix, device=device),
                                                torch.tensor(prompt.suffix, device=device)])
            x, mask, _ = self.build_inputs(middles, left_pad=True, tasks=tasks,
                                           embedded=(prefix, {0: suffix}, [], []))
        elif self.share_prompt_prefix:
            embedded = self.prompt_embeddings(tasks)
            # [prefix][pad][middle][suffix]: the prefix comes from the shared cache, the
            # padding sits after it (masked), positions follow the attention mask
            x, mask, _ = self.build_inputs(middles, left_pad=True, include_prefix=False, tasks=tasks,
                                           embedded=embedded)
            extra["cache"] = self.prefix_cache(len(middles), prefix=embedded[0])
            prefix = embedded[0][None].expand(len(middles), -1, -1)
            x = torch.cat([prefix.to(x.dtype), x], dim=1)
            mask = torch.cat([mask.new_ones(len(middles), prefix.shape[1]), mask], dim=1)
        else:
            x, mask, _ = self.build_inputs(middles, left_pad=True, tasks=tasks)
        out = self.llm.model.generate(
            inputs_embeds=x,
            attention_mask=mask,
            **extra,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=prompt.stop_token_ids,
            pad_token_id=self.llm.pad_token_id,
            use_cache=True,
        )
        stops = set(prompt.stop_token_ids)
        results = []
        for row in out.tolist():
            ids = []
            for t in row:
                if t in stops:
                    break
                ids.append(t)
            results.append(ids)
        return results
