#!/usr/bin/env python3
"""Training step of the project (ESPnet's trainer) against a bare PyTorch loop.

    tools/venv/bin/python benchmarks/bench_train_step.py [--steps 6] [--repeats 3] [--batch_size 8]
        [--variants baseline,unshared,...] [--profile]

Needs a recipe run up to stage 2 (``egs2/speechimp/exp/pretrained/model.yaml`` and
``egs2/speechimp/dump/train``).  The model is built as stage 4 builds it for training
(``model.yaml`` + ``conf/train_base.yaml``: S2T, ``mixed_precision: auto``, fused AdamW
with the adaptor / LLM groups, ``warmupcosinelr``, grad clip 1.0) and both loops run on
that one model, on the same ``--steps`` batches of cached encoder features (spread over
the length-sorted training set, as ESPnet's ``sorted`` batches are) and under the same
autocast (the dtype the model picks for itself):

* project: ``SpeechLLMTrainer.train_one_epoch`` (ESPnet's ``Trainer``) over the batches:
  ``ESPnetSpeechLLM.forward`` → ``(loss, stats, weight)``, backward, ``clip_grad_norm_``,
  optimizer and scheduler step, ``zero_grad``; the phase times are the ones ESPnet's
  reporter measures (``forward_time``, ``backward_time``, ``optim_step_time``);
* bare: the same ``LlamaForCausalLM`` and adaptor in a minimal loop: one embedding lookup
  of ``[prefix][speech slot][suffix][answer]`` per batch, the adaptor outputs written
  into the speech slots, the decoder over the whole right-padded sequence, the LM head on
  the rows that predict answer tokens, fp32 cross-entropy; then the same clip, its own
  fused AdamW (same groups and learning rates), ``LambdaLR`` step and ``zero_grad``.

The loops alternate (each project variant, then bare, ``--repeats`` times); each cell is
the best over repeats of the mean per step, ``median`` the median step time.  ``other``
is clipping, ``zero_grad`` and loop overhead; ``faults`` the minor page faults per step
(fresh memory of large temporaries).  Before timing, losses and gradients of every loop
on one batch are compared with the unchanged model's in fp32.

``--variants`` lists project variants, each a ``+``-joined set of parts that prototype
changes to ``espnet_ext/models/speech_llm.py`` by monkeypatching (switched per run):

* ``baseline``: the model as it is;
* ``unshared``: ``share_prompt_prefix: false`` (the prompt prefix recomputed per sample,
  the bare loop's arithmetic);
* ``math_sdpa``: PyTorch's math attention instead of its CPU flash kernel;
* ``eager_attn``: the LLM's ``attn_implementation`` set to ``eager``.

``--profile`` adds ``torch.profiler`` tables of one forward and one backward pass of each
loop (top ops by self time).  Run it alone on the machine: timings of concurrent jobs mean
nothing.

Measured on the 2-core AVX512-BF16 dev CPU (torch 2.13, SmolLM2-135M, bf16 autocast,
batch 8, ``--steps 6 --repeats 5``), seconds per step (forward / backward / whole step):

    project baseline               0.295 / 1.042 / 1.468   backward 3.5x forward, 0.99x bare
    project unshared               0.383 / 1.222 / 1.729   1.17x bare
    project unshared+one_embed     0.388 / 0.929 / 1.477   1.00x bare (the same arithmetic)
    project one_embed              0.285 / 0.673 / 1.068   exact: same loss, grads within 3e-8
    project one_embed+eager_attn   0.263 / 0.518 / 0.914   backward 2.0x forward
    bare                           0.405 / 0.969 / 1.479   backward 2.4x forward
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

REPO = Path(__file__).resolve().parent.parent
PHASES = ("forward", "backward", "optimizer", "other", "step")


# ---- model, optimizers, batches ---------------------------------------------------------
def build(recipe: Path, batch_size: int):
    """The training model, its project optimizer/scheduler and the trainer options."""
    from espnet_ext.tasks.compose import load_train_config
    from espnet_ext.tasks.speech_llm import SpeechLLMTask
    from espnet_ext.utils.conf import load_yaml, merge_configs

    defaults = SpeechLLMTask.default_args()
    train = load_train_config(REPO / "conf" / "train_base.yaml", set(defaults))
    conf = merge_configs(merge_configs(defaults, load_yaml(recipe / "exp" / "pretrained" / "model.yaml")), train)
    conf["batch_size"] = batch_size
    args = argparse.Namespace(**conf)
    model = SpeechLLMTask.build_model(args)
    model.to(dtype=getattr(torch, args.train_dtype))
    model.train()
    optimizer = SpeechLLMTask.build_optimizers(args, model)[0]
    from espnet_ext.optim.schedulers import WarmupCosineLR

    scheduler = WarmupCosineLR(optimizer, **args.scheduler_conf)
    options = SpeechLLMTask.trainer.build_options(args)
    return args, model, optimizer, scheduler, options


def bare_optimizer(args, model):
    """A plain fused AdamW over the same groups and a ``LambdaLR`` with the same factor."""
    from espnet_ext.optim.schedulers import warmup_cosine_factor

    adaptor = [p for p in model.adaptor.parameters() if p.requires_grad]
    ids = {id(p) for p in adaptor}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    conf = dict(args.optim_conf)
    lr = conf.pop("lr")
    opt = torch.optim.AdamW([{"params": adaptor, "lr": args.adaptor_lr}, {"params": rest, "lr": lr}], lr=lr, **conf)
    sc = args.scheduler_conf
    total, warm = sc["total_steps"], sc.get("warmup_ratio", 0.03)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine_factor(s, total, warm, 0.0))
    return opt, sched


def pick_batches(dump: Path, model, batch_size: int, steps: int) -> List[Tuple[List[str], Dict]]:
    """``steps`` batches spread evenly over the length-sorted training set."""
    from espnet_ext.data.kaldi_dir import read_table
    from espnet_ext.train.batches import dump_batches, preprocessor_for

    shape = read_table(dump / "llm_len.speech")
    ids = sorted(shape, key=lambda u: (int(shape[u]), u))
    chunks = [ids[i : i + batch_size] for i in range(0, len(ids) - batch_size + 1, batch_size)]
    if len(chunks) < steps:
        raise SystemExit(f"{dump} has only {len(chunks)} full batches of {batch_size}")
    chosen = [chunks[round(j * (len(chunks) - 1) / max(steps - 1, 1))] for j in range(steps)]
    wanted = [u for c in chosen for u in c]
    batches = list(dump_batches(dump, preprocessor_for(model), "speech", batch_size, utt_ids=wanted))
    assert [b[0] for b in batches] == chosen, "dump_batches regrouped the chosen batches"
    return batches


# ---- the bare loop ------------------------------------------------------------------------
class Bare:
    """A minimal loss on the same modules: one embedding lookup, full sequence."""

    def __init__(self, model) -> None:
        self.adaptor = model.adaptor
        self.lm = model.llm.model  # LlamaForCausalLM
        self.prefix = torch.tensor(model.llm.prompt.prefix)
        self.suffix = torch.tensor(model.llm.prompt.suffix)  # task 0 (QA), as the project's default

    def loss(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        feats, flen = batch["enc_feats"], batch["enc_feats_lengths"]
        ans, alen = batch["answer"], batch["answer_lengths"]
        P, Q = len(self.prefix), len(self.suffix)
        speech, slen = self.adaptor(feats, flen)  # (B, S, H)
        S = speech.shape[1]
        q0 = P + slen[:, None]  # where the suffix starts
        a0 = q0 + Q  # where the answer starts
        end = a0 + alen[:, None]
        L = int(end.max())
        pos = torch.arange(L)[None]
        rel_a, rel_q = pos - a0, pos - q0
        in_answer = (rel_a >= 0) & (rel_a < alen[:, None])
        in_suffix = (rel_q >= 0) & (rel_q < Q)
        in_speech = (pos >= P) & (pos < q0)
        ids = torch.where(in_answer, ans.gather(1, rel_a.clamp(0, ans.shape[1] - 1)), 0)
        ids = torch.where(in_suffix, self.suffix[rel_q.clamp(0, Q - 1)], ids)
        ids[:, :P] = self.prefix
        emb = self.lm.get_input_embeddings()(ids)  # (B, L, H), one lookup
        slots = torch.nn.functional.pad(speech.to(emb.dtype), (0, 0, P, L - P - S))
        x = torch.where(in_speech[..., None], slots, emb)
        hidden = self.lm.model(inputs_embeds=x, attention_mask=(pos < end).long()).last_hidden_state
        logits = self.lm.lm_head(hidden[:, :-1][in_answer[:, 1:]])  # rows predicting answer tokens
        return torch.nn.functional.cross_entropy(logits.float(), ids[in_answer])


# ---- variants of the project's model -----------------------------------------------------
VARIANT_PARTS = ("baseline", "unshared", "math_sdpa", "eager_attn")


def parse_variant(spec: str) -> Tuple[str, ...]:
    parts = tuple(spec.split("+"))
    bad = [x for x in parts if x not in VARIANT_PARTS]
    if bad:
        raise SystemExit(f"--variants: unknown part(s) {bad}; choose from {VARIANT_PARTS}, joined with '+'")
    return parts


def apply_variant(model, spec: str) -> None:
    """Put the model in the state of ``spec`` (``baseline`` = as built), whatever it was in."""
    parts = parse_variant(spec)
    model.__dict__.pop("forward", None)
    model.share_prompt_prefix = "unshared" not in parts
    model.llm.model.set_attn_implementation("eager" if "eager_attn" in parts else "sdpa")
    forward = type(model).forward
    if "math_sdpa" in parts:  # PyTorch's math attention instead of its CPU flash kernel
        inner = forward

        def forward(self, *a, **k):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                return inner(self, *a, **k)

    if forward is not type(model).forward:
        model.forward = types.MethodType(forward, model)


# ---- timing -----------------------------------------------------------------------------
def project_run(model, optimizer, scheduler, options, batches, epoch: int) -> Dict[str, float]:
    """ESPnet's ``train_one_epoch`` over the batches; mean seconds per step by phase."""
    from espnet2.train.distributed_utils import DistributedOption
    from espnet2.train.reporter import Reporter

    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    reporter = Reporter()
    reporter.set_epoch(epoch)
    iterator = [(ids, dict(b)) for ids, b in batches]  # the trainer adds "utt_id" to each batch
    with reporter.observe("train") as sub:
        faults = minor_faults()
        start = time.perf_counter()
        invalid = SpeechLLMTask.trainer.train_one_epoch(
            model=model, iterator=iterator, optimizers=[optimizer], schedulers=[scheduler], scaler=None,
            reporter=sub, summary_writer=None, options=options, distributed_option=DistributedOption(),
        )
        total = time.perf_counter() - start
        faults = minor_faults() - faults
        mean = {k: statistics.fmean(v.value for v in sub.stats[k]) for k in
                ("iter_time", "forward_time", "backward_time", "optim_step_time")}
    if invalid:
        raise RuntimeError("the trainer skipped every step (non-finite gradients)")
    n = len(batches)
    out = {"forward": mean["forward_time"], "backward": mean["backward_time"],
           "optimizer": mean["optim_step_time"], "step": total / n, "faults": faults / n}
    out["other"] = out["step"] - out["forward"] - out["backward"] - out["optimizer"]
    return out


