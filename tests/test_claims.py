"""The paper's claims checked against a summary (espnet_ext/eval/claims.py), hand-made numbers."""

from __future__ import annotations

from espnet_ext.eval.claims import (
    FAILS,
    HOLDS,
    NOISE,
    PARTLY,
    paper_claims,
    peak_layers,
    render_claims,
    render_seed_spread,
    replicas,
    seed_spread,
)


def _score(acc: float) -> dict:
    return {"has_answer": {"accuracy": acc}, "contain": {"accuracy": acc}, "n": 100}


def _summary() -> dict:
    acc = {  # (llamaq T2T, llamaq S2T, webq T2T, webq S2T)
        "noft": (50.0, None, 40.0, None),
        "full": (45.0, 10.0, 41.0, 5.0),      # T2T: lower on llamaq only
        "layerlr": (48.0, 12.0, 42.0, 6.0),   # better than full everywhere
        "lora": (47.0, 14.0, 40.0, 4.0),      # T2T webq and S2T webq below full
    }
    systems = {}
    for tag, (lt, ls, wt, ws) in acc.items():
        systems[tag] = {"llamaq": {"text": _score(lt)}, "webq": {"text": _score(wt)}}
        if ls is not None:
            systems[tag]["llamaq"]["speech"] = _score(ls)
            systems[tag]["webq"]["speech"] = _score(ws)
    return {
        "systems": systems,
        "system_info": {"noft": {"name": "No-FT", "role": "base"}, "full": {"name": "Full-FT", "role": "full_ft"},
                        "layerlr": {"name": "Layer-LR", "role": "layer_lr"},
                        "lora": {"name": "LoRA", "role": "lora", "lora_rank": 8}},
        "table1": {"base": {"table": {"text": {"base": 3.0, "top": 3e8, "bottom": 3.1, "random": 15.0}}},
                   "full": {"table": {"text": {"base": 1.5, "top": 1.0, "bottom": 1.5, "random": 7.0}}}},
        "analysis": {
            "rank_clustering": {"base": {"all": {"ratio": 3.2, "n_matrices": 210}}},
            "curves": {"base": [1.0, 1.0, 2.0, 2.0], "full": [2.0, 2.0, 1.0, 1.0],
                       "layerlr": [1.0, 1.0, 2.0, 2.0], "lora": [1.0, 1.0, 2.0, 2.0]},
            "shift": {"full": {"js": 0.05, "pearson": -1.0, "peak_move": -2, "mass_ratio": 0.5},
                      "layerlr": {"js": 0.01, "pearson": 0.9, "peak_move": 0, "mass_ratio": 0.9},
                      "lora": {"js": 0.08, "pearson": 0.5, "peak_move": 0, "mass_ratio": 0.9}},
            "change": {"full": {"concentration": {"all": {"ratio": 2.0}}},
                       "lora": {"concentration": {"all": {"ratio": 5.0}}}},
        },
    }


def test_every_claim_verdict_by_hand():
    claims = {c[0].split(":")[0]: (c[1], c[2]) for c in paper_claims(_summary())}
    # Table 1: base row holds (x1e8, x1.03, x5), full row's top is *below* base -> partly
    shown, verdict = claims["§2.2, Table 1"]
    assert verdict == PARTLY and "base text: top ×1e+08, bottom ×1.03, random ×5" in shown
    assert claims["§2.3.1, Fig. 1"][1] == HOLDS
    # base top quarter = layer 2 (first of the tied maxima): 2/6 = 33.3 % -> 1/6 = 16.7 %
    shown, verdict = claims["§2.3.2, Fig. 2"]
    assert verdict == HOLDS and "(2) 33.3 % → 16.7 %" in shown
    table2 = [c for c in paper_claims(_summary()) if c[0].startswith("Table 2")]
    # Full-FT < No-FT T2T on llamaq (45 < 50) but not webq (41 > 40) -> partly
    assert table2[0][2] == PARTLY and "llamaq: 45.0 vs 50.0" in table2[0][1]
    # T2T >= Full-FT: layerlr 48>=45, 42>=41; lora 47>=45, 40<41 -> partly
    assert table2[1][2] == PARTLY
    # S2T >= Full-FT: layerlr 12>=10, 6>=5; lora 14>=10, 4<5 -> partly
    assert table2[2][2] == PARTLY
    # trade-off: T2T layerlr>=lora (48>=47, 42>=40), S2T lora>=layerlr (14>=12, 4<6) -> partly
    assert claims["§3.2"][1] == PARTLY
    # JS: layerlr 0.01 < 0.05 but lora 0.08 > 0.05 -> partly
    assert claims["§3.3.1, Fig. 3"][1] == PARTLY
    assert claims["§3.3.2, Fig. 4"][1] == HOLDS


