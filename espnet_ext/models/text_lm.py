"""Any Hugging Face causal LM as a text model the importance code can score.

The speech LLM scores text through its LLaMA-Omni prompt (:mod:`espnet_ext.models.llm`).
:class:`TextLM` does the same for a bare causal LM, fine-tuned folder or peft adapter:

* a sample is a *context* (no loss) followed by a *target* (the loss): for a prompt/response
  pair the context is the chat-formatted user turn and the target the response plus the
  template's closing end-of-turn token; for plain text the context is the first token and
  the target the rest (language-model loss);
* prompts come from the model's own chat template (:class:`~espnet_ext.models.llm.ChatPrompt`):
  ``own`` puts the prompt alone in the user turn (:func:`~espnet_ext.models.llm.own_chat_prompt`),
  ``recipe`` uses the speech LLM's prompt (LLaMA-Omni's system prompt, the question in place
  of ``<speech>``), tokenised piece by piece exactly as the speech LLM's T2T path does;
* ``forward`` returns ``(loss, stats, weight)`` like the speech LLM: the mean cross-entropy
  over the batch's target tokens, with logits only at the target positions, so
  :func:`~espnet_ext.importance.scoring.score_importance` and the Table-1 perplexity run on it
  unchanged.  By default the logits come from the model's own forward (``logits_to_keep``:
  its LM head and any output transform, e.g. Gemma-2's soft-capping).  With
  ``share_prompt_prefix`` a batch is computed as the speech LLM computes its text input
  (:mod:`espnet_ext.models.speech_llm`): the chat prompt's common prefix runs once and its
  key/value cache is shared over the batch (:func:`~espnet_ext.models.llm.prompt_prefix_cache`),
  the rest runs through the decoder (:func:`~espnet_ext.models.llm.decoder_hidden_states`)
  and the LM head alone gives the logits; with the recipe's prompt that reproduces the
  speech LLM's numbers in any precision, bf16 autocast included;
* parameters are named ``llm.model.<Hugging Face name>``, as inside the speech LLM, so the
  reports of a text LLM and of a speech LLM built on it share their keys.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import torch

from espnet_ext.models.llm import ChatPrompt, decoder_hidden_states, own_chat_prompt, prompt_prefix_cache
from espnet_ext.utils.precision import autocast_dtype, maybe_autocast

PromptStyle = Literal["own", "recipe"]
PROMPT_STYLES = ("own", "recipe")


def chat_prompt(tokenizer, style: PromptStyle, chat_template_kwargs: Optional[Dict[str, object]] = None) -> ChatPrompt:
    """The prompt pieces of ``style`` (module docstring) from the tokenizer's chat template."""
    if style == "own":
        return own_chat_prompt(tokenizer, chat_template_kwargs=chat_template_kwargs)
    if style == "recipe":
        return ChatPrompt.from_tokenizer(tokenizer, chat_template_kwargs=chat_template_kwargs)
    raise ValueError(f"--prompt must be one of {PROMPT_STYLES}, got {style!r}")


