"""Tiny random models saved with ``save_pretrained``, for smoke tests and CI.

They go through exactly the loading code of the real presets (AutoTokenizer,
AutoModelForCausalLM, WhisperEncoder/WhisperFeatureExtractor ``from_pretrained``), so a
tiny run exercises the whole recipe in seconds.  Nothing here is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from espnet_ext.utils.atomic import atomic_dir

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "You are a helpful language and speech assistant.",
    "Please directly answer the questions in the user's speech.",
    "What is the capital of France? The capital of France is Paris.",
    "How many days are in a week? There are seven days in a week.",
    "What is two plus three? Two plus three is 5.",
    "Which planet is known as the red planet? Mars is known as the red planet.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,?!'\"-:;()",
]


def build_tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer with a ChatML template (trained on a built-in corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_llm(out_dir: str | Path, hidden_size: int = 64, num_layers: int = 4, seed: int = 0) -> Path:
    """Save a random Llama causal LM + tokenizer to ``out_dir``; returns the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


#: config class and its extra options of each decoder family :func:`build_tiny_causal_lm` builds
TINY_FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "mistral": ("MistralConfig", {}),
    "gemma": ("GemmaConfig", {"head_dim": 8}),
    "gemma2": ("Gemma2Config", {"head_dim": 8}),
    "phi3": ("Phi3Config", {}),
    "gpt_neox": ("GPTNeoXConfig", {}),
    "gpt2": ("GPT2Config", {}),
}


def build_tiny_causal_lm(out_dir: str | Path, family: str, hidden_size: int = 32, num_layers: int = 3,
                         seed: int = 0) -> Path:
    """Save a random causal LM of a decoder ``family`` (:data:`TINY_FAMILIES`) with the tiny
    ChatML tokenizer to ``out_dir``; returns the path."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    if family not in TINY_FAMILIES:
        raise ValueError(f"family must be one of {sorted(TINY_FAMILIES)}, got {family!r}")
    name, extra = TINY_FAMILIES[family]
    tokenizer = build_tiny_tokenizer()
    config = getattr(transformers, name)(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **extra,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def build_tiny_whisper(out_dir: str | Path, d_model: int = 32, num_mel_bins: int = 80, seed: int = 0) -> Path:
    """Save a random Whisper model, its feature extractor and a tokenizer to ``out_dir``."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    tok = build_tiny_tokenizer(300)  # the decoder's vocabulary (the cascade transcribes with it)
    config = WhisperConfig(
        vocab_size=len(tok), num_mel_bins=num_mel_bins, d_model=d_model,
        encoder_layers=2, encoder_attention_heads=2, decoder_layers=1,
        decoder_attention_heads=2, encoder_ffn_dim=2 * d_model, decoder_ffn_dim=2 * d_model,
        max_source_positions=1500, max_target_positions=64,
        decoder_start_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=num_mel_bins).save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out_dir)