def test_missing_numbers_leave_claims_out():
    s = _summary()
    del s["systems"]["lora"], s["systems"]["layerlr"]
    s["analysis"] = {}
    s["table1"] = {}
    names = [c[0] for c in paper_claims(s)]
    assert len(names) == 1 and names[0].startswith("Table 2: full speech fine-tuning")
    s["systems"]["full"]["llamaq"]["text"] = _score(60.0)
    s["systems"]["full"]["webq"]["text"] = _score(60.0)
    assert paper_claims(s)[0][2] == FAILS
    assert render_claims({"systems": {}}) == []
    lines = render_claims(s)
    assert lines[0] == "## The paper's claims in this miniature" and "**does not hold**" in lines[4]


def test_peak_layers():
    assert peak_layers([0.1, 0.5, 0.2, 0.9, 0.3, 0.0, 0.0, 0.4]) == [1, 3]  # top 2 of 8
    assert peak_layers([1.0, 1.0, 1.0]) == [0]
    from espnet_ext.eval.claims import _ranges

    assert _ranges([0, 10, 11, 12, 29]) == "0, 10–12, 29" and _ranges([3]) == "3"


# --------------------------------------------------------------------------------------
# rule boundaries and the paired tests
# --------------------------------------------------------------------------------------
def _table1(top: float, bottom: float, rand: float) -> dict:
    return {"full": {"table": {"text": {"base": 2.0, "top": 2.0 * top, "bottom": 2.0 * bottom,
                                        "random": 2.0 * rand}}}}


def test_table1_rule_at_its_boundaries():
    from espnet_ext.eval.claims import table1_claim

    assert table1_claim({"table1": _table1(10.0, 1.1, 5.0)})[2] == HOLDS  # exactly 10x and 1.1x
    assert table1_claim({"table1": _table1(9.99, 1.1, 5.0)})[2] == FAILS
    assert table1_claim({"table1": _table1(10.0, 1.11, 5.0)})[2] == FAILS
    assert table1_claim({"table1": _table1(10.0, 1.0, 10.0)})[2] == HOLDS  # random == top: between
    assert table1_claim({"table1": _table1(10.0, 1.05, 1.0)})[2] == FAILS  # random below bottom


def test_single_number_rule_ties_count_as_kept():
    s = _summary()  # no per-question outcomes: the per-set single-number rule
    for tag in ("layerlr", "lora"):
        s["systems"][tag] = s["systems"]["full"]
    table2 = {c[0]: c[2] for c in paper_claims(s)}
    assert table2["Table 2: Layer-LR and LoRA keep more T2T accuracy than Full-FT"] == HOLDS  # a >= b
    assert "no per-question outcomes" in "\n".join(render_claims(s))


def _bits(n_right: int, n: int = 20, offset: int = 0) -> str:
    return "".join("1" if (i - offset) % n < n_right else "0" for i in range(n))


def _paired_summary(outcomes: dict, matcher: str = "has_answer") -> dict:
    """One test set; ``outcomes`` maps tag -> (T2T bits, S2T bits or None)."""
    roles = {"noft": "base", "cascade": "cascade", "full": "full_ft", "layerlr": "layer_lr", "lora": "lora"}
    systems, correct = {}, {}
    for tag, (text, speech) in outcomes.items():
        per = {"text": text} if speech is None else {"text": text, "speech": speech}
        systems[tag] = {"q": {m: {"has_answer": {"accuracy": 100 * b.count("1") / len(b)},
                                  "contain": {"accuracy": 100 * b.count("1") / len(b)}, "n": len(b)}
                              for m, b in per.items()}}
        correct[tag] = {"q": {m: {"has_answer": b, "contain": b} for m, b in per.items()}}
    return {"systems": systems, "correct": correct,
            "system_info": {t: {"name": t, "role": roles[t]} for t in outcomes}}


