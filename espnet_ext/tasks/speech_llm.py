"""``SpeechLLMTask``: ESPnet task for LLaMA-Omni-style stage-1 training.

Parts are ``ClassChoices`` entries with ``--X_conf`` partners (as in
``espnet2/tasks/asr.py``):

* ``--encoder whisper`` — frozen transformers Whisper encoder (optional: ``none`` when
  training only from cached encoder outputs);
* ``--adaptor concat`` — frame-concatenating projector (k, hidden size in ``adaptor_conf``);
* ``--llm hf`` — any Hugging Face causal LM (hub id, local folder).

Mitigations of §3.1, each off when its option is null: ``--layer_lr_conf`` (eq. 3,
``optim/layer_lr.py``), ``--lora_conf`` (peft, ``models/lora.py``) and ``--anchor_conf``
(importance-weighted anchoring, ours, ``optim/anchor.py``).

``--sharding_conf`` (an addition to the paper's recipe, ``train/sharding.py``): FSDP2
sharding of parameters, gradients and optimizer state over the ranks, for full
fine-tuning at 8B scale; null = ESPnet's DDP.

Data names: ``answer`` (required), ``text`` (question transcript), ``enc_feats`` (cached
encoder outputs, ``kaldi_ark``) and ``speech`` (16 kHz waveform, ``sound``: on-the-fly
encoding, ``encoder_conf.cache_features: false``).  Text files may use the data type
``indexed_text`` registered here (ESPnet's ``text`` read line by line, never the whole
file: ``espnet_ext/data/indexed_text.py``).  ``config.yaml``
stores only the choice keys, so inference must import this module (it does, via
``espnet_ext.bin.speechllm_inference``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable, Collection, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from espnet2.train import dataset as espnet_dataset
from espnet2.train.class_choices import ClassChoices
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import str2bool
from typeguard import typechecked

from espnet_ext.data.indexed_text import IndexedTextReader
from espnet_ext.models.adaptor import FrameConcatAdaptor
from espnet_ext.models.encoder import AbsSpeechEncoder, WhisperSpeechEncoder
from espnet_ext.models.llm import HFCausalLM
from espnet_ext.models.speech_llm import ESPnetSpeechLLM
from espnet_ext.optim.schedulers import WarmupCosineLR
from espnet_ext.train.collate import PadCollate
from espnet_ext.train.preprocess import SpeechLLMPreprocessor
from espnet_ext.train.sharding import ShardedSpeechLLMTrainer
from espnet_ext.utils.conf import build_from_conf, check_conf_keys
from espnet_ext.utils.espnet_compat import AbsTask, abs_task_module

logger = logging.getLogger(__name__)

# ESPnet has no plugin registry: its scheduler and data-type tables are module-level dicts
abs_task_module.scheduler_classes.setdefault("warmupcosinelr", WarmupCosineLR)
espnet_dataset.DATA_TYPES.setdefault("indexed_text", dict(
    func=IndexedTextReader, kwargs=[],
    help="ESPnet's text, read one line at a time (an index of byte offsets, not the whole file)"))

encoder_choices = ClassChoices(
    "encoder", classes=dict(whisper=WhisperSpeechEncoder), type_check=AbsSpeechEncoder,
    default="whisper", optional=True,
)
adaptor_choices = ClassChoices(
    "adaptor", classes=dict(concat=FrameConcatAdaptor), type_check=torch.nn.Module,
    default="concat",
)
llm_choices = ClassChoices(
    "llm", classes=dict(hf=HFCausalLM), type_check=torch.nn.Module, default="hf",
)


class SpeechLLMTask(AbsTask):
    """Encoder → adaptor → LLM speech-to-text instruction tuning (LLaMA-Omni stage 1)."""

    num_optimizers: int = 1
    class_choices_list = [encoder_choices, adaptor_choices, llm_choices]
    # ESPnet's Trainer + the optional importance probe; FSDP2 epoch loop and DCP checkpoints
    # when --sharding_conf sharded the model (else ESPnet's run unchanged)
    trainer = ShardedSpeechLLMTrainer

    @classmethod
    def add_task_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(description="Task related")
        group.add_argument(
            "--model_conf", action=NestedDictAction, default=dict(),
            help="ESPnetSpeechLLM options, e.g. {modality: speech} (speech | text)",
        )
        group.add_argument(
            "--init", type=lambda x: None if x in ("none", "None", None) else x, default=None,
            help="kept for ESPnet compatibility; parameters come from the pretrained parts",
        )
        group.add_argument(
            "--adaptor_lr", type=float, default=None,
            help="learning rate of the (randomly initialised) adaptor; default: optim_conf.lr",
        )
        group = parser.add_argument_group(description="Mitigations of textual degradation (§3.1)")
        group.add_argument(
            "--layer_lr_conf", action=NestedDictAction, default=None,
            help="importance-driven layer-wise lr (eq. 3), e.g. "
            "{importance_report: exp/importance/base, lambda_: 0.4}; null = off",
        )
        group.add_argument(
            "--lora_conf", action=NestedDictAction, default=None,
            help="peft LoRA on the LLM, e.g. {r: 8, alpha: 16, dropout: 0.05, target_modules: "
            "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}; null = off",
        )
        group.add_argument(
            "--anchor_conf", action=NestedDictAction, default=None,
            help="importance-weighted anchoring to the base weights (ours), e.g. "
            "{importance_report: exp/importance/base, mu: 1.0}; null = off",
        )
        group = parser.add_argument_group(description="Sharded training (an addition to the paper)")
        group.add_argument(
            "--sharding_conf", action=NestedDictAction, default=None,
            help="FSDP2 sharding over the ranks (needs torchrun / --ngpu > 1), e.g. {engine: fsdp2, "
            "param_dtype: bfloat16, reduce_dtype: float32, reshard_after_forward: true, "
            "activation_checkpointing: false, shard_encoder: false}; null = ESPnet's DDP",
        )
        group = parser.add_argument_group(description="Preprocess related")
        group.add_argument(
            "--use_preprocessor", type=str2bool, default=True,
            help="tokenise text/answer with the LLM tokenizer (required for training)",
        )
        for class_choices in cls.class_choices_list:
            class_choices.add_arguments(group)

    @classmethod
    def default_args(cls) -> Dict[str, object]:
        """Every task option with its default (no command line is read, unlike
        ESPnet's ``get_default_config``, which parses ``sys.argv``)."""
        args, _ = cls.get_parser().parse_known_args([])
        return vars(args)

    @classmethod
    @typechecked
    def build_collate_fn(cls, args: argparse.Namespace, train: bool) -> Callable[
        [Collection[Tuple[str, Dict[str, np.ndarray]]]],
        Tuple[List[str], Dict[str, torch.Tensor]],
    ]:
        # token ids are padded with -1; the model slices by the *_lengths tensors
        return PadCollate(float_pad_value=0.0, int_pad_value=-1)

    @classmethod
    @typechecked
    def build_preprocess_fn(
        cls, args: argparse.Namespace, train: bool
    ) -> Optional[Callable[[str, Dict[str, np.array]], Dict[str, np.ndarray]]]:
        if not args.use_preprocessor:
            return None
        from transformers import AutoTokenizer

        from espnet_ext.models.llm import task_prompts_from_conf

        conf = dict(args.llm_conf)
        tokenizer = AutoTokenizer.from_pretrained(conf["model_name_or_path"])
        prompts = task_prompts_from_conf(tokenizer, conf)
        return SpeechLLMPreprocessor(tokenizer, prompts["qa"].closing, list(prompts))

    @classmethod
    def required_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        return () if inference else ("answer",)

    @classmethod
    def optional_data_names(cls, train: bool = True, inference: bool = False) -> Tuple[str, ...]:
        return ("text", "enc_feats", "speech", "task")

    @classmethod
    @typechecked
    def build_model(cls, args: argparse.Namespace) -> ESPnetSpeechLLM:
        # 1. LLM: any HF causal LM with its tokenizer and the LLaMA-Omni prompt
        llm_class = llm_choices.get_class(args.llm)
        llm = build_from_conf(llm_class, args.llm_conf, "llm_conf")
        hidden = llm.hidden_size()
        lora_conf = getattr(args, "lora_conf", None)
        if lora_conf is not None:  # peft LoRA: base weights frozen, LoRA factors trainable
            from espnet_ext.models.lora import LoraAdapterConfig, apply_lora

            apply_lora(llm, build_from_conf(LoraAdapterConfig, lora_conf, "lora_conf"))

        # 2. Frozen speech encoder (optional when cached encoder outputs are used)
        encoder = None
        encoder_class = encoder_choices.get_class(getattr(args, "encoder", None))
        encoder_size = None
        if encoder_class is not None:
            encoder = build_from_conf(encoder_class, args.encoder_conf, "encoder_conf")
            encoder_size = encoder.output_size()

        # 3. Adaptor: (Batch, Frames, D_enc) → (Batch, Frames // k, D_llm)
        adaptor_conf = dict(args.adaptor_conf or {})
        adaptor_class = adaptor_choices.get_class(args.adaptor)
        check_conf_keys(adaptor_class, adaptor_conf, "adaptor_conf", check_missing=False)
        if encoder_size is not None:
            if adaptor_conf.setdefault("input_size", encoder_size) != encoder_size:
                raise ValueError(
                    f"adaptor_conf.input_size={adaptor_conf['input_size']} does not match the "
                    f"encoder output size {encoder_size} ({args.encoder_conf})"
                )
        elif "input_size" not in adaptor_conf:
            raise ValueError("adaptor_conf.input_size is required when --encoder none")
        if adaptor_conf.setdefault("output_size", hidden) != hidden:
            raise ValueError(
                f"adaptor_conf.output_size={adaptor_conf['output_size']} does not match the "
                f"hidden size {hidden} of llm_conf.model_name_or_path="
                f"{args.llm_conf.get('model_name_or_path')}"
            )
        adaptor = adaptor_class(**adaptor_conf)

        # 4. The ESPnet model
        model = build_from_conf(
            ESPnetSpeechLLM, args.model_conf, "model_conf", encoder=encoder, adaptor=adaptor, llm=llm
        )

        # 5. Training-only loss term: anchor the scored weights to their pretrained values
        anchor_conf = getattr(args, "anchor_conf", None)
        if anchor_conf is not None:
            from espnet_ext.optim.anchor import AnchorConfig, ImportanceAnchor

            if lora_conf is not None:
                raise ValueError("anchor_conf and lora_conf exclude each other: LoRA freezes the "
                                 "base weights the anchor would hold")
            anchor = build_from_conf(AnchorConfig, anchor_conf, "anchor_conf")
            if getattr(args, "sharding_conf", None) is None:
                model.anchor = ImportanceAnchor.from_report(model, anchor)
            else:  # built on the shards by build_optimizers (no rank holds whole copies)
                logger.info("anchor_conf under sharding_conf: the anchor is built after sharding")
        return model

    @classmethod
    def build_optimizers(cls, args: argparse.Namespace, model: torch.nn.Module) -> List[torch.optim.Optimizer]:
        """One optimizer over named groups (adaptor / LLM, or per layer with
        ``--layer_lr_conf``) with per-group learning rates.

        Schedulers that multiply each group's own initial lr keep the per-group rates
        through warm-up and decay (``warmupcosinelr``, ``warmuplr``, ...); one that writes a
        single absolute lr (``cosineannealingwarmuprestarts``, ``onecyclelr``, ...) would
        flatten them, so it is refused when the groups' rates differ.  Trainable weights
        stored in bf16/fp16 are refused too (fp32 master weights, ``utils/precision.py``).
        """
        from espnet_ext.optim.groups import adaptor_llm_groups, log_groups
        from espnet_ext.optim.schedulers import PER_GROUP_SCHEDULERS, keeps_group_ratios
        from espnet_ext.utils.precision import check_trainable_fp32

        check_trainable_fp32(model)

        optim_class = abs_task_module.optim_classes.get(args.optim)
        if optim_class is None:
            raise ValueError(f"--optim must be one of {list(abs_task_module.optim_classes)}: {args.optim}")
        conf = dict(args.optim_conf)
        lr = conf.pop("lr", 1e-3)
        layer_lr_conf = getattr(args, "layer_lr_conf", None)
        if layer_lr_conf is not None:  # eq. (3): one group per LLM layer
            from espnet_ext.optim.layer_lr import LayerLRConfig, layer_lr_groups

            layer_lr = build_from_conf(LayerLRConfig, layer_lr_conf, "layer_lr_conf")

            def make_groups(m):
                return layer_lr_groups(m, lr, getattr(args, "adaptor_lr", None), layer_lr)
        else:
            def make_groups(m):
                return adaptor_llm_groups(m, lr, getattr(args, "adaptor_lr", None))
        sharding_conf = getattr(args, "sharding_conf", None)
        if sharding_conf is not None:  # FSDP2: shard first, then group the sharded params by name
            from espnet_ext.train import sharding

            expected = sharding.group_signature(model, make_groups(model))
            anchor_conf = getattr(args, "anchor_conf", None)
            if anchor_conf is not None:
                from espnet_ext.optim.anchor import AnchorConfig

                anchor_conf = build_from_conf(AnchorConfig, anchor_conf, "anchor_conf")
            sharding.shard_model(model, build_from_conf(sharding.ShardingConfig, sharding_conf, "sharding_conf"),
                                 anchor=anchor_conf)
        groups = make_groups(model)
        log_groups(groups)  # names the reporter's optim0_lr<j> keys
        scheduler = getattr(args, "scheduler", None)
        rates = sorted({g.lr for g in groups})
        if len(rates) > 1 and not keeps_group_ratios(scheduler, getattr(args, "scheduler_conf", None)):
            raise ValueError(
                f"scheduler {scheduler!r} sets one lr for every parameter group and would erase the "
                f"per-group rates ({', '.join(f'{g.name} {g.lr:g}' for g in groups[:4])}, ...: adaptor_lr, "
                f"layer_lr_conf); use a scheduler that scales each group's own lr: "
                f"{', '.join(PER_GROUP_SCHEDULERS)}")
        optimizer = optim_class([g.as_dict() for g in groups], lr=lr, **conf)
        if sharding_conf is not None:  # every rank: the unsharded groups, lrs and members
            sharding.check_sharded_groups(expected, optimizer, model)
        return [optimizer]

    @classmethod
    def build_model_from_file(
        cls,
        config_file: Optional[Union[Path, str]] = None,
        model_file: Optional[Union[Path, str]] = None,
        device: str = "cpu",
    ) -> Tuple[ESPnetSpeechLLM, argparse.Namespace]:
        """Build from an exp dir's ``config.yaml`` and load a checkpoint strictly.

        ESPnet's default loads with ``strict=False``; a silently missing adaptor or LLM
        weight would make every later number wrong, so missing/unexpected keys error.
        """
        import yaml

        if config_file is None:
            if model_file is None:
                raise ValueError("give config_file, model_file or both")
            config_file = Path(model_file).parent / "config.yaml"
        with open(config_file, encoding="utf-8") as f:
            args = argparse.Namespace(**yaml.safe_load(f))
        # the anchor only adds a training loss term; it needs neither its report nor a copy
        model = cls.build_model(argparse.Namespace(**{**vars(args), "anchor_conf": None}))
        if model_file is not None:
            state = torch.load(model_file, map_location="cpu", weights_only=False)
            state = state.get("model", state) if "model" in state and isinstance(state["model"], dict) else state
            result = model.load_state_dict(state, strict=False)
            bad = [k for k in result.missing_keys] + [k for k in result.unexpected_keys]
            if bad:
                raise RuntimeError(
                    f"{model_file} does not match the model built from {config_file}: "
                    f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
                )
        model.to(device)
        return model, args
