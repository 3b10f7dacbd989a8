"""The analysis jobs: they load models and dump dirs and run the maths of
:mod:`espnet_ext.importance`.

* ``score``   — eq. 2 importance of one model plus its Table 1 check (stages 3 and 6);
* ``analyze`` — stage 6: every system on the base report's utterances, Fig. 1–4 and numbers;
* ``compare`` — the same analysis on any Hugging Face causal LMs (a base, fine-tuned folders,
  peft adapters) and text data (an addition: "bring your own checkpoints").
"""