def test_paired_verdicts_hold_noise_and_fail_by_hand():
    # Full-FT loses 10 of No-FT's 20 right answers and gains none: McNemar p = 2 / 2^10
    s = _paired_summary({"noft": ("1" * 20 + "0" * 20, None), "full": ("1" * 10 + "0" * 30, "0" * 40)})
    (claim, shown, verdict), = paper_claims(s)
    assert claim.startswith("Table 2: full speech fine-tuning lowers T2T") and verdict == HOLDS
    assert "q: 25.0 vs 50.0" in shown and "pooled Δ -25.0 points" in shown and "p = 0.002" in shown
    # 3 lost, 1 gained: p = 2 * (1 + 4) / 16 = 0.625 -> within noise
    s = _paired_summary({"noft": ("1110" + "0" * 16, None), "full": ("0001" + "0" * 16, None)})
    assert paper_claims(s)[0][2] == NOISE
    # the other way round, significantly: does not hold
    s = _paired_summary({"noft": ("0" * 20, None), "full": ("1" * 10 + "0" * 10, None)})
    assert paper_claims(s)[0][2] == FAILS
    # identical answers: p = 1, within noise (a tie is not evidence either way)
    s = _paired_summary({"noft": (_bits(7), None), "full": (_bits(7), _bits(2))})
    assert paper_claims(s)[0][2] == NOISE


def test_every_accuracy_claim_can_fail_and_contain_is_used():
    right, wrong = "1" * 12 + "0" * 8, "0" * 20
    s = _paired_summary({
        "noft": (wrong, None), "cascade": (wrong, right),
        "full": (right, right),          # T2T above No-FT: claim 4 fails
        "layerlr": (wrong, wrong),       # below Full-FT on both: claims 5 and 6 fail
        "lora": (wrong, wrong),
    })
    verdicts = {c[0]: c[2] for c in paper_claims(s)}
    assert verdicts["Table 2: full speech fine-tuning lowers T2T accuracy below No-FT (Full-FT vs No-FT)"] == FAILS
    assert verdicts["Table 2: Layer-LR and LoRA keep more T2T accuracy than Full-FT"] == FAILS
    assert verdicts["Table 2: Layer-LR and LoRA reach higher S2T accuracy than Full-FT"] == FAILS
    assert verdicts["§3.2: trade-off: Layer-LR has the higher T2T, LoRA the higher S2T"] == NOISE  # identical
    ours = next(v for c, v in verdicts.items() if c.startswith("Ours"))
    assert ours == FAILS  # both far below the cascade
    # the trade-off fails when both orders are significantly the wrong way
    s["correct"]["layerlr"]["q"]["text"]["has_answer"] = wrong
    s["correct"]["lora"]["q"]["text"]["has_answer"] = right
    s["correct"]["lora"]["q"]["speech"]["has_answer"] = wrong
    s["correct"]["layerlr"]["q"]["speech"]["has_answer"] = right
    assert {c[0]: c[2] for c in paper_claims(s)}["§3.2: trade-off: Layer-LR has the higher T2T, LoRA the higher S2T"] \
        == FAILS
    # the contain matcher reads its own outcomes
    s["correct"]["full"]["q"]["text"]["contain"] = wrong
    assert paper_claims(s, matcher="contain")[0][2] == NOISE  # full == noft under contain
    assert paper_claims(s, matcher="has_answer")[0][2] == FAILS


def test_shift_and_change_claims_can_fail():
    s = _summary()
    s["analysis"]["shift"]["layerlr"]["js"] = s["analysis"]["shift"]["lora"]["js"] = 0.06
    s["analysis"]["change"]["lora"]["concentration"]["all"]["ratio"] = 1.0
    s["analysis"]["curves"]["full"] = [1.0, 1.0, 2.0, 2.0]
    s["analysis"]["shift"]["full"]["pearson"] = 1.0
    s["analysis"]["rank_clustering"]["base"]["all"]["ratio"] = 1.0
    claims = {c[0].split(":")[0]: c[2] for c in paper_claims(s)}
    assert claims["§3.3.1, Fig. 3"] == FAILS and claims["§3.3.2, Fig. 4"] == FAILS
    assert claims["§2.3.2, Fig. 2"] == FAILS and claims["§2.3.1, Fig. 1"] == FAILS


def test_combined_verdicts():
    from espnet_ext.eval.claims import _combine

    assert _combine([HOLDS, HOLDS]) == HOLDS and _combine([NOISE]) == NOISE
    assert _combine([HOLDS, NOISE]) == PARTLY and _combine([HOLDS, FAILS]) == PARTLY
    assert _combine([NOISE, FAILS]) == FAILS  # nothing holds, one is significantly the wrong way
    assert _combine([PARTLY, NOISE]) == PARTLY


