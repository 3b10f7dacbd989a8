"""Inference: a model from an exp dir (or the No-FT base) and batched greedy decoding (stage 5)."""
