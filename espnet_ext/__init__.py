"""speechimp's ESPnet extension.

The sub-packages follow the pipeline, lowest layer first; a package imports only
packages above it in this list (``tests/test_layers.py`` checks it):

1. ``utils``      — atomic writes, config files and ``*_conf`` checks, precision, logging;
2. ``data``       — Kaldi dirs, audio, corpus converters, the demo world, TTS, feature dumps;
3. ``convert``    — pretrained weights into Hugging Face folders (GGUF, CTranslate2, tiny);
4. ``models``     — Whisper encoder, frame-concat adaptor, HF causal LM, the ESPnet model, LoRA;
5. ``importance`` — the paper's maths (§2): eq. 2 scores, thresholds, Table 1
                    deactivation, rank clustering, layer shift, parameter change, reports;
6. ``optim``      — the mitigations' optimizer side: eq. 3 layer-wise lrs, ImpAnchor, schedulers;
7. ``train``      — batching, collation, the ESPnet trainer and its importance probe hook;
8. ``tasks``      — ``SpeechLLMTask`` (ESPnet ``AbsTask``) and the config composer;
9. ``inference``  — building a model from an exp dir and batched greedy decoding;
10. ``warmup``    — the adaptor CTC warm-up (an addition to the paper's recipe);
11. ``analysis``  — the jobs that load models and data and run the importance maths;
12. ``eval``      — QA matching, tables, claims and RESULTS.md;
13. ``bin``       — the thin ``python -m`` entry points that ``egs2/speechimp/run.sh`` calls.
"""

__version__ = "0.1.0"
