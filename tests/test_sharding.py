"""FSDP2 sharded training (``espnet_ext.train.sharding``) equals one-process training.

Two gloo processes (this file run as a script, ``RANK``/``WORLD_SIZE`` set) train a tiny
random ``ESPnetSpeechLLM`` with ``ShardedSpeechLLMTrainer.run`` (ESPnet's epoch loop and
``train_one_epoch``; DCP checkpoints); the reference is ESPnet's own trainer in this
process on the same global batches (each rank gets half of every batch).  fp32
throughout (``param_dtype: float32``), so the two differ by float rounding only:

* Full-FT (with a frozen, unsharded Whisper encoder), Layer-LR (eq. 3 groups checked on
  the shards of every rank), ImpAnchor (anchors and stiffness sharded with their weights;
  the penalty's value too) and LoRA (peft): per-step losses and final weights;
* a run stopped after epoch 1 and resumed from ``checkpoint.dcp`` ends equal to the
  unbroken run, and so does a run killed with SIGKILL in the middle of epoch 2 (both
  ranks, at its second step) and resumed with ``--resume true``; one process resumes the
  2-rank checkpoint too (DCP reshards it into an unsharded model and optimizer);
* ``<N>epoch.pth`` has the unsharded key layout and gives the same loss after loading
  into an unsharded model; ``consolidate`` writes the ESPnet ``model.pth``, the HF LLM
  folder (``AutoModelForCausalLM`` gives the sharded model's logits) and, for LoRA, the
  peft adapter; decoding and the importance job read the consolidated ``model.pth``
  unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORLD = 2
ITERS, BATCH, EPOCHS = 2, 4, 2  # per epoch: 2 global batches of 4 (2 per rank)
LR, ADAPTOR_LR = 2e-3, 5e-3
LAYER_SUMS = [1.0, 4.0, 2.0, 3.0]  # a stand-in importance report for eq. (3)
MODES = {
    "full": [],
    "layerlr": [],  # groups from LAYER_SUMS (see make_groups)
    "anchor": [],  # --anchor_conf on ANCHOR_REPORT (see task_args), strong enough to matter
    "lora": ["--lora_conf", "r=4", "--lora_conf", "dropout=0.0"],
}
ANCHOR_REPORT, ANCHOR_MU = "anchor_report", 30.0
KILL_AT = ITERS + 2  # the SIGKILL lands in the forward of epoch 2's second step
LOGIT_IDS = [[1, 5, 9, 13, 2, 7, 30, 4]]  # token ids whose logits the consolidated LLM must reproduce
# fp32 rounding: losses agree to ~5e-7, weights to ~2e-6 except single elements with
# ~0 gradients, where AdamW's m / sqrt(v) magnifies rounding up to ~3e-5 (measured; an
# unsharded run with share_prompt_prefix off, as sharding runs, differs from one with it
# on by as much), far below one step (lr = 2e-3)
LOSS_ATOL, WEIGHT_ATOL, ELEMENT_ATOL, OUTLIERS = 1e-5, 1e-4, 2e-6, 1e-3


# --------------------------------------------------------------------------------------
# one training run (used by both the reference and the sharded workers)
# --------------------------------------------------------------------------------------
def task_args(mode: str, llm_dir: str, whisper_dir: str, out: Path, max_epoch: int, resume: bool,
              sharding_conf: dict | None = None, anchor_mu: float = ANCHOR_MU):
    """The task's options; ``sharding_conf`` (sharded runs) is recorded as the task records it
    (the config.yaml of a ``--sharding_conf`` run), and defers the anchor to :func:`train`."""
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    argv = ["--llm_conf", f"model_name_or_path={llm_dir}", "--adaptor_conf", "hidden_size=32",
            "--optim", "adamw", "--optim_conf", f"lr={LR}", "--adaptor_lr", str(ADAPTOR_LR),
            "--output_dir", str(out), "--max_epoch", str(max_epoch), "--resume", str(resume).lower(),
            "--use_tensorboard", "false", "--use_matplotlib", "false", "--keep_nbest_models", "2",
            "--seed", "0", "--log_interval", "1000", "--grad_clip", "1.0"]
    if mode == "full":  # a frozen encoder that sharding leaves whole (the batches carry features)
        argv += ["--encoder_conf", f"model_name_or_path={whisper_dir}"]
    else:
        argv += ["--encoder", "none", "--adaptor_conf", "input_size=32"]
    if mode == "anchor":  # the report sits beside the reference and sharded run dirs
        argv += ["--anchor_conf", json.dumps({"importance_report": str(out.parents[1] / ANCHOR_REPORT),
                                              "mu": anchor_mu})]
    if sharding_conf is not None:
        argv += ["--sharding_conf", json.dumps(sharding_conf)]
    return SpeechLLMTask.get_parser().parse_args(argv + MODES[mode])


def write_anchor_report(root: Path, llm_dir: str) -> None:
    """A heavy-tailed stand-in importance report of the tiny LLM's layers (seeded)."""
    import torch

    from espnet_ext.importance.params import select_parameters
    from espnet_ext.importance.report import write_report
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    args = SpeechLLMTask.get_parser().parse_args(
        ["--llm_conf", f"model_name_or_path={llm_dir}", "--encoder", "none", "--adaptor_conf", "input_size=32"])
    gen = torch.Generator().manual_seed(0)
    shapes = {n: p.shape for n, p in select_parameters(SpeechLLMTask.build_model(args)).items()}
    write_report(root / ANCHOR_REPORT, {n: torch.rand(s, generator=gen) ** 4 + 1e-4 for n, s in shapes.items()})


