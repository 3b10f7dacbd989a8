"""The paper's §2 framework on tiny random models: eq. (2) scoring against eq. (1), its
accumulation, LoRA / bf16 / distributed scoring, reports, Table-1 deactivation, exact
thresholds, rank clustering, distribution shift, parameter changes, the training-time
probe and the stage-6 analysis job.  Expected values are computed independently of the
code under test (autograd by hand, full sorts, hand-evaluated formulas)."""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import build_speech_llm, load_state, qa_batches, run_train, train_cmd, train_config

from espnet_ext.importance import threshold as thr
from espnet_ext.importance.change import analyze_change
from espnet_ext.importance.deactivate import deactivated, deactivation_masks
from espnet_ext.importance.params import MODULE_TYPES, effective_weights, lora_layers, select_parameters
from espnet_ext.importance.report import load_report, load_summary, write_report
from espnet_ext.importance.scoring import ImportanceConfig, score_importance
from espnet_ext.importance.shift import js_divergence, pearson, render_shift_table, shift_metrics
from espnet_ext.importance.structure import concentration, line_share, random_mask_like, vicinity_map
from espnet_ext.tasks.systems import SystemInfo, write_system

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def text_model(speech_llm_args):
    """A text-only (no encoder) tiny speech LLM, fp32, eval mode."""
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    return SpeechLLMTask.build_model(speech_llm_args(encoder=False)).eval()


def _lora(model, seed: int = 0):
    """A deep copy with peft LoRA (r=4) on every projection and non-zero B factors."""
    from peft import LoraConfig, get_peft_model

    m = copy.deepcopy(model)
    m.llm.model = get_peft_model(m.llm.model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return m.eval()


# --------------------------------------------------------------------------------------
# eq. (2) against eq. (1)
# --------------------------------------------------------------------------------------
def test_taylor_scores_rank_correlate_with_exact_removal_loss(text_model):
    """Spearman of eq. (2) against the exact eq. (1) |L(θ) − L(θ|θ_i=0)| on 100 random weights.

    The two differ by the second-order term ½·H_ii·θ_i² (and higher), which for a random
    model with |θ| ~ 0.02 is far below |g_i·θ_i| except where g_i ≈ 0, i.e. among the
    smallest scores; measured ρ = 0.996–0.998 over three seeds (200 weights each).  The
    model runs in float64 so the exact loss differences (~1e-7) are not lost to rounding.
    0.9 leaves a wide margin yet fails for a wrong estimator: |θ| alone or |g| alone rank
    the same weights far worse (checked below).
    """
    from scipy.stats import spearmanr

    model = copy.deepcopy(text_model).double()
    batches = qa_batches(model, 1, bs=2)
    scores = score_importance(model, batches, ImportanceConfig()).scores
    params = select_parameters(model)
    names = list(params)
    grads = {n: g for n, g in zip(names, torch.autograd.grad(
        model(**batches[0], modality="text")[0], [params[n] for n in names]))}

    def loss() -> float:
        with torch.no_grad():
            return float(model(**batches[0], modality="text")[0])

    gen = torch.Generator().manual_seed(0)
    sizes = torch.tensor([params[n].numel() for n in names], dtype=torch.float64)
    base = loss()
    exact, taylor, weight_only, grad_only = [], [], [], []
    for _ in range(100):
        n = names[int(torch.multinomial(sizes, 1, generator=gen))]
        j = int(torch.randint(0, params[n].numel(), (1,), generator=gen))
        flat = params[n].data.view(-1)
        v = flat[j].clone()
        flat[j] = 0
        exact.append(abs(base - loss()))
        flat[j] = v
        taylor.append(float(scores[n].view(-1)[j]))
        weight_only.append(abs(float(v)))
        grad_only.append(abs(float(grads[n].view(-1)[j])))
    rho = spearmanr(taylor, exact).statistic
    print(f"Spearman(eq.2, eq.1) = {rho:.4f}; |θ| only {spearmanr(weight_only, exact).statistic:.3f}, "
          f"|g| only {spearmanr(grad_only, exact).statistic:.3f}")
    assert rho > 0.9
    assert spearmanr(weight_only, exact).statistic < rho - 0.05
    assert spearmanr(grad_only, exact).statistic < rho - 0.05


def test_accumulation_over_batches_equals_gradient_of_summed_loss(text_model):
    batches = qa_batches(text_model, 3, bs=2)
    res = score_importance(text_model, batches, ImportanceConfig())
    per_batch = score_importance(text_model, batches, ImportanceConfig(accumulate="abs_per_batch"))
    params = select_parameters(text_model)
    names = list(params)
    total = sum(text_model(**b, modality="text")[0] for b in batches)
    grads = torch.autograd.grad(total, [params[n] for n in names])
    each = [torch.autograd.grad(text_model(**b, modality="text")[0], [params[n] for n in names]) for b in batches]
    assert res.n_batches == 3 and res.n_utts == 6
    assert res.mean_loss == pytest.approx(float(total.detach()) / 3, rel=1e-6)
    for i, n in enumerate(names):
        w = params[n].detach()
        torch.testing.assert_close(res.scores[n], (w * grads[i]).abs(), rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(per_batch.scores[n], sum((w * g[i]).abs() for g in each), rtol=1e-5, atol=1e-9)


def test_scoring_leaves_grads_flags_and_modes_untouched(text_model):
    model = copy.deepcopy(text_model).train()
    model.adaptor.eval()  # a submodule with its own mode must keep it
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=gen)
    before = {n: (p.grad, p.grad.clone(), p.requires_grad) for n, p in model.named_parameters() if p.grad is not None}
    frozen = select_parameters(model)["llm.model.model.layers.1.mlp.up_proj.weight"]
    frozen.requires_grad_(False)
    modes = {n: m.training for n, m in model.named_modules()}
    score_importance(model, qa_batches(model, 2), ImportanceConfig())
    assert not frozen.requires_grad
    frozen.requires_grad_(True)
    for n, p in model.named_parameters():
        if n in before:
            obj, val, req = before[n]
            assert p.grad is obj and torch.equal(p.grad, val) and p.requires_grad == req, n
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_lora_scores_are_those_of_the_merged_weights(text_model):
    lora = _lora(text_model)
    batches = qa_batches(text_model, 2)
    got = score_importance(lora, batches, ImportanceConfig()).scores
    merged = copy.deepcopy(lora)
    merged.llm.model = merged.llm.model.merge_and_unload()
    want = score_importance(merged, batches, ImportanceConfig()).scores
    assert got.keys() == want.keys() == select_parameters(text_model).keys()  # canonical names
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-7)
    # effective weights = the merge; plain scores would differ
    eff = effective_weights(lora)
    for n, p in select_parameters(merged).items():
        torch.testing.assert_close(eff[n], p.detach(), rtol=1e-5, atol=1e-7)
    plain = score_importance(text_model, batches, ImportanceConfig()).scores
    assert any(not torch.allclose(plain[n], want[n], rtol=1e-3) for n in want)
    # Table 1 on a LoRA model (analysis.score): adapters merged, then zeroing hits the effective weight
    for layer in lora_layers(lora).values():
        layer.merge()
    assert not lora_layers(lora)
    for n, w in effective_weights(lora).items():
        torch.testing.assert_close(w, eff[n], rtol=1e-5, atol=1e-6)
    masks = deactivation_masks(got, 0.03, "top")
    with deactivated(select_parameters(lora), masks):
        assert all(bool((w[masks[n]] == 0).all()) for n, w in effective_weights(lora).items())


