"""External knowledge for the retrieval-augmented (RAG) experts (MedMIX Appendix B).

- :mod:`extractors.knowledge.kb`: MedlinePlus health-topic XML (or the shipped demo KB) -> a
  Parquet knowledge base (``id``, ``title``, ``synonyms``, ``url``, ``text``).
- :mod:`extractors.knowledge.encoders`: MedCPT query/article encoders and the offline MiniLM one.
- :mod:`extractors.knowledge.projection`: the label-free linear map from article embeddings into
  Qwen2's input-embedding space.
- :mod:`extractors.knowledge.index`: the FAISS inner-product index folder (deterministic builds).
- :mod:`extractors.knowledge.bridge`: stage 1, text for non-text inputs (EHR serialisation, report
  generation for CXR / CT / slides).

Nothing here sees labels or splits: the knowledge base is static public text and every step is
a function of the inputs alone.
"""
