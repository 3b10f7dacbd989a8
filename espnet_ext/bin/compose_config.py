#!/usr/bin/env python3
"""Merge a model preset and a training config into one validated ESPnet config (stage 4).

Usage:
    python -m espnet_ext.bin.compose_config --preset conf/model/smollm2_135m_whisper_tiny.yaml \\
        --train_config conf/train_full.yaml --out exp/full/train.yaml
    # another exp dir: model paths and importance reports (exp/...) follow it
    python -m espnet_ext.bin.compose_config --preset conf/model/x.yaml --train_config conf/train_layerlr.yaml \
        --out /data/exp/layerlr/train.yaml --pretrained_dir /data/exp/pretrained --expdir /data/exp
    # the pretrained base model alone (No-FT, stage-3 importance)
    python -m espnet_ext.bin.compose_config --preset conf/model/x.yaml --out exp/pretrained/model.yaml
    # the recipe preset's step budget over training configs (several in one call)
    python -m espnet_ext.bin.compose_config --preset conf/model/x.yaml --train_config conf/train_full.yaml \
        --recipe_preset conf/preset/quick.yaml --out exp/full/train.yaml \
        --train_config conf/train_lora.yaml --out exp/lora/train.yaml
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, help="conf/model/*.yaml")
    p.add_argument("--train_config", action="append", default=None,
                   help="conf/train_*.yaml (repeatable: one --out each; ESPnet is imported once)")
    p.add_argument("--out", action="append", default=None, help="composed config to write")
    p.add_argument("--pretrained_dir", default=None,
                   help="stage-2 output dir replacing exp/pretrained in model paths")
    p.add_argument("--expdir", default=None,
                   help="the recipe's exp dir: importance_report paths written exp/... are rebased onto it")
    p.add_argument("--seed", action="append", default=None,
                   help="training seed of each --train_config (repeatable, one per --out; '-' keeps the "
                   "config's own): one run of several (run.sh --seeds)")
    p.add_argument("--recipe_preset", default=None,
                   help="conf/preset/<name>.yaml: its train: section (the CPU budget) is merged over "
                   "--train_config when --preset names a train_overlay (the demo-size presets)")
    return p


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    from espnet_ext.tasks.compose import compose_train_config

    if not args.out:
        raise SystemExit("--out is required")
    train_configs = args.train_config or [None]
    if len(train_configs) != len(args.out):
        raise SystemExit(f"give one --out per --train_config ({len(args.out)} --out, "
                         f"{len(args.train_config or [])} --train_config)")
    seeds = args.seed or ["-"] * len(args.out)
    if len(seeds) != len(args.out):
        raise SystemExit(f"give one --seed per --out, or none ({len(seeds)} --seed, {len(args.out)} --out)")
    for train_config, out, seed in zip(train_configs, args.out, seeds):
        try:
            compose_train_config(args.preset, train_config, out, args.pretrained_dir, args.expdir,
                                 args.recipe_preset, seed=None if seed == "-" else int(seed))
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"compose_config: {e}") from e


if __name__ == "__main__":
    main()