def make_groups(model, mode: str):
    from espnet_ext.optim.groups import adaptor_llm_groups
    from espnet_ext.optim.layer_lr import LayerLRConfig, layer_lr_groups

    if mode == "layerlr":
        return layer_lr_groups(model, LR, ADAPTOR_LR, LayerLRConfig("unused", lambda_=0.4), LAYER_SUMS)
    return adaptor_llm_groups(model, LR, ADAPTOR_LR)


def samples(model, n: int, seed: int):
    """``n`` preprocessed utterances: QA text + random 32-dim "encoder features"."""
    from espnet_ext.train.batches import preprocessor_for

    qa = [("What is the capital of France?", "The capital of France is Paris."),
          ("How many days are in a week?", "There are seven days in a week."),
          ("What is two plus three?", "Two plus three is 5."),
          ("Which planet is red?", "Mars is the red planet.")]
    pre, rng = preprocessor_for(model), np.random.default_rng(seed)
    out = []
    for i in range(n):
        q, a = qa[i % len(qa)]
        d = pre(f"u{seed}_{i}", {"text": q, "answer": json.dumps([a])})
        d["enc_feats"] = rng.standard_normal((10 + 5 * (i % 3), 32)).astype(np.float32)
        out.append((f"u{seed}_{i}", d))
    return out


def iter_factory(model, n_batches: int, seed: int, rank: int, world: int):
    """Global batches of :data:`BATCH` utterances; this rank's share of each."""
    from espnet2.iterators.abs_iter_factory import AbsIterFactory

    from espnet_ext.train.collate import PadCollate

    data = samples(model, n_batches * BATCH, seed)
    per = BATCH // world
    batches = []
    for b in range(n_batches):
        part = data[b * BATCH + rank * per: b * BATCH + (rank + 1) * per]
        batches.append(PadCollate(0.0, -1)(part))

    class Factory(AbsIterFactory):
        def build_iter(self, epoch: int, shuffle=None):
            return iter([(ids, dict(batch)) for ids, batch in batches])

    return Factory()