class TextLM(torch.nn.Module):
    """A causal LM with its tokenizer, scored on context → target samples (module docstring).

    Args:
        model: a transformers causal LM (or a ``PeftModel`` around one).
        tokenizer: its tokenizer.
        prompt: chat prompt pieces for prompt/response samples (``None``: plain text only).
        mixed_precision: ``none`` | ``bf16`` | ``auto`` (bf16 autocast, fp32 loss; as the
            speech LLM's ``model_conf.mixed_precision``).
        share_prompt_prefix: compute prompt/response batches as the speech LLM does (module
            docstring); refused for a model whose forward transforms its logits.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, prompt: Optional[ChatPrompt] = None,
                 mixed_precision: str = "none", share_prompt_prefix: bool = False) -> None:
        super().__init__()
        self.llm = torch.nn.ModuleDict({"model": model})  # names: llm.model.<HF name>
        self.tokenizer = tokenizer
        self.prompt = prompt
        autocast_dtype(mixed_precision, torch.device("cpu"))  # validate the mode now
        self.mixed_precision = mixed_precision
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        inner = self.causal_lm
        self._keeps_logits = "logits_to_keep" in inspect.signature(inner.forward).parameters
        cap = getattr(inner.config, "final_logit_softcapping", None)
        if share_prompt_prefix and cap is not None:
            raise ValueError(f"{inner.config.model_type} soft-caps its logits (final_logit_softcapping {cap}), which "
                             "the shared-prefix computation (the LM head alone) would skip; score it without it")
        self.share_prompt_prefix = share_prompt_prefix and prompt is not None

    @property
    def causal_lm(self) -> torch.nn.Module:
        """The transformers model (inside peft's wrapper: LoRA layers are injected into it)."""
        from peft import PeftModel

        model = self.llm["model"]
        return model.get_base_model() if isinstance(model, PeftModel) else model

    def _ids(self, text: str) -> List[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, prompt: Optional[str], response: str, where: str = "") -> Tuple[List[int], List[int]]:
        """``(context, target)`` token ids of one sample (``prompt`` ``None``: plain text)."""
        if prompt is None:
            ids = self.tokenizer(response)["input_ids"]  # with the tokenizer's BOS, if it adds one
            if len(ids) < 2:
                raise ValueError(f"{where}: a plain-text sample needs at least two tokens, got {len(ids)}")
            return ids[:1], ids[1:]
        if self.prompt is None:
            raise ValueError(f"{where}: a prompt/response sample, but the model was built without a chat prompt")
        context = self.prompt.prefix + self._ids(prompt) + self.prompt.suffix
        target = self._ids(response) + self.prompt.closing
        return context, target

    def forward(
        self,
        context: torch.Tensor,
        context_lengths: torch.Tensor,
        target: torch.Tensor,
        target_lengths: torch.Tensor,
        modality: Optional[str] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Mean cross-entropy over the target tokens; ``(loss, stats, weight)``.

        ``context``/``target``: ``(Batch, Length)`` token ids padded with -1 (any value:
        only the first ``*_lengths`` are read); ``weight`` is the number of target tokens.
        ``modality`` is accepted for the importance code's calling convention (text only).
        """
        if modality not in (None, "text"):
            raise ValueError(f"a text LM scores text input only, got modality {modality!r}")
        with maybe_autocast(autocast_dtype(self.mixed_precision, context.device), context.device):
            if self.share_prompt_prefix:
                logits, targets = self._prefix_shared_logits(context, context_lengths, target, target_lengths)
            else:
                logits, targets = self._own_logits(context, context_lengths, target, target_lengths)
        logits = logits.reshape(-1, logits.shape[-1]).float()  # (N_tokens, Vocab); the loss in fp32
        loss = torch.nn.functional.cross_entropy(logits, targets)
        with torch.no_grad():
            acc = (logits.argmax(-1) == targets).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc}, torch.tensor(len(targets), device=context.device)

    def _own_logits(self, context, context_lengths, target, target_lengths) -> Tuple[torch.Tensor, torch.Tensor]:
        """Target-position logits from the model's own forward, and the targets."""
        device = context.device
        seqs = [torch.cat([context[i, : context_lengths[i]], target[i, : target_lengths[i]]])
                for i in range(len(context))]
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), self.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        keep = torch.zeros(ids.shape, dtype=torch.bool, device=device)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
            c = int(context_lengths[i])
            keep[i, c - 1 : c - 1 + int(target_lengths[i])] = True  # position t predicts token t + 1
        targets = torch.cat([target[i, : target_lengths[i]] for i in range(len(target))])
        if self._keeps_logits:
            logits = self.causal_lm(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False).logits
        else:  # an older model class: every position's logits, then the target rows
            logits = self.causal_lm(input_ids=ids, attention_mask=mask, use_cache=False).logits[keep]
        return logits, targets

    def _prefix_shared_logits(self, context, context_lengths, target, target_lengths
                              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Target-position logits computed as the speech LLM computes its text input: the
        prompt prefix once (its cache shared), the rest right-padded, the LM head on the
        target rows only; and the targets."""
        lm, n_prefix, batch = self.causal_lm, len(self.prompt.prefix), len(context)
        device = context.device
        rests = [torch.cat([context[i, n_prefix : context_lengths[i]], target[i, : target_lengths[i]]])
                 for i in range(batch)]
        if any(int(context_lengths[i]) <= n_prefix for i in range(batch)):
            raise ValueError("a sample's context is no longer than the shared prompt prefix")
        prefix_ids = torch.tensor(self.prompt.prefix, dtype=torch.long, device=device)
        table = lm.get_input_embeddings()(torch.cat([prefix_ids, *rests]))  # one lookup for the batch
        prefix, *embs = table.split([n_prefix, *(len(r) for r in rests)])
        length = max(len(e) for e in embs)
        x = prefix.new_zeros(batch, length, prefix.shape[-1])  # (Batch, Length, Hidden), right-padded
        mask = torch.zeros(batch, length, dtype=torch.long, device=device)
        for i, e in enumerate(embs):
            x[i, : len(e)] = e
            mask[i, : len(e)] = 1
        hidden = decoder_hidden_states(lm, x, mask, cache=prompt_prefix_cache(lm, prefix, batch))
        # the hidden state at position t predicts token t + 1
        rows = torch.cat([torch.full((int(n),), i, device=device) for i, n in enumerate(target_lengths)])
        cols = torch.cat([torch.arange(int(n), device=device) + int(c) - n_prefix - 1
                          for n, c in zip(target_lengths, context_lengths)])
        targets = torch.cat([target[i, : target_lengths[i]] for i in range(batch)])
        return lm.get_output_embeddings()(hidden[rows, cols]), targets


def load_text_lm(
    path: str | Path,
    adapter: Optional[str | Path] = None,
    prompt_style: Optional[PromptStyle] = "own",
    torch_dtype: str = "float32",
    device: str | torch.device = "cpu",
    mixed_precision: str = "none",
    attn_implementation: Optional[str] = None,
    chat_template_kwargs: Optional[Dict[str, object]] = None,
    share_prompt_prefix: bool = False,
) -> TextLM:
    """A :class:`TextLM` from a model folder (plus a peft ``adapter`` folder on it), in eval mode.

    The tokenizer comes from the adapter folder when it has one, else from ``path``;
    ``prompt_style`` ``None`` builds no chat prompt (plain-text data only).
    ``attn_implementation`` ``None`` is transformers' default for the model class.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_dir = adapter if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file() else path
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, torch_dtype), **kwargs)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    prompt = chat_prompt(tokenizer, prompt_style, chat_template_kwargs) if prompt_style else None
    return TextLM(model, tokenizer, prompt, mixed_precision, share_prompt_prefix).to(device).eval()