def test_bf16_model_accumulates_in_fp32(text_model):
    model = copy.deepcopy(text_model).to(torch.bfloat16)
    batches = qa_batches(model, 3)
    scores = score_importance(model, batches, ImportanceConfig()).scores
    params = select_parameters(model)
    names = list(params)
    acc = {n: torch.zeros(params[n].shape) for n in names}
    for b in batches:
        for n, g in zip(names, torch.autograd.grad(model(**b, modality="text")[0], [params[n] for n in names])):
            assert g.dtype == torch.bfloat16
            acc[n] += g.float()
    for n in names:
        assert scores[n].dtype == torch.float32
        torch.testing.assert_close(scores[n], (params[n].detach().float() * acc[n]).abs(), rtol=1e-6, atol=0)


def test_every_collective_tensor_lives_on_the_parameters_device(text_model, monkeypatch):
    # NCCL reduces device tensors only.  A tensor made without an explicit device lands on
    # the process's default device, not the parameters': the batches switch the default
    # device away (to meta) once they are exhausted, so such a tensor shows up there.
    import torch.distributed as dist

    seen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: seen.append((t.device, t.dtype)))

    def batches():
        yield from qa_batches(text_model, 2)
        torch.set_default_device("meta")

    want = next(text_model.parameters()).device
    try:
        res = score_importance(text_model, batches(), ImportanceConfig())
    finally:
        torch.set_default_device(None)
    assert len(seen) == len(res.scores) + 1  # the run statistics + one accumulator per parameter
    assert {d for d, _ in seen} == {want}, seen[:3]
    assert (res.n_batches, res.n_utts) == (2, 4)