def train(mode: str, llm_dir: str, whisper_dir: str, out: Path, max_epoch: int = EPOCHS,
          resume: bool = False, kill_at: int = 0, anchor_mu: float = ANCHOR_MU, **sharding_conf) -> dict:
    """One ESPnet training run; sharded (FSDP2, fp32 unless ``sharding_conf`` says
    otherwise) when ``torch.distributed`` is up.  ``kill_at``: at that training forward,
    write ``<out>/.kill_me.<rank>`` and wait to be killed."""
    import torch
    import torch.distributed as dist
    import yaml
    from espnet2.train.distributed_utils import DistributedOption

    from espnet_ext.optim.anchor import AnchorConfig
    from espnet_ext.optim.schedulers import WarmupCosineLR
    from espnet_ext.tasks.speech_llm import SpeechLLMTask
    from espnet_ext.train import sharding

    distributed = dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    conf = {"param_dtype": "float32", **sharding_conf} if distributed else None
    args = task_args(mode, llm_dir, whisper_dir, out, max_epoch, resume, conf, anchor_mu)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out / "config.yaml").write_text(yaml.safe_dump(vars(args)))
    torch.manual_seed(0)
    model = SpeechLLMTask.build_model(args)
    result = {}
    if distributed:  # what the task's build_optimizers does with --sharding_conf
        expected = sharding.group_signature(model, make_groups(model, mode))
        anchor = AnchorConfig(**args.anchor_conf) if args.anchor_conf else None
        sharding.shard_model(model, sharding.ShardingConfig(**args.sharding_conf), anchor=anchor)
    groups = make_groups(model, mode)
    optimizer = torch.optim.AdamW([g.as_dict() for g in groups], lr=LR)
    if distributed:
        sharding.check_sharded_groups(expected, optimizer, model)
        name, lr, members = expected[-1]  # a grouping that differs in one lr is refused
        try:
            sharding.check_sharded_groups(expected[:-1] + [(name, lr * 2, members)], optimizer, model)
        except RuntimeError as e:
            result["refused"] = "differ from the unsharded grouping" in str(e)
        from torch.distributed.tensor import DTensor

        result["all_dtensor"] = all(isinstance(p, DTensor) for g in optimizer.param_groups for p in g["params"])
        result["encoder_plain"] = model.encoder is None or not any(
            isinstance(p, DTensor) for p in model.encoder.parameters())
    result["groups"] = [[g["name"], g["lr"]] for g in optimizer.param_groups]
    if distributed:  # every rank's groups, as they are on its shards
        result["groups_all_ranks"] = [None] * world
        dist.all_gather_object(result["groups_all_ranks"], result["groups"])
    scheduler = WarmupCosineLR(optimizer, total_steps=EPOCHS * ITERS, warmup_ratio=0.25)
    losses, penalties = [], []

    def record(m, i, o):
        if not m.training:
            return
        losses.append((float(o[1]["loss"]), int(o[2])))
        if "anchor" in o[1]:
            penalties.append(float(o[1]["anchor"]))
        if len(losses) == kill_at:  # mid-epoch: the parent test kills both ranks here
            (out / f".kill_me.{rank}").write_text(str(os.getpid()))
            time.sleep(600)

    model.register_forward_hook(record)
    trainer = sharding.ShardedSpeechLLMTrainer  # the task's trainer: ESPnet's run when unsharded
    trainer.run(
        model=model, optimizers=[optimizer], schedulers=[scheduler],
        train_iter_factory=iter_factory(model, ITERS, 1, rank, world),
        valid_iter_factory=iter_factory(model, 1, 2, rank, world), plot_attention_iter_factory=None,
        trainer_options=trainer.build_options(args),
        distributed_option=DistributedOption(distributed=distributed, dist_backend="gloo"),
    )
    if distributed:  # the global (token-weighted) loss of every step
        everyone = [None] * world
        dist.all_gather_object(everyone, losses)
        losses = [sum(lo * w for lo, w in step) / sum(w for _, w in step) for step in zip(*everyone)]
    else:
        losses = [lo for lo, _ in losses]
    result["losses"] = losses
    result["penalties"] = penalties  # ImpAnchor's value (the whole penalty on every rank)
    result["master_fp32"] = all(p.dtype == torch.float32 for p in model.parameters())
    if distributed and mode == "full":  # the sharded LLM's logits, for the consolidated HF folder
        ids = torch.tensor(LOGIT_IDS)
        with torch.no_grad():
            model.unshard()  # the root's parameters (embeddings, norm, head); each layer gathers its own
            result["logits"] = model.llm.model(input_ids=ids).logits.tolist()
            model.reshard()
    return result


