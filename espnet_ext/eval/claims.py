"""The paper's qualitative claims, checked against one run's numbers (RESULTS.md).

Each claim is a rule over ``summary.json`` (Table 1, Table 2, the importance analysis),
comparing systems by their role (``system_info``: base, full_ft, layer_lr, lora), never by
exp-dir tag:
it reports the numbers it looked at and a verdict, ``holds``, ``partly`` (e.g. on one of
the two test sets) or ``does not hold``; claims whose numbers were not produced are left
out.  The rules are deliberately simple and stated in each row, so a reader can disagree
with the threshold but not with the arithmetic.

Accuracy claims rest on a paired test over the pooled test questions (McNemar's exact
test, α = 0.05, plus a 95 % bootstrap interval of the difference, :mod:`espnet_ext.eval.stats`):
``holds`` when the difference goes the claimed way and p < α, ``within noise`` when
p ≥ α, ``does not hold`` when it goes the other way with p < α.  A summary without
per-question outcomes falls back to comparing the single accuracies of each test set.

Claims (paper section):
1. §2.2 / Table 1: removing the top-3 % important weights explodes perplexity
   (≥ 10× the base), the bottom 3 % barely matters (≤ 1.1×), random 3 % lies between.
2. §2.3.1 / Fig. 1: important weights cluster in rows and columns (concentration ratio of
   the base importance above the 97.5 % point of its null, the ratios of seeded random sets
   of the same size; a summary without the null range: ratio > 1).
3. §2.3.2 / Fig. 2: full fine-tuning shifts the layer-wise textual importance, and the
   layers the base relies on most (its top quarter by importance; the paper: "the
   relative importance of middle and last few layers is significantly diminished") lose
   relative importance.
4. Table 2: full speech fine-tuning lowers T2T accuracy below No-FT.
5. Table 2: Layer-LR and LoRA keep more T2T accuracy than Full-FT.
   (4, 5 and 7 are checked for each T2T reading that was decoded: the transcript in the
   speech LLM's prompt, and in the LLM's own chat template; :data:`T2T_READINGS`.)
6. Table 2: Layer-LR and LoRA reach higher S2T accuracy than Full-FT.
7. §3.2: trade-off: Layer-LR has the higher T2T, LoRA the higher S2T of the two.
8. §3.3.1 / Fig. 3: Layer-LR and LoRA shift the importance distribution less than Full-FT
   (lower JS divergence against the base).
9. §3.3.2 / Fig. 4: LoRA's parameter changes are more row/column-clustered than Full-FT's
   (higher concentration ratio of the top |Δθ|).
10. Ours, not the paper's: the end-to-end speech LLM (Layer-LR, LoRA) answers from speech
    at least as well as the ASR cascade built from the same weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from espnet_ext.eval.stats import PairedComparison, compare_paired

Verdict = str
Claim = Tuple[str, str, Verdict]  # (claim, what this run shows, verdict)

HOLDS, PARTLY, FAILS, NOISE = "holds", "partly", "does not hold", "within noise"
ALPHA = 0.05  # significance level of the paired tests


def _verdict(checks: Sequence[bool]) -> Verdict:
    if all(checks):
        return HOLDS
    return PARTLY if any(checks) else FAILS


def _combine(verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict for a claim made of several comparisons: theirs if they agree; partly if
    some hold and some not; without any that holds, does not hold if one fails, else noise."""
    if len(set(verdicts)) == 1:
        return verdicts[0]
    if HOLDS in verdicts or PARTLY in verdicts:
        return PARTLY
    return FAILS if FAILS in verdicts else NOISE


def tag_of(summary: dict, role: str) -> Optional[str]:
    """The first system of ``role`` in the run's order (the claims compare one per role)."""
    for tag, info in summary.get("system_info", {}).items():
        if info.get("role") == role:
            return tag
    return None


_SEED_SUFFIX = re.compile(r" \(seed \d+\)$")


def replicas(summary: dict, tag: Optional[str]) -> List[str]:
    """``tag`` and the other training runs of the same system (``run.sh --seeds``): the
    systems of the same role, LoRA rank and name that differ in their ``seed`` only."""
    info = summary.get("system_info", {})
    if tag is None or tag not in info:
        return [] if tag is None else [tag]
    me = info[tag]
    if me.get("seed") is None:
        return [tag]
    key = (me.get("role"), me.get("lora_rank"), _SEED_SUFFIX.sub("", me.get("name", tag)))
    return [t for t, i in info.items() if i.get("seed") is not None
            and (i.get("role"), i.get("lora_rank"), _SEED_SUFFIX.sub("", i.get("name", t))) == key]


