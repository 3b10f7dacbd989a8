"""The LLaMA-Omni speech adaptor (Fang et al., ICLR 2025, §2.1, "Speech Adaptor").

Downsample the encoder output by concatenating every ``k`` consecutive frames (the last
``T mod k`` frames are dropped), then project with ``Linear(D·k → hidden) → ReLU →
Linear(hidden → LLM hidden size)``.  With Whisper-large-v3 (D = 1280), k = 5 and
hidden = 2048 this maps 1500 frames (30 s) to 300 LLM input embeddings.
"""

from __future__ import annotations

from typing import Tuple

import torch


class FrameConcatAdaptor(torch.nn.Module):
    """Frame-concatenating two-layer projector.

    Args:
        input_size: encoder feature dimension D (1280 for Whisper-large-v3).
        output_size: LLM hidden size (2048 for Llama-3.2-1B, 4096 for Llama-3.1-8B).
        downsample_rate: k, frames concatenated per output embedding (LLaMA-Omni: 5).
        hidden_size: width of the hidden layer (LLaMA-Omni: 2048).
    """

    def __init__(
        self, input_size: int, output_size: int, downsample_rate: int = 5, hidden_size: int = 2048
    ) -> None:
        super().__init__()
        if downsample_rate < 1:
            raise ValueError(f"adaptor_conf.downsample_rate must be >= 1, got {downsample_rate}")
        self.input_size = input_size
        self.downsample_rate = downsample_rate
        self.linear1 = torch.nn.Linear(input_size * downsample_rate, hidden_size)
        self.linear2 = torch.nn.Linear(hidden_size, output_size)

    def output_size(self) -> int:
        return self.linear2.out_features

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(Batch, T, D)`` → ``(Batch, T // k, output_size)``; lengths ``// k``."""
        if feats.shape[-1] != self.input_size:
            raise ValueError(
                f"adaptor expects encoder features of size {self.input_size}, got {feats.shape[-1]}"
            )
        k = self.downsample_rate
        batch, frames, dim = feats.shape
        keep = frames - frames % k
        x = feats[:, :keep].reshape(batch, keep // k, dim * k)  # (Batch, T//k, D·k)
        x = self.linear2(torch.relu(self.linear1(x)))
        return x, torch.div(lengths, k, rounding_mode="floor")