def test_float16_scores_are_refused_and_bfloat16_keeps_tiny_scores(tmp_path):
    # float16's smallest subnormal is 6e-8: eq. 2 scores below it were flushed to zero
    with pytest.raises(ValueError, match="score_dtype: float16"):
        ImportanceConfig(score_dtype="float16")
    with pytest.raises(ValueError, match="score_dtype"):
        ImportanceConfig(score_dtype="int8")
    scores = {"llm.model.model.layers.0.mlp.up_proj.weight": torch.tensor([[3e-9, 1e-8], [5e-5, 2e-2]])}
    with pytest.raises(ValueError, match="score_dtype: float16"):
        write_report(tmp_path / "fp16", scores, dtype="float16")
    assert not (tmp_path / "fp16" / "summary.json").exists()
    assert ImportanceConfig(score_dtype="bfloat16").score_dtype == "bfloat16"
    write_report(tmp_path / "bf16", scores, dtype="bfloat16")
    from espnet_ext.importance.report import load_scores

    got = load_scores(tmp_path / "bf16")
    name = next(iter(scores))
    assert bool((got[name] > 0).all())  # nothing flushed to zero
    torch.testing.assert_close(got[name], scores[name], rtol=2 ** -8, atol=0)  # bf16: 8 significant bits


def _dist_worker(rank: int, world: int, llm_dir: str, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = build_speech_llm(llm_dir)
    batches = qa_batches(model, 5)[rank::world]  # 5 batches: ranks get 3 and 2
    for accumulate in ("signed_sum", "abs_per_batch"):
        res = score_importance(model, batches, ImportanceConfig(accumulate=accumulate))
        if rank == 0:
            torch.save({"scores": res.scores, "n": (res.n_batches, res.n_utts, res.mean_loss)},
                       f"{out}.{accumulate}")
    dist.destroy_process_group()


def test_distributed_scores_equal_single_process(text_model, tiny_llm_dir, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tiny_llm_dir), str(tmp_path / "pg"), str(tmp_path / "rank0")),
             nprocs=2, join=True)
    batches = qa_batches(text_model, 5)
    for accumulate in ("signed_sum", "abs_per_batch"):
        single = score_importance(text_model, batches, ImportanceConfig(accumulate=accumulate))
        dist = torch.load(tmp_path / f"rank0.{accumulate}")
        assert dist["n"][:2] == (5, 10) and dist["n"][2] == pytest.approx(single.mean_loss, rel=1e-6)
        # the tiny model's median score is ~6e-5 and a quarter of them lie below 1e-5: an
        # absolute tolerance of 1e-5 would leave Table 1's bottom set unchecked.  Relative,
        # then; the absolute floor (1e-6 of the matrix's mean score) only covers entries
        # whose gradient sum cancels to near zero, where summation order decides the digits
        for n, s in single.scores.items():
            torch.testing.assert_close(dist["scores"][n], s, rtol=1e-4, atol=1e-6 * float(s.mean()))
        for which in ("bottom", "top"):  # the sets Table 1 zeroes are the same
            want = deactivation_masks(single.scores, 0.03, which)
            got = deactivation_masks(dist["scores"], 0.03, which)
            assert all(torch.equal(got[n], want[n]) for n in want), which


