"""Pretrained weights into Hugging Face folders (recipe stage 2).

* ``pretrained``  — materialise ``exp/pretrained/{llm,whisper}`` from a GGUF file, a
                    CTranslate2 folder, an HF folder, a hub id or a ``tiny-random-*`` name;
* ``ct2_whisper`` — the CTranslate2 ``model.bin`` reader and its Whisper converter;
* ``cache``       — conversion markers, so a folder is reused while its source is unchanged;
* ``tiny``        — tiny random Llama/Whisper models saved with ``save_pretrained`` (tests).
"""