def test_clustering_claim_needs_the_ratio_above_its_random_null():
    # seeded random baselines give the null range of the ratio: above 1 is not enough
    s = _summary()
    base = s["analysis"]["rank_clustering"]["base"]["all"]
    base.update({"ratio": 1.1, "null_lo": 0.85, "null_hi": 1.2, "p_null": 0.2, "n_null": 20})
    claim = next(c for c in paper_claims(s) if c[0].startswith("§2.3.1"))
    assert claim[2] == FAILS and "null of 20 random masks 0.85-1.20" in claim[1]
    base.update({"ratio": 1.5, "p_null": 0.0})
    assert next(c for c in paper_claims(s) if c[0].startswith("§2.3.1"))[2] == HOLDS


def test_each_t2t_reading_gets_its_own_rows():
    """The speech-LLM prompt (text) and the LLM's own chat template (chat) are judged apart:
    here Full-FT gains over No-FT in the first reading and loses in the second."""
    s = _paired_summary({"noft": ("0" * 20, None), "full": ("1" * 10 + "0" * 10, "0" * 20)})
    chat = {"noft": "1" * 12 + "0" * 8, "full": "1" * 2 + "0" * 18}  # Full-FT loses 10, gains 0
    for tag, bits in chat.items():
        s["systems"][tag]["q"]["chat"] = {m: {"accuracy": 100 * bits.count("1") / 20} for m in ("has_answer",
                                                                                               "contain")}
        s["correct"][tag]["q"]["chat"] = {"has_answer": bits, "contain": bits}
    verdicts = {c[0]: (c[1], c[2]) for c in paper_claims(s)}
    assert verdicts["Table 2: full speech fine-tuning lowers T2T accuracy below No-FT (Full-FT vs No-FT)"][1] == FAILS
    shown, verdict = verdicts["Table 2: full speech fine-tuning lowers T2T (own chat template) accuracy below "
                              "No-FT (Full-FT vs No-FT)"]
    assert verdict == HOLDS and "q: 10.0 vs 60.0" in shown and "p = 0.002" in shown


def test_several_seeds_are_pooled_per_question_and_their_spread_recorded():
    """Two Full-FT runs (seeds 0 and 1): each question's outcome is the share of right runs,
    the test is the sign-flip test on those shares, and the spread is recorded."""
    s = _paired_summary({"noft": ("1111" + "0" * 4, None), "full": ("1100" + "0" * 4, None)})
    seed1 = _paired_summary({"full": ("1000" + "0" * 4, None)})
    for key in ("systems", "correct"):
        s[key]["full_seed1"] = seed1[key]["full"]
    s["system_info"]["full"] = {"name": "Full-FT (seed 0)", "role": "full_ft", "seed": 0}
    s["system_info"]["full_seed1"] = {"name": "Full-FT (seed 1)", "role": "full_ft", "seed": 1}
    assert replicas(s, "full") == ["full", "full_seed1"] and replicas(s, "noft") == ["noft"]
    (claim, shown, verdict), = paper_claims(s)
    # per question: noft 1,1,1,1 vs full 1, 0.5, 0, 0 -> differences -0.5, -1, -1 (3 nonzero):
    # |sum| = 2.5 reached by the 2 all-same sign patterns of 8 -> p = 0.25; means 50.0 vs 18.75
    assert "q: 18.8 vs 50.0" in shown and "sign-flip p = 0.25" in shown and verdict == NOISE
    s["analysis"] = {"shift": {"full": {"js": 0.01}, "full_seed1": {"js": 0.03}}}
    spread = seed_spread(s)
    e = spread["Full-FT (2 seeds)"]
    assert e["seeds"] == [0, 1] and e["accuracy"]["q text"]["runs"] == [25.0, 12.5]
    assert e["accuracy"]["q text"]["mean"] == 18.75 and abs(e["accuracy"]["q text"]["sd"] - 8.8388) < 1e-4
    assert e["js"]["mean"] == 0.02 and (e["js"]["min"], e["js"]["max"]) == (0.01, 0.03)
    lines = render_seed_spread({**s, "seed_spread": spread})
    assert any("| Full-FT (2 seeds) | 0 1 | q text | 25.0, 12.5 | 18.8 ± 8.8 [12.5, 25.0] |" in ln for ln in lines)
    # a rank ablation is not a seed replica: LoRA r8 and r16 stay apart
    s["system_info"]["lora"] = {"name": "LoRA r8", "role": "lora", "lora_rank": 8}
    s["system_info"]["lora16"] = {"name": "LoRA r16", "role": "lora", "lora_rank": 16}
    assert replicas(s, "lora") == ["lora"]