# --------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------
def test_report_roundtrip_and_mismatch_error(text_model, tmp_path, monkeypatch):
    scores = score_importance(text_model, qa_batches(text_model, 1), ImportanceConfig()).scores
    summary = write_report(tmp_path / "rep", scores, {"note": "x"})
    assert len(summary["layer_sums"]) == 4
    assert sum(summary["layer_sums"]) == pytest.approx(summary["total"], rel=1e-9)
    loaded = load_report(tmp_path / "rep", text_model)
    assert all(torch.equal(loaded[n], scores[n]) for n in scores)
    # a report of another model is refused with the offending name
    bad = dict(scores)
    name = "llm.model.model.layers.0.mlp.up_proj.weight"
    bad[name] = bad[name][:, :3]
    write_report(tmp_path / "bad", bad)
    with pytest.raises(ValueError, match=r"up_proj.weight has shape"):
        load_report(tmp_path / "bad", text_model)
    # a rewrite that fails while writing (a full disk) leaves the previous report intact ...
    import errno
    import os

    from espnet_ext.utils.atomic import DiskFullError

    rep = tmp_path / "rep"
    before = {f.name: f.read_bytes() for f in rep.iterdir()}
    real_fsync, real_replace = os.fsync, os.replace

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFullError, match=str(rep)):
        write_report(rep, {n: 2 * s for n, s in scores.items()})
    assert {f.name: f.read_bytes() for f in rep.iterdir()} == before
    # ... and one stopped between putting the scores and the summary in place leaves no
    # summary.json (the completion marker) next to the new scores
    renamed = []

    def stopped(src, dst):
        renamed.append(dst)
        if len(renamed) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", real_fsync)
    monkeypatch.setattr(os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        write_report(rep, {n: 2 * s for n, s in scores.items()})
    assert [p.name for p in renamed] == ["scores.safetensors", "summary.json"]
    assert sorted(f.name for f in rep.iterdir()) == ["scores.safetensors"]


# --------------------------------------------------------------------------------------
# deactivation (Table 1)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["top", "bottom", "random"])
@pytest.mark.parametrize("scope", ["global", "per_matrix"])
def test_deactivation_restores_every_weight_bitwise(text_model, which, scope):
    model = copy.deepcopy(text_model)
    scores = score_importance(model, qa_batches(model, 1), ImportanceConfig()).scores
    params = select_parameters(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = deactivation_masks(scores, 0.03, which, scope)
    with deactivated(params, masks) as n:
        assert n == sum(int(m.sum()) for m in masks.values()) > 0
        assert all(bool((params[k].detach()[m] == 0).all()) for k, m in masks.items())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


class _ZeroRecorder(torch.nn.Module):
    """A stand-in model: one 10×10 weight; every forward records which entries are zero."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(10, 10))
        self.seen = []

    def forward(self, x, modality):
        self.seen.append((modality, frozenset(map(tuple, (self.w == 0).nonzero().tolist()))))
        loss = (self.w.sum() / 100).reshape(1)
        return loss, {}, torch.ones(1)


def test_table1_rows_use_their_own_modality_masks_and_record_the_share_zeroed():
    from espnet_ext.importance.deactivate import deactivation_check, render_table1

    model = _ZeroRecorder()
    params = {"w": model.w}
    text = torch.arange(100, dtype=torch.float32).reshape(10, 10)  # top 3 %: the last three
    speech = text.flip(0, 1).clone()  # top 3 %: the first three
    speech[5] = 0.0  # ties at the bottom: with the 0 at (9, 9), "bottom 3 %" of speech zeroes 11 %
    out = deactivation_check(model, params, {"text": {"w": text}, "speech": {"w": speech}},
                             {"text": [{"x": 0}], "speech": [{"x": 0}]}, fraction=0.03)
    # the speech row's top run zeroed the speech top set, the text row's the text top set
    runs = [(m, z) for m, z in model.seen if z]
    assert ("speech", frozenset({(0, 0), (0, 1), (0, 2)})) in runs
    assert ("text", frozenset({(9, 7), (9, 8), (9, 9)})) in runs
    assert ("speech", frozenset({(9, 7), (9, 8), (9, 9)})) not in runs
    assert out["masks_from"] == {"text": "text", "speech": "speech"}
    z = out["zeroed_fraction"]
    assert z["text"]["top"] == z["speech"]["top"] == 0.03 and z["text"]["bottom"] == 0.03
    assert z["speech"]["bottom"] == 0.11  # ties at the threshold
    assert z["text"]["random"] == z["speech"]["random"] == float(
        int(deactivation_masks({"w": text}, 0.03, "random")["w"].sum())) / 100
    assert torch.equal(model.w.detach(), torch.ones(10, 10))  # restored
    md = render_table1(out["table"], 0.03, "global", z, out["masks_from"])
    assert "speech row ← speech input" in md and "bottom 11.000%" in md
    # without a speech report, the speech row falls back to the text masks
    fallback = deactivation_check(model, params, {"text": {"w": text}}, {"speech": [{"x": 0}]}, fraction=0.03)
    assert fallback["masks_from"] == {"speech": "text"}


def test_per_matrix_scope_takes_the_fraction_of_each_matrix(text_model):
    scores = score_importance(text_model, qa_batches(text_model, 1), ImportanceConfig()).scores
    for which in ("top", "bottom"):
        per = deactivation_masks(scores, 0.05, which, "per_matrix")
        glob = deactivation_masks(scores, 0.05, which, "global")
        for n, s in scores.items():
            k = max(1, round(0.05 * s.numel()))
            v = torch.sort(s.reshape(-1), descending=which == "top").values[k - 1]
            want = s >= v if which == "top" else s <= v
            assert torch.equal(per[n], want), n
        # the global threshold does not spread evenly over matrices
        assert any(int(per[n].sum()) != int(glob[n].sum()) for n in scores)


# --------------------------------------------------------------------------------------
# exact thresholds
# --------------------------------------------------------------------------------------
def _tensors(kind: str, sizes, gen):
    out = []
    for s in sizes:
        if kind == "uniform":
            t = torch.rand(s, generator=gen)
        elif kind == "duplicates":  # a few distinct values, heavy ties
            t = torch.randint(0, 7, (s,), generator=gen).float() / 3
        elif kind == "zeros":  # 70 % exact zeros
            t = torch.rand(s, generator=gen) * (torch.rand(s, generator=gen) > 0.7)
        else:  # fp16-quantised tiny values: ties and denormal-range bit patterns
            t = (torch.rand(s, generator=gen) * 1e-3).half().float()
        out.append(t.reshape(-1, 7) if s % 7 == 0 else t)
    return out


@pytest.mark.parametrize("kind", ["uniform", "duplicates", "zeros", "fp16"])
@pytest.mark.parametrize("sizes", [(1,), (5, 9), (700, 3003, 20000), (140_000, 70_007)])
def test_threshold_selects_exactly_the_full_sort_set(kind, sizes, monkeypatch):
    monkeypatch.setattr(thr, "_SMALL", 64)  # exercise the sample+filter path on small inputs too
    gen = torch.Generator().manual_seed(len(sizes) * 31 + len(kind))
    ts = _tensors(kind, sizes, gen)
    flat = torch.cat([t.reshape(-1) for t in ts])
    desc, asc = torch.sort(flat, descending=True).values, torch.sort(flat).values
    for fraction in (1e-4, 0.03, 0.05, 0.5, 0.97, 1.0):
        k = max(1, int(round(fraction * flat.numel())))
        for method in ("auto", "histogram", "sort"):
            top = thr.threshold_for_fraction(ts, fraction, "top", method)
            bottom = thr.threshold_for_fraction(ts, fraction, "bottom", method)
            assert top == float(desc[k - 1]) and bottom == float(asc[k - 1]), (fraction, method)
            n_top = sum(int(thr.selection_mask(t, top, "top").sum()) for t in ts)
            assert n_top == int((flat >= desc[k - 1]).sum()) >= k
    with pytest.raises(ValueError, match="non-negative"):
        thr.kth_largest([torch.tensor([1.0, -2.0])], 1)
    with pytest.raises(ValueError, match="non-NaN"):
        thr.kth_largest([torch.tensor([1.0, float("nan")])], 1)


# --------------------------------------------------------------------------------------
# rank clustering (Fig. 1), shift (Fig. 2-3), parameter change (Fig. 4)
# --------------------------------------------------------------------------------------
def test_vicinity_map_hand_checked():
    mask = torch.tensor([[1, 0, 0, 0],
                         [1, 0, 0, 0],
                         [0, 0, 0, 1]], dtype=torch.bool)
    # each entry: top entries in its 3×3 neighbourhood / neighbours that exist
    want = torch.tensor([[2 / 4, 2 / 6, 0 / 6, 0 / 4],
                         [2 / 6, 2 / 9, 1 / 9, 1 / 6],
                         [1 / 4, 1 / 6, 1 / 6, 1 / 4]])
    torch.testing.assert_close(vicinity_map(mask), want)
    assert torch.equal(vicinity_map(torch.ones(5, 3, dtype=torch.bool)), torch.ones(5, 3))


@pytest.mark.parametrize("k", [0, 1, 7, 30, 100])
def test_random_mask_like_draws_a_uniform_subset_of_the_same_size(k):
    """Exactly k entries, the same mask for the same seed, and every position equally
    likely (sparse: distinct draws, thinned; dense, k > n / 4: a permutation)."""
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask.view(-1)[:k] = True
    draws = torch.stack([random_mask_like(mask, seed=s).view(-1) for s in range(3000)]).float()
    assert (draws.sum(1) == k).all()
    assert torch.equal(random_mask_like(mask, seed=5), random_mask_like(mask, seed=5))
    freq = draws.mean(0)
    sd = (k / 100 * (1 - k / 100) / 3000) ** 0.5
    assert (freq - k / 100).abs().max() <= 5 * sd + 1e-12  # 100 positions: none 5 sd off
    if 0 < k < 100:
        assert not torch.equal(random_mask_like(mask, seed=1), random_mask_like(mask, seed=2))


def test_concentration_of_row_structured_set_beats_random():
    gen = torch.Generator().manual_seed(0)
    rows = torch.zeros(200, 300, dtype=torch.bool)
    rows[torch.randperm(200, generator=gen)[:10]] = True  # 5 % of the entries, in 10 whole rows
    rnd = random_mask_like(rows, seed=1)
    assert int(rnd.sum()) == int(rows.sum()) == 3000
    assert line_share(rows) == 1.0
    c, r = concentration(rows), concentration(rnd)
    # a random 5 % set: ≈ 1 − 0.95² of it lies in 5 % rows ∪ 5 % columns (a bit more: the busiest are chosen)
    assert 0.09 < r["share"] < 0.16 and 0.8 < r["ratio"] < 1.25
    assert c["share"] == 1.0 and c["ratio"] > 6
    # hand-checked: at 50 % the busiest row (0) and 2 columns (0, 1: ties keep index order)
    m = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    assert line_share(m, 0.5) == pytest.approx(2 / 3)  # (1, 2) lies outside row 0 ∪ columns {0, 1}
    m2 = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert line_share(m2, 0.25) == pytest.approx(1 / 4)  # row 0 and column 0 both hold only (0, 0)


def test_display_pool_shows_the_share_of_top_weights_per_block():
    from espnet_ext.importance.structure import display_pool

    m = torch.zeros(512, 512)
    m[::2, ::2] = 1.0  # one top weight in every 2×2 block: a max pool would show all ones
    torch.testing.assert_close(display_pool(m, 256), torch.full((256, 256), 0.25))
    # blocks cut by the border average only the entries that exist: 5×5 into 3×2 blocks
    small = torch.zeros(5, 5)
    small[0, 0] = small[4, 4] = 1.0
    torch.testing.assert_close(display_pool(small, 2), torch.tensor([[1 / 9, 0.0], [0.0, 1 / 4]]))


def test_concentration_null_range_and_line_overlap():
    from espnet_ext.importance.structure import line_overlap, summarize_concentration

    gen = torch.Generator().manual_seed(0)
    rows = torch.zeros(200, 300, dtype=torch.bool)
    rows[torch.randperm(200, generator=gen)[:10]] = True
    c = concentration(rows, n_null=20, seed=3)
    assert len(c["null_ratios"]) == 20 and sum(c["null_ratios"]) / 20 == pytest.approx(1.0)
    assert c["null_lo"] <= 1.0 <= c["null_hi"] < 1.3 and c["ratio"] > c["null_hi"] and c["p_null"] == 0.0
    rnd = concentration(random_mask_like(rows, seed=99), n_null=20, seed=3)
    assert rnd["null_lo"] - 0.1 < rnd["ratio"] < rnd["null_hi"] + 0.1 and rnd["p_null"] > 0
    # the type summary: the null of the mean ratio is the mean of the i-th null ratios
    summ = summarize_concentration({"llm.model.model.layers.0.mlp.up_proj.weight": c,
                                    "llm.model.model.layers.1.mlp.up_proj.weight": rnd})["all"]
    mean_null = [(a + b) / 2 for a, b in zip(c["null_ratios"], rnd["null_ratios"])]
    assert summ["null_hi"] <= max(mean_null) and summ["n_null"] == 20
    # line overlap: Δθ in the same rows as the importance vs in other rows / random
    imp = torch.zeros(200, 300, dtype=torch.bool)
    imp[:10, :15] = True  # its top 5 % lines: rows 0-9, columns 0-14
    same = line_overlap(imp.clone(), imp, 0.05, n_null=20)
    other = torch.zeros_like(imp)
    other[100:110, 200:215] = True
    apart = line_overlap(other, imp, 0.05, n_null=20)
    assert same["overlap"] == 1.0 and same["ratio"] > same["null_hi"] and same["p_null"] == 0.0
    assert apart["overlap"] == 0.0 and apart["p_null"] == 1.0
    assert 0.03 < same["random_overlap"] < 0.08  # ≈ line_fraction for random lines
    with pytest.raises(ValueError, match="one shape"):
        line_overlap(imp, imp[:, :5])


def test_shift_metrics_hand_checked():
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([3, 1, 2], [6, 2, 4]) == pytest.approx(0.0, abs=1e-12)  # scale-free
    # p = (½, ½), q = (1, 0): M = (¾, ¼); ½·KL(p‖M) + ½·KL(q‖M) in bits
    want = 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)) + 0.5 * math.log2(1 / 0.75)
    assert js_divergence([1, 1], [1, 0]) == pytest.approx(want)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # cov 4/4, var 5/4 each
    m = shift_metrics([1, 4, 2, 1], [3, 1, 1, 0.5])
    assert m["peak_move"] == -1 and m["mass_ratio"] == pytest.approx(5.5 / 8)
    table = render_shift_table({"full": m}, {"full": "Full-FT"})
    assert "| Full-FT | " in table and "| -1 | 0.688 |" in table
    with pytest.raises(ValueError, match="differ in length"):
        shift_metrics([1, 2], [1, 2, 3])


def test_change_analysis_scores_low_rank_updates_as_clustered():
    gen = torch.Generator().manual_seed(0)
    names = [f"llm.model.model.layers.{i}.mlp.{t}_proj.weight" for i in range(2) for t in ("up", "down")]
    base = {n: torch.randn(96, 64, generator=gen) for n in names}
    dense = {n: w + 0.01 * torch.randn(w.shape, generator=gen) for n, w in base.items()}
    low = {n: w + 0.01 * torch.randn(96, 2, generator=gen) @ torch.randn(2, 64, generator=gen)
           for n, w in base.items()}
    s_dense, maps = analyze_change(base, dense, 1, MODULE_TYPES)
    s_low, _ = analyze_change(base, low, 1, MODULE_TYPES)
    assert s_low["concentration"]["all"]["ratio"] > 1.5 * s_dense["concentration"]["all"]["ratio"]
    assert 0.7 < s_dense["concentration"]["all"]["ratio"] < 1.4
    assert [m is not None for m in maps] == [t in ("up", "down") for t in MODULE_TYPES]
    assert all(float(m.max()) == 1.0 for m in maps if m is not None)
    rel = s_dense["relative_change_per_layer"]
    want = [math.sqrt(sum(float(((dense[n] - base[n]) ** 2).sum()) for n in names if f"layers.{i}." in n)
                      / sum(float((base[n] ** 2).sum()) for n in names if f"layers.{i}." in n)) for i in range(2)]
    assert rel == pytest.approx(want, rel=1e-6)


# --------------------------------------------------------------------------------------
# the training-time probe and the stage-6 analysis job
# --------------------------------------------------------------------------------------
def _base_report(root: Path, conf: Path, out: Path) -> Path:
    from espnet_ext.analysis.score import run_importance
    from espnet_ext.inference.speechllm import load_model

    run_importance(load_model(conf), root / "dump" / "train", out, ImportanceConfig(num_utts=4, batch_size=2),
                   provenance={"model_config": str(conf), "model_file": None})
    return out


def test_probe_leaves_training_bit_identical(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    # accum_grad 2 + a probe after every iteration: half the probes run while gradients are
    # pending, so a probe that disturbed .grad would change the weights
    conf = train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir, accum_grad=2)
    base = _base_report(tiny_dumps, conf, tmp_path / "base")
    probe = {"data_dir": str(tiny_dumps / "dump" / "dev"), "num_utts": 3, "batch_size": 2,
             "every_n_epochs": 1, "every_n_steps": 1, "base_report": str(base)}
    conf_probe = train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir, accum_grad=2, importance_probe_conf=probe)
    plain, probed = tmp_path / "plain", tmp_path / "probed"
    run_train(train_cmd(tiny_dumps, conf, plain))
    p = run_train(train_cmd(tiny_dumps, conf_probe, probed))
    a, b = (load_state(d / "2epoch.pth") for d in (plain, probed))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    out = probed / "importance_probe"
    assert sorted(f.name for f in out.glob("*.json")) == ["base.json", "epoch1.json", "epoch2.json"] + [
        f"step{i}.json" for i in range(1, 7)]  # base.json: the base model on the probe set, scored once
    rec = json.loads((out / "epoch2.json").read_text())
    assert len(rec["layer_sums"]) == 4 and sum(rec["layer_share"]) == pytest.approx(1.0)
    assert set(rec["shift_vs_base"]) == {"js", "pearson", "peak_move", "mass_ratio"}
    assert "imp_js=" in p.stderr and "valid" in p.stderr  # in ESPnet's epoch log line
    assert not (plain / "importance_probe").exists()


def test_probe_shift_compares_the_base_on_the_probe_set(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    # the base report is scored on train utterances, the probe on dev ones: the reference of
    # the shift must be the starting model's curve on the probe set, so an unchanged model
    # shows no shift at all (mass ratio 1, JS 0)
    from espnet_ext.inference.speechllm import load_model
    from espnet_ext.train.probe import ImportanceProbe, ProbeConfig

    conf = train_config(tmp_path, tiny_llm_dir, tiny_whisper_dir)
    base = _base_report(tiny_dumps, conf, tmp_path / "base")
    probe = ImportanceProbe(ProbeConfig(data_dir=str(tiny_dumps / "dump" / "dev"), num_utts=3, batch_size=2,
                                        base_report=str(base)), tmp_path / "exp")
    model = load_model(conf)
    with pytest.raises(RuntimeError, match="score_start"):
        probe.run(model, "step1", 1, 1)
    probe.score_start(model)
    scalars = probe.run(model, "step1", 1, 1)
    assert scalars["imp_mass_ratio"] == pytest.approx(1.0, rel=1e-5)
    assert scalars["imp_js"] == pytest.approx(0.0, abs=1e-9) and scalars["imp_peak_move"] == 0
    recorded = json.loads((tmp_path / "exp" / "importance_probe" / "base.json").read_text())
    assert recorded["n_utts"] == 3 and recorded["layer_sums"] == probe.base_curve
    assert probe.base_curve != load_summary(base)["layer_sums"]  # not the report's (train) curve
    # a mistyped base report fails before training, naming the option
    with pytest.raises(Exception, match="importance_probe_conf.base_report"):
        ImportanceProbe(ProbeConfig(data_dir=str(tiny_dumps / "dump" / "dev"), base_report=str(tmp_path / "nope")),
                        tmp_path / "exp2")


def _system(exp: Path, tag: str, model_conf: dict, state: dict) -> None:
    import yaml

    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    (exp / tag).mkdir(parents=True)
    args = {**SpeechLLMTask.default_args(), **model_conf}
    (exp / tag / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(args, default=str))))
    torch.save(state, exp / tag / "valid.loss.best.pth")
    lora = "lora_conf" in model_conf  # what stage 4's composer records
    write_system(exp / tag, SystemInfo("LoRA" if lora else "Full-FT", "lora" if lora else "full_ft"))


def test_analysis_job_figures_numbers_and_results_md(tiny_dumps, tiny_llm_dir, tiny_whisper_dir, tmp_path):
    import yaml

    from espnet_ext.analysis.analyze import run_analysis
    from espnet_ext.eval.results import collect_summary, publish_figures, render_results_md
    from espnet_ext.tasks.speech_llm import SpeechLLMTask

    parts = {"encoder": "whisper", "encoder_conf": {"model_name_or_path": str(tiny_whisper_dir)},
             "adaptor": "concat", "adaptor_conf": {"downsample_rate": 5, "hidden_size": 32},
             "llm": "hf", "llm_conf": {"model_name_or_path": str(tiny_llm_dir)}}
    model_yaml = tmp_path / "model.yaml"
    model_yaml.write_text(yaml.safe_dump(parts))
    imp_yaml = tmp_path / "importance.yaml"
    imp_yaml.write_text(yaml.safe_dump({
        "scoring": {"num_utts": 4, "batch_size": 2},
        "deactivation": {"num_utts": 2, "batch_size": 2},
        "analysis": {"layers": [0, 3], "change_layer": 1, "max_px": 16}}))
    exp = tmp_path / "exp"
    dump = tiny_dumps / "dump"
    _base_report(tiny_dumps, model_yaml, exp / "importance" / "base")
    # "full": every LLM weight moved a little; "lora": peft LoRA r=4 with non-zero B
    gen = torch.Generator().manual_seed(0)
    full = SpeechLLMTask.build_model(argparse.Namespace(**{**SpeechLLMTask.default_args(), **parts}))
    state = {k: v + 0.01 * v.abs().mean() * torch.randn(v.shape, generator=gen) if "layers." in k else v
             for k, v in full.state_dict().items()}
    _system(exp, "full", parts, state)
    lora_parts = {**parts, "lora_conf": {"r": 4}}
    lora = SpeechLLMTask.build_model(argparse.Namespace(**{**SpeechLLMTask.default_args(), **lora_parts}))
    state = {k: 0.05 * torch.randn(v.shape, generator=gen) if "lora_B" in k else v
             for k, v in lora.state_dict().items()}
    _system(exp, "lora", lora_parts, state)

    a = run_analysis(exp, ["full", "lora"], imp_yaml, model_yaml, dump / "train", dump / "dev")
    for tag in ("full", "lora"):
        assert set(a["shift"][tag]) == {"js", "pearson", "peak_move", "mass_ratio"}
    # Table 1 only for systems of deactivation.roles (default: full_ft), with text and speech
    # rows; the speech row's masks come from a speech-input report of the same utterances
    t1 = json.loads((exp / "importance/full/table1.json").read_text())
    assert list(t1["table"]) == ["text", "speech"] and t1["masks_from"] == {"text": "text", "speech": "speech"}
    assert all(0 < f < 1 for per in t1["zeroed_fraction"].values() for f in per.values())
    speech_meta = json.loads((exp / "importance/full/speech/summary.json").read_text())["meta"]
    text_meta = json.loads((exp / "importance/full/summary.json").read_text())["meta"]
    assert speech_meta["config"]["modality"] == "speech" and speech_meta["n_utts"] == text_meta["n_utts"] == 4
    assert not (exp / "importance/lora/table1.json").exists()
    assert not (exp / "importance/lora/speech").exists()
    # Fig. 1: Full-FT's speech- and text-input importance beside the base's; seeded null ranges
    assert set(a["rank_clustering"]) == {"base", "full", "lora", "full:speech"}
    assert a["rank_clustering_names"]["full:speech"] == "Full-FT (speech input)"
    assert all(k in a["rank_clustering"]["base"]["all"] for k in ("null_lo", "null_hi", "p_null"))
    assert a["rank_clustering"]["base"]["all"]["n_null"] == 20
    for tag in ("full", "lora"):  # Δθ's top lines against the base importance's top lines
        assert {"overlap", "random_overlap", "ratio", "null_hi"} <= set(a["change"][tag]["line_overlap"]["all"])
    assert a["rank_clustering_layers"] == [0, 3] and a["change_layer"] == 1
    # the rank-4 merged update clusters in rows/columns, the dense one does not
    ratio = {t: a["change"][t]["concentration"]["all"]["ratio"] for t in ("full", "lora")}
    assert ratio["lora"] > 1.5 * ratio["full"]
    figs = exp / "results" / "figures"
    for f in ("fig1_rank_clustering.png", "fig2_layer_shift_text.png", "fig4_param_change.png"):
        assert (figs / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # up to date: nothing is redone
    outputs = (exp / "results" / "analysis.json", exp / "importance/lora/scores.safetensors")
    stamps = [p.stat().st_mtime_ns for p in outputs]
    run_analysis(exp, ["full", "lora"], imp_yaml, model_yaml, dump / "train", dump / "dev")
    assert stamps == [p.stat().st_mtime_ns for p in (exp / "results" / "analysis.json",
                                                     exp / "importance/lora/scores.safetensors")]
    # summary.json carries the numbers and figure paths; RESULTS.md links the copies beside it
    summary = publish_figures(collect_summary(exp, ["full", "lora"]), exp, tmp_path / "out" / "RESULTS.md")
    md = render_results_md(json.loads(json.dumps(summary)))
    assert "![Fig. 1: rank clustering](figures/fig1_rank_clustering.png)" in md
    assert "| Full-FT | " in md and "| LoRA | " in md and "JS divergence" in md
    assert (tmp_path / "out" / "figures" / "fig4_param_change.png").is_file()
