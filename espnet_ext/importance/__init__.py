"""The paper's analytical framework (§2): parameter importance and what it shows.

* ``params``     — which parameters are scored (LLM transformer layers by default) and how
                   names map to layers and module types;
* ``layout``     — where a Hugging Face decoder keeps its layers and which module type each
                   weight is, found from the model object (Llama, Qwen2, Mistral, Gemma,
                   Phi-3, GPT-NeoX, GPT-2 tables; the recipe's Llama names need none);
* ``scoring``    — eq. (2), I = |θ ⊙ Σ_b ∂L_b/∂θ| over a data subset (no optimizer step);
* ``report``     — safetensors scores + JSON summary (I_layer of eq. 3, per-module sums,
                   thresholds, provenance), atomically written and checked on load;
* ``threshold``  — exact top/bottom-p % thresholds without sorting (sample + filter,
                   histogram fallback);
* ``deactivate`` — Table 1: zero the top/bottom/random p % (each input modality's row by its
                   own modality's importance), measure perplexity, restore bit-exactly;
* ``structure``  — Fig. 1 rank clustering: 3×3 vicinity maps of the top set, a row/column
                   concentration ratio against seeded random sets of equal size (with its
                   null range) and the row/column overlap of two top sets;
* ``shift``      — Fig. 2–3: normalised layer curves, JS divergence / Pearson / peak move / mass ratio;
* ``change``     — Fig. 4: |θ_ft − θ_base| maps (LoRA merged) and their concentration;
* ``sharded_threshold`` — the exact thresholds over scores spread across ranks (radix search
                   over the float32 bits with all-reduced counts; an addition);
* ``sharded``    — eq. 2, Table 1 and the report on an FSDP2-sharded model, each rank
                   holding only its shards (an addition, for paper-scale models);

This package is the maths alone: it imports no task, model-loading or batching code.
The jobs that load models and data sit above it (:mod:`espnet_ext.analysis`), and so
does the training-time probe (:mod:`espnet_ext.train.probe`).
"""