def seed_spread(summary: dict, matcher: str = "has_answer") -> Dict[str, dict]:
    """For every system trained with several seeds: each run's accuracy per (test set,
    modality) and JS shift, with their mean, sample standard deviation and range."""
    out: Dict[str, dict] = {}
    seen: set = set()
    shift = (summary.get("analysis") or {}).get("shift", {})
    for tag in summary.get("system_info", {}):
        runs = replicas(summary, tag)
        if len(runs) < 2 or tag in seen:
            continue
        seen.update(runs)
        seeds = [summary["system_info"][t]["seed"] for t in runs]
        entry: Dict[str, dict] = {"seeds": seeds, "tags": runs, "accuracy": {}}
        per = [summary.get("systems", {}).get(t, {}) for t in runs]
        for test_set in sorted({s for p in per for s in p}):
            for modality in sorted({m for p in per for m in p.get(test_set, {})}):
                vals = [p.get(test_set, {}).get(modality, {}).get(matcher, {}).get("accuracy") for p in per]
                if None not in vals:
                    entry["accuracy"][f"{test_set} {modality}"] = _spread(vals)
        js = [shift[t]["js"] for t in runs if t in shift]
        if len(js) == len(runs):
            entry["js"] = _spread(js)
        out[_name(summary, tag)] = entry
    return out


def _spread(values: Sequence[float]) -> dict:
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return {"runs": [float(v) for v in values], "mean": mean, "sd": sd,
            "min": float(min(values)), "max": float(max(values))}


def render_seed_spread(summary: dict) -> List[str]:
    """Markdown lines of the seed-spread table (empty when no system has several seeds)."""
    spread = summary.get("seed_spread") or {}
    if not spread:
        return []
    lines = ["## Seed spread", "", "Systems trained with several seeds (`run.sh --seeds`): each run's "
             "`has_answer` accuracy and JS shift, mean ± sample standard deviation [range]. The claims "
             "above pool the runs of a system.", "", "| System | seeds | measure | runs | mean ± sd [min, max] |",
             "|---|---|---|---|---|"]
    for name, e in spread.items():
        rows = list(e["accuracy"].items()) + ([("JS shift", e["js"])] if "js" in e else [])
        for measure, v in rows:
            fmt = "{:.4f}" if measure == "JS shift" else "{:.1f}"
            runs = ", ".join(fmt.format(x) for x in v["runs"])
            lines.append(f"| {name} | {' '.join(map(str, e['seeds']))} | {measure} | {runs} | "
                         f"{fmt.format(v['mean'])} ± {fmt.format(v['sd'])} [{fmt.format(v['min'])}, "
                         f"{fmt.format(v['max'])}] |")
    return lines + [""]


def _name(summary: dict, tag: str) -> str:
    """Display name; for a system trained with several seeds, its name and the seed count."""
    name = summary.get("system_info", {}).get(tag, {}).get("name", tag)
    runs = replicas(summary, tag)
    return f"{_SEED_SUFFIX.sub('', name)} ({len(runs)} seeds)" if len(runs) > 1 else name


def _acc(summary: dict, tag: Optional[str], test_set: str, modality: str, matcher: str) -> Optional[float]:
    """Accuracy of ``tag`` (the mean over its :func:`replicas`), or ``None`` if one is missing."""
    accs = []
    for t in replicas(summary, tag):
        score = summary.get("systems", {}).get(t, {}).get(test_set, {}).get(modality)
        if score is None:
            return None
        accs.append(float(score[matcher]["accuracy"]))
    return sum(accs) / len(accs) if accs else None


#: test sets whose name ends so are speaker-disjoint repeats of another set's questions
UNSEEN_SUFFIX = "_unseen"


def _test_sets(summary: dict, unseen: bool = False) -> List[str]:
    """The run's in-voice test sets, or with ``unseen`` its speaker-disjoint ones.

    A claim pools one kind only: an unseen set asks its in-voice set's questions again.
    """
    sets = {s for per in summary.get("systems", {}).values() for s in per}
    return sorted(s for s in sets if s.endswith(UNSEEN_SUFFIX) == unseen)


