"""Training plumbing under ``SpeechLLMTask``, in the places ESPnet keeps it (``espnet2/train``).

* ``preprocess`` — raw rows into token ids (the ESPnet preprocessor);
* ``collate``    — padding collate function;
* ``batches``    — fixed, length-sorted batches straight from a dump dir (decoding,
                   importance, perplexity: the same utterances for every model);
* ``trainer``    — ESPnet's ``Trainer`` plus the importance probe hook and crash-safe saves;
* ``checkpoint`` — atomic ``torch.save``, the kept previous checkpoint, resume fallback;
* ``probe``      — eq. 2 on a small fixed set during training (``--importance_probe_conf``).
"""