def kill_worker(llm_dir: str, whisper_dir: str, root: str) -> None:
    """A sharded Full-FT run that the parent kills with SIGKILL at its ``KILL_AT``-th step."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    train("full", llm_dir, whisper_dir, Path(root) / "killed", kill_at=KILL_AT)
    raise SystemExit("the run was not killed")


def worker(llm_dir: str, whisper_dir: str, root: str) -> None:
    """Every sharded run of the tests, in one pair of processes (start-up is the cost)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    root = Path(root)
    results = {}
    start = time.perf_counter()
    for mode in MODES:
        results[mode] = train(mode, llm_dir, whisper_dir, root / mode)
        print(f"{mode}: {time.perf_counter() - start:.1f} s", flush=True)
    # stopped after epoch 1: the state the unbroken run kept as checkpoint.dcp.prev; resumed
    # from it (fresh model, optimizer, scheduler) to epoch 2
    if dist.get_rank() == 0:
        shutil.copytree(root / "full" / "checkpoint.dcp.prev", root / "resumed" / "checkpoint.dcp")
        shutil.copy(root / "full" / "1epoch.pth", root / "resumed" / "1epoch.pth")
    dist.barrier()
    results["resumed"] = train("full", llm_dir, whisper_dir, root / "resumed", resume=True)
    # killed with SIGKILL mid-epoch 2 (by the parent, in the other pair of processes): the
    # same command with --resume true
    deadline = time.time() + 600
    while not (root / "killed" / ".killed").exists():
        if time.time() > deadline:
            raise SystemExit("the killed run never got killed")
        time.sleep(0.5)
    results["killed"] = train("full", llm_dir, whisper_dir, root / "killed", resume=True)
    # bf16 compute (fp32 shards and reduction) with activation checkpointing, no resharding
    # after forward and a sharded encoder, one epoch
    results["bf16"] = train("full", llm_dir, whisper_dir, root / "bf16", max_epoch=1, param_dtype="bfloat16",
                            activation_checkpointing=True, reshard_after_forward=False, shard_encoder=True)
    if dist.get_rank() == 0:
        (root / "results.json").write_text(json.dumps(results))
    dist.destroy_process_group()


