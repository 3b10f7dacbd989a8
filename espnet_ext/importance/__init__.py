"""The paper's analytical framework (§2): parameter importance and what it shows.

* ``params``     — which parameters are scored (LLM transformer layers by default) and how
                   names map to layers and module types;
* ``scoring``    — eq. (2), I = |θ ⊙ Σ_b ∂L_b/∂θ| over a data subset (no optimizer step);
* ``report``     — safetensors scores + JSON summary (I_layer of eq. 3, per-module sums,
                   thresholds, provenance), atomically written and checked on load;
* ``threshold``  — exact top/bottom-p % thresholds without sorting (two histogram passes);
* ``deactivate`` — Table 1: zero the top/bottom/random p %, measure perplexity, restore bit-exactly.
"""