def _outcomes(summary: dict, tag: str, modality: str, matcher: str, unseen: bool = False
              ) -> Optional[List[float]]:
    """Per-question outcomes of a system over the test sets (in set order): 1/0, or with
    several training seeds the share of its runs that answer right; ``None`` if missing."""
    runs = []
    for t in replicas(summary, tag):
        per = summary.get("correct", {}).get(t, {})
        out: List[float] = []
        for s in _test_sets(summary, unseen):
            bits = per.get(s, {}).get(modality, {}).get(matcher)
            if bits is None:
                return None
            out.extend(float(c == "1") for c in bits)
        runs.append(out)
    if not runs or len({len(r) for r in runs}) != 1:
        return None
    return [sum(q) / len(runs) for q in zip(*runs)]


@dataclass
class Comparison:
    """Two systems' accuracies per test set and, with per-question outcomes, a paired test."""

    shown: List[str]  # "set: a vs b" per test set
    checks: List[bool]  # the single-number rule per test set (fallback)
    test: Optional[PairedComparison]  # pooled over the test sets

    def verdict(self, claimed_sign: int) -> Verdict:
        """``claimed_sign`` +1: the claim says lhs > rhs; -1: lhs < rhs."""
        if self.test is None:
            return _verdict(self.checks)
        if not self.test.significant(ALPHA):
            return NOISE
        return HOLDS if (self.test.diff > 0) == (claimed_sign > 0) else FAILS

    def describe(self) -> str:
        text = ", ".join(self.shown)
        t = self.test
        if t is not None:
            text += (f" (pooled Δ {t.diff:+.1f} points, 95 % CI [{t.ci_low:+.1f}, {t.ci_high:+.1f}], "
                     f"{t.test} p = {t.p_value:.2g})")
        return text


def _compare(summary: dict, matcher: str, modality: str, lhs_role: str, rhs_role: str,
             better: Callable[[float, float], bool], base_modality: Optional[str] = None,
             unseen: bool = False) -> Optional[Comparison]:
    """The systems of two roles per test set (``better(acc(lhs), acc(rhs))`` is the
    single-number rule) and pooled, over the in-voice test sets (``unseen``: the
    speaker-disjoint ones); ``None`` if a system or a number is missing."""
    lhs, rhs = tag_of(summary, lhs_role), tag_of(summary, rhs_role)
    if lhs is None or rhs is None:
        return None
    shown, checks = [], []
    for s in _test_sets(summary, unseen):
        a = _acc(summary, lhs, s, modality, matcher)
        b = _acc(summary, rhs, s, base_modality or modality, matcher)
        if a is None or b is None:
            return None
        shown.append(f"{s}: {a:.1f} vs {b:.1f}")
        checks.append(better(a, b))
    if not checks:
        return None
    a_out = _outcomes(summary, lhs, modality, matcher, unseen)
    b_out = _outcomes(summary, rhs, base_modality or modality, matcher, unseen)
    test = compare_paired(a_out, b_out) if a_out and b_out and len(a_out) == len(b_out) else None
    return Comparison(shown, checks, test)


def table1_claim(summary: dict) -> Optional[Claim]:
    rows = []
    checks = []
    for name, t in (summary.get("table1") or {}).items():
        for modality, r in t["table"].items():
            top, bottom, rand = r["top"] / r["base"], r["bottom"] / r["base"], r["random"] / r["base"]
            rows.append(f"{name} {modality}: top ×{top:.3g}, bottom ×{bottom:.3g}, random ×{rand:.3g}")
            checks.append(top >= 10 and bottom <= 1.1 and bottom <= rand <= top)
    if not rows:
        return None
    return ("§2.2, Table 1: removing the top-3 % weights explodes PPL (≥ 10× base), the bottom 3 % "
            "barely matters (≤ 1.1×), random 3 % lies between", "; ".join(rows), _verdict(checks))


def clustering_claim(summary: dict) -> Optional[Claim]:
    base = (summary.get("analysis") or {}).get("rank_clustering", {}).get("base", {}).get("all")
    if not base:
        return None
    if "null_hi" not in base:  # a summary from before the seeded null baselines
        return ("§2.3.1, Fig. 1: important weights cluster along rows and columns (concentration ratio > 1)",
                f"base: ratio {base['ratio']:.2f} over {base['n_matrices']} matrices", _verdict([base["ratio"] > 1]))
    return ("§2.3.1, Fig. 1: important weights cluster along rows and columns (concentration ratio above "
            "the 97.5 % point of its random-mask null)",
            f"base: ratio {base['ratio']:.2f} over {base['n_matrices']} matrices; null of {base.get('n_null', '?')} "
            f"random masks {base['null_lo']:.2f}-{base['null_hi']:.2f}, P(null ≥ ratio) {base['p_null']:.2f}",
            _verdict([base["ratio"] > base["null_hi"]]))