# --------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(role: str, *args: str, log=subprocess.PIPE) -> list:
    """``WORLD`` processes running this file's ``role`` worker over gloo."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(WORLD)}
    return [subprocess.Popen([sys.executable, __file__, role, *args], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                             stdout=log, stderr=subprocess.STDOUT, text=True)
            for r in range(WORLD)]


def _kill_when_ready(procs: list, run_dir: Path, report: dict) -> None:
    """SIGKILL every rank of ``procs`` once all of them reached the kill point, then tell
    the resuming workers (``<run_dir>/.killed``)."""
    deadline = time.time() + 600
    while not all((run_dir / f".kill_me.{r}").exists() for r in range(WORLD)):
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    report["returncodes"] = [p.wait() for p in procs]
    report["files"] = sorted(q.name for q in run_dir.iterdir())  # what the killed run left
    for r in range(WORLD):
        (run_dir / f".kill_me.{r}").unlink(missing_ok=True)
    (run_dir / ".killed").write_text("")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llm_dir, tiny_whisper_dir):
    """``(reference results, sharded results, reference root, sharded root)``; the kill
    report is ``sharded["kill"]``."""
    import torch

    root = tmp_path_factory.mktemp("sharding")
    write_anchor_report(root, str(tiny_llm_dir))
    dirs = [str(tiny_llm_dir), str(tiny_whisper_dir), str(root / "sharded")]
    (root / "sharded" / "killed").mkdir(parents=True)
    with open(root / "kill.log", "w") as log:
        killed = _spawn("kill", *dirs, log=log)
    kill_report = {}
    killer = threading.Thread(target=_kill_when_ready, args=(killed, root / "sharded" / "killed", kill_report))
    killer.start()
    procs = _spawn("all", *dirs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the one-process references, while the workers run
        reference = {m: train(m, str(tiny_llm_dir), str(tiny_whisper_dir), root / "reference" / m)
                     for m in MODES}
    finally:
        torch.set_num_threads(threads)
        logs = [p.communicate(timeout=600)[0] for p in procs]
        killer.join(timeout=60)
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    kill_report["log"] = (root / "kill.log").read_text()[-4000:]
    sharded = json.loads((root / "sharded" / "results.json").read_text())
    sharded["kill"] = kill_report
    return reference, sharded, root / "reference", root / "sharded"


def weight_diff(a: dict, b: dict):
    """``(max |a - b|, max over tensors of max |a - b| / max |b|, fraction of elements
    with |a - b| > ELEMENT_ATOL)`` over the floating-point tensors of ``b``."""
    abs_, rel, outliers, total = 0.0, 0.0, 0, 0
    for k in b:
        if not b[k].is_floating_point():
            continue
        d = (a[k].float() - b[k].float()).abs()
        abs_, rel = max(abs_, float(d.max())), max(rel, float(d.max()) / max(float(b[k].abs().max()), 1e-12))
        outliers, total = outliers + int((d > ELEMENT_ATOL).sum()), total + d.numel()
    return abs_, rel, outliers / total


def load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("mode", list(MODES))
def test_sharded_training_equals_one_process(runs, mode):
    reference, sharded, ref_root, sh_root = runs
    ref, got = reference[mode], sharded[mode]
    assert len(got["losses"]) == len(ref["losses"]) == EPOCHS * ITERS
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=0, atol=LOSS_ATOL)
    assert got["groups_all_ranks"] == [ref["groups"]] * WORLD  # names and lrs on every rank
    assert got["all_dtensor"] and got["encoder_plain"] and got["refused"]
    want, have = load(ref_root / mode / f"{EPOCHS}epoch.pth"), load(sh_root / mode / f"{EPOCHS}epoch.pth")
    assert list(have) == list(want)  # the unsharded ESPnet key layout, in order
    abs_, rel, outliers = weight_diff(have, want)
    print(f"{mode}: max |Δw| = {abs_:.2e} (relative {rel:.2e}), {outliers:.1e} of the elements "
          f"> {ELEMENT_ATOL:g}; max |Δloss| = {np.abs(np.subtract(got['losses'], ref['losses'])).max():.1e}")
    assert abs_ < WEIGHT_ATOL and outliers < OUTLIERS
    assert got["master_fp32"]
    moved = max(float((want[k] - load(ref_root / mode / "1epoch.pth")[k]).abs().max())
                for k in want if want[k].is_floating_point())
    assert moved > max(5 * abs_, WEIGHT_ATOL)  # not vacuous: epoch 2 alone moved the weights more
    if mode == "layerlr":
        lrs = dict(got["groups"])
        assert lrs["adaptor"] == ADAPTOR_LR and lrs["llm.layers.0"] == LR  # least important layer
        assert lrs["llm.layers.1"] == pytest.approx(0.6 * LR)  # most important: (1 - λ) lr
    for name in ("checkpoint.dcp", "latest.pth", "valid.loss.best.pth"):
        assert (sh_root / mode / name).exists()


def test_anchor_penalty_is_sharded_and_matters(runs, tiny_llm_dir, tiny_whisper_dir):
    """ImpAnchor's penalty (the whole one, on every rank) equals one process's at every step,
    and the anchor moves the weights far more than the sharded/unsharded difference."""
    reference, sharded, ref_root, sh_root = runs
    ref, got = reference["anchor"]["penalties"], sharded["anchor"]["penalties"]
    assert len(got) == len(ref) == EPOCHS * ITERS and ref[0] == 0.0 and min(ref[1:]) > 0
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-9)
    free = ref_root.parent / "free" / "anchor"  # the same run with mu = 0 (the report two levels up)
    train("anchor", str(tiny_llm_dir), str(tiny_whisper_dir), free, anchor_mu=0.0)
    anchored = load(ref_root / "anchor" / f"{EPOCHS}epoch.pth")
    pulled, _, _ = weight_diff(anchored, load(free / f"{EPOCHS}epoch.pth"))
    apart, _, _ = weight_diff(load(sh_root / "anchor" / f"{EPOCHS}epoch.pth"), anchored)
    print(f"anchor: penalty {ref[-1]:.3e} (sharded {got[-1]:.3e}); max |Δw| from mu=0 {pulled:.1e}, "
          f"sharded vs one process {apart:.1e}")
    assert pulled > 20 * max(apart, ELEMENT_ATOL)


def test_resumed_run_equals_unbroken(runs):
    _, sharded, _, sh_root = runs
    np.testing.assert_allclose(sharded["resumed"]["losses"], sharded["full"]["losses"][ITERS:], atol=1e-6)
    a, b = load(sh_root / "resumed" / f"{EPOCHS}epoch.pth"), load(sh_root / "full" / f"{EPOCHS}epoch.pth")
    abs_, rel, _ = weight_diff(a, b)
    print(f"resumed vs unbroken: max |Δw| = {abs_:.2e} (relative {rel:.2e})")
    assert abs_ < 1e-6
    assert (sh_root / "resumed" / "checkpoint.dcp.prev").is_dir()  # the previous state is kept


def test_run_killed_mid_epoch_resumes_to_the_unbroken_result(runs):
    """SIGKILL of both ranks in epoch 2's second step, then the same run with --resume true."""
    _, sharded, _, sh_root = runs
    kill = sharded["kill"]
    assert kill["returncodes"] == [-signal.SIGKILL] * WORLD, kill["log"]
    # killed after epoch 1's checkpoint, before epoch 2's
    assert "checkpoint.dcp" in kill["files"] and "1epoch.pth" in kill["files"], kill["files"]
    assert f"{EPOCHS}epoch.pth" not in kill["files"]
    np.testing.assert_allclose(sharded["killed"]["losses"], sharded["full"]["losses"][ITERS:], atol=1e-6)
    a, b = load(sh_root / "killed" / f"{EPOCHS}epoch.pth"), load(sh_root / "full" / f"{EPOCHS}epoch.pth")
    abs_, rel, _ = weight_diff(a, b)
    print(f"killed + resumed vs unbroken: max |Δw| = {abs_:.2e} (relative {rel:.2e})")
    assert abs_ < 1e-6