def bare_run(bare: Bare, params, optimizer, scheduler, autocast: Callable, batches) -> Dict[str, float]:
    """The minimal loop over the batches; mean seconds per step by phase."""
    acc = dict.fromkeys(PHASES, 0.0)
    faults = minor_faults()
    for _, batch in batches:
        t0 = time.perf_counter()
        with autocast():
            loss = bare.loss(batch)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, max_norm=1.0)
        t3 = time.perf_counter()
        optimizer.step()
        scheduler.step()
        t4 = time.perf_counter()
        optimizer.zero_grad()
        t5 = time.perf_counter()
        for k, v in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", t4 - t3),
                     ("other", t3 - t2 + t5 - t4), ("step", t5 - t0)):
            acc[k] += v
    acc["faults"] = minor_faults() - faults
    return {k: v / len(batches) for k, v in acc.items()}


def minor_faults() -> int:
    """Minor page faults of this process so far (fresh pages of large allocations)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# ---- exactness and profiles --------------------------------------------------------------
def loss_and_grads(fn, params) -> Tuple[float, List[torch.Tensor]]:
    for p in params:
        p.grad = None
    loss = fn()
    loss.backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    for p in params:
        p.grad = None
    return loss.item(), grads


def grad_diffs(a: List[torch.Tensor], b: List[torch.Tensor]) -> str:
    """Relative difference of the whole gradient and the largest one of any tensor."""
    diff = torch.stack([(x - y).norm() for x, y in zip(a, b)])
    ref = torch.stack([y.norm() for y in b])
    whole = (diff.norm() / ref.norm()).item()
    worst = (diff / ref.clamp(min=1e-12)).max().item()
    return f"{whole:.1e}, {worst:.1e}"


def bare_autocast(mode: str) -> Callable:
    """``torch.autocast`` on the CPU with the dtype ``mode`` gives there (or none)."""
    import contextlib

    from espnet_ext.utils.precision import autocast_dtype

    dtype = autocast_dtype(mode, torch.device("cpu"))
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast("cpu", dtype=dtype)


def mode_name(mode: str) -> str:
    from espnet_ext.utils.precision import autocast_dtype

    dtype = autocast_dtype(mode, torch.device("cpu"))
    return f"{mode}: " + ("fp32" if dtype is None else f"{str(dtype)[6:]} autocast")


def profile_step(label: str, fn: Callable[[], torch.Tensor], params, rows: int) -> None:
    """Top ops by self time of one forward and one backward of ``fn``'s loss."""
    from torch.profiler import ProfilerActivity, profile

    for p in params:
        p.grad = None
    with profile(activities=[ProfilerActivity.CPU]) as fwd:
        loss = fn()
    with profile(activities=[ProfilerActivity.CPU]) as bwd:
        loss.backward()
    for p in params:
        p.grad = None
    for phase, prof in (("forward", fwd), ("backward", bwd)):
        events = list(prof.key_averages())
        total = sum(e.self_cpu_time_total for e in events) / 1e6
        print(f"\nprofile: {phase} of the {label} step, {total:.3f} s self time in all ops; top {rows} by self time")
        print(f"  {'op':62s} {'calls':>6s} {'self s':>8s} {'share':>6s} {'incl. s':>8s}")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]:
            print(f"  {e.key[:62]:62s} {e.count:6d} {e.self_cpu_time_total / 1e6:8.3f} "
                  f"{e.self_cpu_time_total / 1e6 / total:6.1%} {e.cpu_time_total / 1e6:8.3f}")