def peak_layers(curve: Sequence[float], fraction: float = 0.25) -> List[int]:
    """The base's most important layers: the top ``fraction`` of layers by importance."""
    k = max(1, round(fraction * len(curve)))
    return sorted(sorted(range(len(curve)), key=lambda i: -curve[i])[:k])


def _ranges(idx: Sequence[int]) -> str:
    """[0, 10, 11, 12, 29] → "0, 10–12, 29"."""
    out, start = [], None
    for j, i in enumerate(idx):
        if start is None:
            start = i
        if j + 1 == len(idx) or idx[j + 1] != i + 1:
            out.append(f"{start}" if start == i else f"{start}–{i}")
            start = None
    return ", ".join(out)


def _share(curve: Sequence[float], layers: Sequence[int]) -> float:
    total = sum(curve)
    return sum(curve[i] for i in layers) / total if total else 0.0


def shift_claim(summary: dict) -> Optional[Claim]:
    a = summary.get("analysis") or {}
    tag = tag_of(summary, "full_ft")
    m, curves = a.get("shift", {}).get(tag), a.get("curves", {})
    if m is None or "base" not in curves or tag not in curves:
        return None
    peak = peak_layers(curves["base"])
    before, after = _share(curves["base"], peak), _share(curves[tag], peak)
    shown = (f"JS {m['js']:.4f}, Pearson {m['pearson']:.3f}, peak {m['peak_move']:+d} layers, mass ×"
             f"{m['mass_ratio']:.2f}; share of the base's top-quarter layers ({_ranges(peak)}) "
             f"{100 * before:.1f} % → {100 * after:.1f} %")
    return ("§2.3.2, Fig. 2: Full-FT shifts the layer-wise textual importance; the layers the base relies "
            "on most lose relative importance", shown,
            _verdict([m["js"] > 0 and m["pearson"] < 0.99, after < before]))


#: the two readings of the paper's T2T column, each checked on its own when decoded: the
#: transcript in the speech LLM's prompt (``text``), or in the LLM's own chat template
#: with no system prompt of ours (``chat``: the text LLM as its users query it)
T2T_READINGS = (("text", "T2T"), ("chat", "T2T (own chat template)"))


def _mitigation_claim(summary: dict, matcher: str, modality: str, claim: str) -> Optional[Claim]:
    """Layer-LR and LoRA each against Full-FT, ``modality`` accuracy at least as high."""
    full = _name(summary, tag_of(summary, "full_ft"))
    shown, verdicts = [], []
    for role in ("layer_lr", "lora"):
        c = _compare(summary, matcher, modality, role, "full_ft", lambda a, b: a >= b)
        if c:
            shown.append(f"{_name(summary, tag_of(summary, role))} vs {full}: {c.describe()}")
            verdicts.append(c.verdict(+1))
    return (claim, "; ".join(shown), _combine(verdicts)) if verdicts else None


def accuracy_claims(summary: dict, matcher: str) -> List[Claim]:
    """Table 2 and §3.2, for each decoded T2T reading (:data:`T2T_READINGS`) and S2T."""
    out: List[Optional[Claim]] = []
    for modality, t2t in T2T_READINGS:
        c = _compare(summary, matcher, modality, "full_ft", "base", lambda a, b: a < b)
        if c:
            out.append((f"Table 2: full speech fine-tuning lowers {t2t} accuracy below No-FT (Full-FT vs No-FT)",
                        c.describe(), c.verdict(-1)))
        out.append(_mitigation_claim(summary, matcher, modality,
                                     f"Table 2: Layer-LR and LoRA keep more {t2t} accuracy than Full-FT"))
    out.append(_mitigation_claim(summary, matcher, "speech",
                                 "Table 2: Layer-LR and LoRA reach higher S2T accuracy than Full-FT"))
    s = _compare(summary, matcher, "speech", "lora", "layer_lr", lambda a, b: a >= b)
    for modality, t2t in T2T_READINGS:
        t = _compare(summary, matcher, modality, "layer_lr", "lora", lambda a, b: a >= b)
        if t and s:
            out.append((f"§3.2: trade-off: Layer-LR has the higher {t2t}, LoRA the higher S2T",
                        f"{t2t} Layer-LR vs LoRA: {t.describe()}; S2T LoRA vs Layer-LR: {s.describe()}",
                        _combine([t.verdict(+1), s.verdict(+1)])))
    return [c for c in out if c is not None]


