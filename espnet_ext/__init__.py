"""speechimp's ESPnet extension.

Pipeline, one sub-package per concept:
``data`` (corpora, demo world, Kaldi dirs, audio) → ``models`` (Whisper encoder,
frame-concat adaptor, HF causal LM, the ESPnet model) → ``tasks`` (SpeechLLMTask:
ESPnet training/inference plumbing) → ``importance`` (paper eq. 2, Table 1, Fig. 1–4) →
``optim`` (eq. 3 layer-wise learning rates) → ``eval`` (QA matching, tables).
``bin`` holds the thin ``python -m`` entry points that ``egs2/speechimp/run.sh`` calls.
"""

__version__ = "0.1.0"
