"""The paper's claims checked against a summary (espnet_ext/eval/claims.py), hand-made numbers."""

from __future__ import annotations

from espnet_ext.eval.claims import FAILS, HOLDS, PARTLY, paper_claims, peak_layers, render_claims


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
