"""Adaptor warm-up, an addition to the paper's recipe: CTC from the adaptor outputs onto
the frozen LLM's input-embedding table (``ctc``), used as ``init_param`` by stage 1."""
