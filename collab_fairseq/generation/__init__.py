"""This package's beam search (``--task translation_fast``): fairseq's search over a fixed batch x beam.

generator.py: StaticBeamGenerator, the SequenceGenerator that fairseq's clients get; beam_search.py: the search;
incremental.py, static_cache.py, cuda_graphs.py: the three ways a step is decoded (the models' own incremental state;
caches allocated once per batch; those steps replayed as CUDA graphs).
"""