def test_one_process_resumes_a_two_rank_checkpoint(runs, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    """World size 2 -> 1: the 2-rank checkpoint after epoch 1, resumed by one unsharded
    process (ESPnet's own loop), ends like the 2-rank run and like the 1-process run."""
    reference, sharded, ref_root, sh_root = runs
    out = tmp_path / "one"
    out.mkdir()
    shutil.copytree(sh_root / "full" / "checkpoint.dcp.prev", out / "checkpoint.dcp")
    shutil.copy(sh_root / "full" / "1epoch.pth", out / "1epoch.pth")
    got = train("full", str(tiny_llm_dir), str(tiny_whisper_dir), out, resume=True)
    np.testing.assert_allclose(got["losses"], sharded["full"]["losses"][ITERS:], rtol=0, atol=LOSS_ATOL)
    assert (out / "checkpoint.pth").is_file()  # ESPnet's own checkpoint from now on
    final = load(out / f"{EPOCHS}epoch.pth")
    for other in (sh_root, ref_root):
        abs_, rel, outliers = weight_diff(final, load(other / "full" / f"{EPOCHS}epoch.pth"))
        print(f"2 ranks -> 1 process vs {other.name}: max |Δw| = {abs_:.2e}, {outliers:.1e} outliers")
        assert abs_ < WEIGHT_ATOL and outliers < OUTLIERS


def test_bf16_compute_keeps_fp32_master_weights(runs):
    """``param_dtype: bfloat16`` + activation checkpointing (+ ZeRO-2-like, sharded encoder):
    fp32 shards, bf16-close losses, the unsharded key layout, the frozen encoder unchanged."""
    reference, sharded, ref_root, sh_root = runs
    assert sharded["bf16"]["master_fp32"]
    diff = np.abs(np.subtract(sharded["bf16"]["losses"], reference["full"]["losses"][:ITERS])).max()
    print(f"bf16 compute: max |Δloss| = {diff:.1e} against fp32")
    assert diff < 5e-2
    want, have = load(ref_root / "full" / "1epoch.pth"), load(sh_root / "bf16" / "1epoch.pth")
    assert list(have) == list(want)
    encoder = [k for k in want if k.startswith("encoder.")]
    assert encoder and all(have[k].equal(want[k]) for k in encoder)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_consolidated_checkpoint_gives_the_same_loss(runs, mode):
    import torch

    from espnet_ext.bin.consolidate_sharded import main as consolidate_cli
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    _, _, ref_root, sh_root = runs
    consolidate_cli(["--exp_dir", str(sh_root / mode)])  # one process, no process group
    out = sh_root / mode / "consolidated"
    paths = {"model": out / "model.pth", "llm": out / "llm", "adapter": out / "adapter", "merged": out / "merged"}
    config = sh_root / mode / "config.yaml"
    sharded, _ = SpeechLLMTask.build_model_from_file(config, paths["model"])  # strict load
    epoch, _ = SpeechLLMTask.build_model_from_file(config, sh_root / mode / f"{EPOCHS}epoch.pth")
    reference, _ = SpeechLLMTask.build_model_from_file(config, ref_root / mode / f"{EPOCHS}epoch.pth")
    batch = next(iter_factory(reference, 1, 2, 0, 1).build_iter(0))[1]
    with torch.no_grad():
        losses = [float(m.eval()(**batch)[0]) for m in (sharded, epoch, reference)]
    assert losses[0] == losses[1]
    assert losses[0] == pytest.approx(losses[2], abs=LOSS_ATOL)
    if mode == "lora":
        assert (paths["adapter"] / "adapter_config.json").is_file()
        assert (paths["merged"] / "config.json").is_file()
    else:
        from transformers import AutoModelForCausalLM

        llm = AutoModelForCausalLM.from_pretrained(paths["llm"])
        for k, v in llm.state_dict().items():
            assert torch.equal(v, sharded.llm.model.state_dict()[k]), k
        with torch.no_grad():  # what the sharded model computed before it was consolidated
            logits = llm(input_ids=torch.tensor(LOGIT_IDS)).logits
        want = torch.tensor(runs[1]["full"]["logits"])
        print(f"consolidated HF LLM vs the sharded model: max |Δlogit| = {float((logits - want).abs().max()):.1e}")
        torch.testing.assert_close(logits, want, rtol=0, atol=1e-5)


def test_decoding_and_scoring_read_the_consolidated_model(runs, tiny_dumps, tmp_path):
    """The consolidated ``model.pth`` of a sharded run (config.yaml with sharding_conf) is
    what ``<N>epoch.pth`` is to the decoding and importance jobs: same hypotheses, same scores."""
    import torch
    import yaml
    from safetensors.torch import load_file

    from espnet_ext.bin.consolidate_sharded import main as consolidate_cli
    from espnet_ext.bin.importance_score import main as importance_cli
    from espnet_ext.bin.speechllm_inference import main as decode_cli

    _, _, _, sh_root = runs
    run_dir = sh_root / "full"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["sharding_conf"]["param_dtype"] == "float32"
    consolidate_cli(["--exp_dir", str(run_dir), "--out_dir", str(tmp_path / "consolidated")])
    conf = tmp_path / "importance.yaml"
    conf.write_text(yaml.safe_dump({"scoring": {"num_utts": 4, "batch_size": 2}}))
    for name, model_file in (("epoch", run_dir / f"{EPOCHS}epoch.pth"),
                             ("consolidated", tmp_path / "consolidated" / "model.pth")):
        out = tmp_path / name
        decode_cli(["--config", str(run_dir / "config.yaml"), "--model_file", str(model_file),
                    "--modality", "speech", "--data_dir", str(tiny_dumps / "dump/dev"), "--output_dir",
                    str(out / "s2t"), "--modality", "text", "--data_dir", str(tiny_dumps / "dump/dev"),
                    "--output_dir", str(out / "t2t"), "--batch_size", "2", "--max_new_tokens", "5"])
        importance_cli(["--config", str(conf), "--model_config", str(run_dir / "config.yaml"), "--model_file",
                        str(model_file), "--data_dir", str(tiny_dumps / "dump/train"), "--output_dir",
                        str(out / "importance")])
    for part in ("s2t/hyp", "t2t/hyp"):
        hyps = (tmp_path / "consolidated" / part).read_text()
        assert hyps and hyps == (tmp_path / "epoch" / part).read_text(), part
    a = load_file(tmp_path / "consolidated" / "importance" / "scores.safetensors")
    b = load_file(tmp_path / "epoch" / "importance" / "scores.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_decoder_layers_are_found_in_plain_and_peft_llms(make_speech_llm):
    from espnet_ext.train.sharding import decoder_layers

    plain = make_speech_llm(encoder=False)
    lora = make_speech_llm("--lora_conf", "r=4", encoder=False)
    assert decoder_layers(plain.llm) is plain.llm.model.model.layers
    assert decoder_layers(lora.llm) is lora.llm.model.base_model.model.model.layers
    assert len(decoder_layers(lora.llm)) == 4


def test_sharding_config_and_preconditions(make_speech_llm):
    from espnet_ext.train.sharding import ShardingConfig, shard_model

    with pytest.raises(ValueError, match="engine"):
        ShardingConfig(engine="deepspeed")
    with pytest.raises(ValueError, match="param_dtype"):
        ShardingConfig(param_dtype="bf16")
    with pytest.raises(RuntimeError, match="torch.distributed"):
        shard_model(make_speech_llm(encoder=False), ShardingConfig())


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    {"all": worker, "kill": kill_worker}[sys.argv[1]](*sys.argv[2:5])