def cascade_claim(summary: dict, matcher: str, unseen: bool = False) -> Optional[Claim]:
    """Ours: end-to-end S2T of the mitigated systems against the ASR cascade, on the
    in-voice test sets or (``unseen``) the speaker-disjoint ones."""
    shown, verdicts = [], []
    for role in ("layer_lr", "lora"):
        c = _compare(summary, matcher, "speech", role, "cascade", lambda a, b: a >= b, unseen=unseen)
        if c:
            shown.append(f"{_name(summary, tag_of(summary, role))} vs cascade: {c.describe()}")
            verdicts.append(c.verdict(+1))
    if not verdicts:
        return None
    voices = "voices never heard in training" if unseen else "the training voices"
    return ("Ours (not a paper claim): the end-to-end speech LLM (Layer-LR, LoRA) answers from speech "
            f"at least as well as the ASR cascade of the same weights, in {voices}",
            "; ".join(shown), _combine(verdicts))


def mitigation_shift_claim(summary: dict) -> Optional[Claim]:
    shift = (summary.get("analysis") or {}).get("shift", {})
    full = tag_of(summary, "full_ft")
    others = [t for t in (tag_of(summary, "layer_lr"), tag_of(summary, "lora")) if t in shift]
    if full not in shift or not others:
        return None
    def js(tag: str) -> float:  # the mean over the system's training runs that were analysed
        runs = [shift[t]["js"] for t in replicas(summary, tag) if t in shift]
        return sum(runs) / len(runs)

    shown = [f"{_name(summary, full)} {js(full):.4f}"]
    checks = []
    for tag in others:
        shown.append(f"{_name(summary, tag)} {js(tag):.4f}")
        checks.append(js(tag) < js(full))
    return ("§3.3.1, Fig. 3: Layer-LR and LoRA shift the importance distribution less than Full-FT (JS)",
            "JS: " + ", ".join(shown), _verdict(checks))


def change_claim(summary: dict) -> Optional[Claim]:
    change = (summary.get("analysis") or {}).get("change", {})
    ratio = {t: c["concentration"]["all"]["ratio"] for t, c in change.items()
             if c.get("concentration", {}).get("all")}
    full, lora = tag_of(summary, "full_ft"), tag_of(summary, "lora")
    if full not in ratio or lora not in ratio:
        return None
    shown = ", ".join(f"{t} {r:.2f}" for t, r in ratio.items())
    return ("§3.3.2, Fig. 4: LoRA's updates are more row/column-clustered than Full-FT's",
            f"Δθ concentration ratio: {shown}", _verdict([ratio[lora] > ratio[full]]))


def paper_claims(summary: dict, matcher: str = "has_answer") -> List[Claim]:
    """Every claim that this summary has the numbers for, in the paper's order."""
    claims: List[Optional[Claim]] = [table1_claim(summary), clustering_claim(summary), shift_claim(summary)]
    claims += accuracy_claims(summary, matcher)
    claims += [mitigation_shift_claim(summary), change_claim(summary), cascade_claim(summary, matcher),
               cascade_claim(summary, matcher, unseen=True)]
    return [c for c in claims if c is not None]


def render_claims(summary: dict, matcher: str = "has_answer") -> List[str]:
    """Markdown lines of the claims table (empty when nothing can be checked)."""
    claims = paper_claims(summary, matcher)
    if not claims:
        return []
    counts: Dict[str, int] = {}
    for _, _, v in claims:
        counts[v] = counts.get(v, 0) + 1
    lines = ["## The paper's claims in this miniature", "",
             "| Claim (paper) | This run | Verdict |", "|---|---|---|"]
    lines += [f"| {c} | {shown} | **{v}** |" for c, shown, v in claims]
    paired = bool(summary.get("correct"))
    seeds = ("; for a system trained with several seeds, the sign-flip permutation test on each "
             "question's share of right runs") if any(len(replicas(summary, t)) > 1
                                                      for t in summary.get("system_info", {})) else ""
    rule = (f"Accuracy claims: McNemar's exact test over the pooled test questions (α = {ALPHA}{seeds}) "
            "with a 95 % paired-bootstrap interval of the difference; *within noise* means p ≥ α."
            if paired else "Accuracy claims compare single accuracies per test set (no per-question outcomes "
            "in this summary), so they say nothing about noise.")
    lines += ["", f"Accuracies with `{matcher}`. " + ", ".join(f"{n} {v}" for v, n in counts.items())
              + f". {rule} The rules are in `espnet_ext/eval/claims.py`.", ""]
    return lines