def diagnostics(model) -> None:
    llm = model.llm.model
    frozen = [n for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    emb, head = llm.get_input_embeddings().weight, llm.get_output_embeddings().weight
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"mixed_precision {mode_name(model.mixed_precision)}; "
          f"share_prompt_prefix {model.share_prompt_prefix}; gradient checkpointing "
          f"{getattr(llm, 'is_activation_checkpointing', False)}; encoder params requiring grad {len(frozen)}; "
          f"tied embeddings {emb is head}; attention {llm.config._attn_implementation}")


# ---- main -------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=REPO / "egs2" / "speechimp",
                    help="recipe dir holding exp/pretrained and dump/train (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=6, help="batches (= optimizer steps) per timed run")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each loop")
    ap.add_argument("--batch_size", type=int, default=8, help="utterances per batch (conf/train_base.yaml: 8)")
    ap.add_argument("--variants", default="baseline",
                    help="comma-separated project variants, each timed against the same bare loop; a variant "
                    f"joins parts with '+' (parts: {', '.join(VARIANT_PARTS)}); default: %(default)s")
    ap.add_argument("--profile", action="store_true", help="profile one forward and backward pass of each loop")
    ap.add_argument("--profile_rows", type=int, default=15)
    args = ap.parse_args()

    recipe = args.recipe.resolve()
    if not (recipe / "exp" / "pretrained" / "model.yaml").is_file() or not (recipe / "dump" / "train").is_dir():
        sys.exit(f"{recipe}: no exp/pretrained/model.yaml or dump/train; run the recipe's stages 1-2 first "
                 f"(cd {recipe} && ./run.sh --stop_stage 2)")
    # ESPnet's trainer and reporter warn on every run (CUDA autocast API, no previous epoch)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="The stats of the previous epoch")
    os.chdir(recipe)  # model.yaml names exp/pretrained/* relative to the recipe
    sys.path.insert(0, str(REPO))
    torch.manual_seed(0)

    variants = list(dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()))
    for v in variants:
        parse_variant(v)
    conf, model, p_opt, p_sched, options = build(recipe, args.batch_size)
    b_opt, b_sched = bare_optimizer(conf, model)
    params = [p for p in model.parameters() if p.requires_grad]
    batches = pick_batches(recipe / "dump" / "train", model, args.batch_size, args.steps)
    bare = Bare(model)
    diagnostics(model)
    lens = [int(b["enc_feats_lengths"].max()) // model.adaptor.downsample_rate + len(bare.prefix) + len(bare.suffix)
            + int(b["answer_lengths"].max()) for _, b in batches]
    n_ans = [int(b["answer_lengths"].sum()) for _, b in batches]
    print(f"{args.steps} batches of {args.batch_size}: padded length {min(lens)}-{max(lens)} "
          f"(prefix {len(bare.prefix)}), answer tokens {min(n_ans)}-{max(n_ans)} per batch")

    # exactness on one batch, before any optimizer step: everything against the unchanged
    # project model in fp32; the fp32 rows must agree to float rounding, the timed rows
    # show the autocast's own rounding (the baseline's row is the yardstick)
    batch = batches[len(batches) // 2][1]
    timed = model.mixed_precision

    def project_loss(v: str) -> torch.Tensor:
        apply_variant(model, v)
        try:
            return model(**batch)[0]
        finally:
            apply_variant(model, "baseline")

    model.mixed_precision = "none"
    ref_loss, ref = loss_and_grads(lambda: project_loss("baseline"), params)
    print(f"\nexactness on one batch; reference: project baseline, mixed_precision {mode_name('none')}, "
          f"loss {ref_loss:.6f}")
    print(f"  {'precision':40s} {'loop':32s} {'loss':>9s}  rel. grad diff: whole gradient, worst tensor")
    for mode in dict.fromkeys(("none", timed)):
        model.mixed_precision = mode
        ac = bare_autocast(mode)
        rows = [(f"project {v}", lambda v=v: project_loss(v)) for v in dict.fromkeys(["baseline"] + variants)]
        rows.append(("bare", lambda ac=ac: _with(ac, lambda: bare.loss(batch))))
        for name, fn in rows:
            if mode == "none" and name == "project baseline":
                continue
            loss, grads = loss_and_grads(fn, params)
            print(f"  {mode_name(mode):40s} {name:32s} {loss:9.6f}  {grad_diffs(grads, ref)}")
            del grads
    del ref
    model.mixed_precision = timed
    autocast = bare_autocast(timed)

    if args.profile:
        for v in variants:
            apply_variant(model, v)
            profile_step(f"project {v}", lambda: model(**batch)[0], params, args.profile_rows)
        apply_variant(model, "baseline")
        profile_step("bare", lambda: _with(autocast, lambda: bare.loss(batch)), params, args.profile_rows)

    # warm-up (optimizer state, allocator), then alternate: project variants, bare, ...
    names = [f"project {v}" for v in variants] + ["bare"]

    def run(name: str, batches_, epoch: int) -> Dict[str, float]:
        if name == "bare":
            apply_variant(model, "baseline")
            return bare_run(bare, params, b_opt, b_sched, autocast, batches_)
        apply_variant(model, name[len("project "):])
        out = project_run(model, p_opt, p_sched, options, batches_, epoch)
        apply_variant(model, "baseline")
        return out

    for name in names:
        run(name, batches[:1], 0)
    runs: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names:
            runs[name].append(run(name, batches, r + 1))
    best = {k: {ph: min(run_[ph] for run_ in v) for ph in PHASES + ("faults",)} for k, v in runs.items()}
    med = {k: statistics.median(run_["step"] for run_ in v) for k, v in runs.items()}

    width = max(len(n) for n in names) + 2
    print(f"\nseconds per step, best of {args.repeats} interleaved runs of {args.steps} steps (batch "
          f"{args.batch_size}); median: of the step time over the runs; faults: minor page faults per step")
    print(f"  {'loop':{width}s}" + "".join(f"{ph:>10s}" for ph in PHASES)
          + f"{'median':>9s}{'bwd/fwd':>9s}{'step/bare':>11s}{'faults':>9s}")
    for k in names:
        b = best[k]
        print(f"  {k:{width}s}" + "".join(f"{b[ph]:10.3f}" for ph in PHASES) + f"{med[k]:9.3f}"
              f"{b['backward'] / b['forward']:9.2f}{b['step'] / best['bare']['step']:10.2f}x{b['faults'] / 1e3:8.0f}k")
    for k in names[:-1]:
        ratio = best[k]["step"] / best["bare"]["step"]
        verdict = "meets" if ratio <= 1.05 else "misses"
        print(f"{k} / bare = {ratio:.3f} (medians: {med[k] / med['bare']:.3f}); {verdict} the goal of <= 1.05")
        if not math.isfinite(ratio):
            raise RuntimeError("non-finite timing")


def _with(ctx: Callable, fn: Callable):
    with ctx():
        return fn()


if __name__ == "__main__":
    main()
