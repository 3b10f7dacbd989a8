"""A Hugging Face causal LM with the LLaMA-Omni prompt around a placeholder.

LLaMA-Omni (§2.1) formats every sample with the LLM's own chat template, the system
prompt below and the user turn ``"<speech>\\nPlease directly answer the questions in the
user's speech."``; the ``<speech>`` placeholder is replaced by the adaptor outputs (S2T)
or, in this project, by the question transcript (T2T), so both modalities share one code
path.  The loss covers the response and the closing end-of-turn token only.

:class:`ChatPrompt` renders the template once and splits it into token pieces:
``prefix`` (everything before the placeholder), ``suffix`` (after the placeholder up to
the start of the assistant's answer) and ``closing`` (the end-of-turn token that follows
an answer).  Works for any tokenizer with a chat template (Llama-3, ChatML/SmolLM2, …).

Llama-3.1/3.2 templates write a date into the system block ("Today Date: ..."), taken
from the ``date_string`` template variable or, when it is unset, from the clock
(``strftime_now``).  The prompt prefix must be the same token sequence whenever it is
built (training, importance scoring, decoding, scoring on other days), so
``chat_template_kwargs`` (an addition; the paper does not discuss it) always pins it:
by default ``date_string`` is :data:`DEFAULT_CHAT_TEMPLATE_KWARGS`'s fixed date.
Templates without such variables (ChatML) ignore it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

logger = logging.getLogger(__name__)

LLAMA_OMNI_SYSTEM_PROMPT = (
    "You are a helpful language and speech assistant. You are able to understand the speech "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language."
)
LLAMA_OMNI_USER_PROMPT = "<speech>\nPlease directly answer the questions in the user's speech."
#: extra user prompts by task name (task 0 is "qa", the LLaMA-Omni prompt above); used only
#: by data with a ``task`` column (the transcription mix, an addition to the paper)
DEFAULT_TASK_PROMPTS = {"transcribe": "<speech>\nPlease repeat what the user said."}
QA_TASK = "qa"
#: template variables passed to ``apply_chat_template``: a fixed date for the templates that
#: print one (Llama-3.1/3.2: "Today Date: 26 Jul 2024", their own fallback date), instead of
#: the clock's
DEFAULT_CHAT_TEMPLATE_KWARGS: Dict[str, str] = {"date_string": "26 Jul 2024"}
_SENTINEL = "\u2063SPEECHIMP_ANSWER\u2063"


@dataclass
class ChatPrompt:
    """Token pieces of the chat-formatted prompt (see module docstring)."""

    prefix: List[int]
    suffix: List[int]
    closing: List[int]
    stop_token_ids: List[int]

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        system_prompt: Optional[str] = LLAMA_OMNI_SYSTEM_PROMPT,
        user_prompt: str = LLAMA_OMNI_USER_PROMPT,
        placeholder: str = "<speech>",
        chat_template_kwargs: Optional[Dict[str, object]] = None,
    ) -> ChatPrompt:
        """Render the template with a placeholder and an answer sentinel, then split.

        ``chat_template_kwargs`` are template variables (``None`` =
        :data:`DEFAULT_CHAT_TEMPLATE_KWARGS`, the pinned date).
        """
        if placeholder not in user_prompt:
            raise ValueError(f"llm_conf.user_prompt must contain the placeholder {placeholder!r}")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no chat template")
        messages = [{"role": "user", "content": user_prompt}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        kwargs = template_kwargs(chat_template_kwargs)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": _SENTINEL}], tokenize=False, **kwargs
        )
        if not full.startswith(prompt) or _SENTINEL not in full:
            raise ValueError("cannot locate the assistant turn in the chat template output")
        closing_text = full[full.index(_SENTINEL) + len(_SENTINEL):]
        before, after = prompt.split(placeholder, 1)
        enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        closing = enc(closing_text)
        stop_ids = {i for i in [tokenizer.eos_token_id] if i is not None}
        # the end-of-turn token is the first special token of the closing text
        specials = set(tokenizer.all_special_ids)
        eot = next((t for t in closing if t in specials), None)
        if eot is None:
            raise ValueError(f"no end-of-turn special token in the closing text {closing_text!r}")
        stop_ids.add(eot)
        closing = closing[: closing.index(eot) + 1]
        return cls(prefix=enc(before), suffix=enc(after), closing=closing,
                   stop_token_ids=sorted(stop_ids))


def template_kwargs(chat_template_kwargs: Optional[Dict[str, object]]) -> Dict[str, object]:
    """``chat_template_kwargs`` checked (``llm_conf.chat_template_kwargs``); ``None`` = the default."""
    if chat_template_kwargs is None:
        return dict(DEFAULT_CHAT_TEMPLATE_KWARGS)
    if not isinstance(chat_template_kwargs, dict) or not all(isinstance(k, str) for k in chat_template_kwargs):
        raise ValueError("llm_conf.chat_template_kwargs must map template variable names to values, "
                         f"e.g. {{date_string: 26 Jul 2024}}; got {chat_template_kwargs!r}")
    reserved = sorted(set(chat_template_kwargs) & {"messages", "add_generation_prompt", "tokenize"})
    if reserved:
        raise ValueError(f"llm_conf.chat_template_kwargs: {reserved} are set by the prompt builder itself")
    return dict(chat_template_kwargs)


def task_prompt_list(
    tokenizer, system_prompt: Optional[str], user_prompt: str, placeholder: str,
    task_prompts: Optional[Dict[str, str]] = None,
    chat_template_kwargs: Optional[Dict[str, object]] = None,
) -> Dict[str, ChatPrompt]:
    """``{"qa": <the user prompt>, **task_prompts}`` as chat prompts, in task-index order.

    Raises ``ValueError`` (naming ``llm_conf.task_prompts``) when a task's prompt does not
    share the QA prompt's prefix and closing (one shared prefix cache serves every task).
    """
    tasks = dict(DEFAULT_TASK_PROMPTS if task_prompts is None else task_prompts)
    if QA_TASK in tasks:
        raise ValueError(f"llm_conf.task_prompts: {QA_TASK!r} is the user_prompt itself; use another name")
    out = {QA_TASK: ChatPrompt.from_tokenizer(tokenizer, system_prompt, user_prompt, placeholder,
                                              chat_template_kwargs)}
    for name, text in tasks.items():
        prompt = ChatPrompt.from_tokenizer(tokenizer, system_prompt, text, placeholder, chat_template_kwargs)
        if prompt.prefix != out[QA_TASK].prefix or prompt.closing != out[QA_TASK].closing:
            raise ValueError(f"llm_conf.task_prompts.{name}: must start with the placeholder "
                             f"{placeholder!r} like user_prompt (the prompt prefix is shared)")
        out[name] = prompt
    return out


def own_chat_prompt(tokenizer, placeholder: str = "<speech>",
                    chat_template_kwargs: Optional[Dict[str, object]] = None) -> ChatPrompt:
    """The LLM's own chat template with the question as the whole user turn and no system
    message of ours (a template that has a default system prompt, e.g. SmolLM2's, writes
    it): the prompt of the "chat" T2T reading, i.e. the text LLM as its users query it.

    The paper leaves open which prompt its T2T column uses; the other reading keeps the
    speech LLM's prompt (LLaMA-Omni's system prompt and instruction) with the transcript
    in place of the speech.  Both are decoded (``text`` and ``chat`` modalities)."""
    return ChatPrompt.from_tokenizer(tokenizer, None, placeholder, placeholder, chat_template_kwargs)


def task_prompts_from_conf(tokenizer, llm_conf: Dict) -> Dict[str, ChatPrompt]:
    """:func:`task_prompt_list` for an ``llm_conf`` mapping, with :class:`HFCausalLM`'s
    defaults (for jobs that need the prompts without loading the model)."""
    return task_prompt_list(
        tokenizer, llm_conf.get("system_prompt", LLAMA_OMNI_SYSTEM_PROMPT) or None,
        llm_conf.get("user_prompt", LLAMA_OMNI_USER_PROMPT), llm_conf.get("placeholder", "<speech>"),
        llm_conf.get("task_prompts"), llm_conf.get("chat_template_kwargs"),
    )


def decoder_hidden_states(model: torch.nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                          cache=None) -> torch.Tensor:
    """Last hidden states ``(Batch, Length, Hidden)`` of a causal LM's decoder, no logits.

    With ``cache`` (a key/value cache of ``Past`` positions shared by every sample,
    :func:`prompt_prefix_cache`), ``attention_mask`` covers the new positions only and right
    padding is assumed.
    """
    decoder = model.get_decoder()
    if cache is None:
        return decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
    past = cache.get_seq_length()
    batch, length = attention_mask.shape
    full_mask = torch.cat([attention_mask.new_ones(batch, past), attention_mask], dim=1)
    positions = torch.arange(past, past + length, device=inputs_embeds.device).expand(batch, -1)
    return decoder(
        inputs_embeds=inputs_embeds, attention_mask=full_mask, position_ids=positions,
        cache=cache, use_cache=True,
    ).last_hidden_state


def prompt_prefix_cache(model: torch.nn.Module, prefix: torch.Tensor, batch_size: int):
    """Key/value cache of the prompt prefix (embeddings ``(Prefix, Hidden)``), computed once
    and repeated over the batch.  Differentiable: each sample's gradient reaches the prefix
    through the repeated keys and values."""
    cache = model.get_decoder()(inputs_embeds=prefix[None], use_cache=True).cache
    cache.batch_repeat_interleave(batch_size)
    return cache


class HFCausalLM(torch.nn.Module):
    """Any ``AutoModelForCausalLM`` with its tokenizer and the LLaMA-Omni prompt.

    Args:
        model_name_or_path: HF hub id or local folder (``exp/pretrained/llm``).
        torch_dtype: weights dtype to load: "float32" to train (fp32 master weights; bf16
            compute comes from ``model_conf.mixed_precision``); "bfloat16"/"float16" only
            for decoding or scoring (training refuses low-precision trainable weights).
        system_prompt: system message (LLaMA-Omni's by default; empty for none).
        user_prompt: user turn containing the placeholder.
        placeholder: the string replaced by speech embeddings or the transcript.
        attn_implementation: transformers attention backend ("sdpa", "eager").
        task_prompts: further user prompts by task name; task 0 is ``qa`` (``user_prompt``).
            They must share the prompt prefix (the placeholder leads every user prompt).
        chat_template_kwargs: chat-template variables (an addition); ``None`` =
            :data:`DEFAULT_CHAT_TEMPLATE_KWARGS` (a fixed ``date_string``, module docstring).
    """

    def __init__(
        self,
        model_name_or_path: str,
        torch_dtype: str = "float32",
        system_prompt: str = LLAMA_OMNI_SYSTEM_PROMPT,
        user_prompt: str = LLAMA_OMNI_USER_PROMPT,
        placeholder: str = "<speech>",
        attn_implementation: str = "sdpa",
        task_prompts: Optional[Dict[str, str]] = None,
        chat_template_kwargs: Optional[Dict[str, object]] = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_name_or_path = model_name_or_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_name_or_path,
            dtype=getattr(torch, torch_dtype),
            attn_implementation=attn_implementation,
        )
        self.task_prompts = task_prompt_list(self.tokenizer, system_prompt or None, user_prompt,
                                             placeholder, task_prompts, chat_template_kwargs)
        self.prompt = self.task_prompts[QA_TASK]
        # the LLM's own chat template around the question alone: T2T as the text LLM is used
        self.chat_prompt = own_chat_prompt(self.tokenizer, placeholder, chat_template_kwargs)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.prompt.stop_token_ids[0]

    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().embedding_dim)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids → input embeddings."""
        return self.model.get_input_embeddings()(ids)

    def hidden_states(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, cache=None
    ) -> torch.Tensor:
        """Last hidden states ``(Batch, Length, Hidden)`` without computing any logits.

        With ``cache`` (a transformers key/value cache of ``Past`` positions shared by every sample),
        ``attention_mask`` covers the new positions only and right padding is assumed.
        """
        return decoder_hidden_states(self.model, inputs_embeds, attention_mask, cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the LM head to selected hidden states only."""
        return self.model.get_output_embeddings()(hidden)
