"""Benchmarks of the training step: ablation matrices, each row measured in a fresh process.

``dit-repro bench`` (dit_repro.commands.bench) is the entry point. The pieces:

* :mod:`.matrices`   the rows: Table 4, attention backends, compile modes, custom matrices
* :mod:`.plan`       scales (paper on a GPU, smoke on a CPU) and the run end to end
* :mod:`.runner`     worker processes and the sequential / interleaved schedules
* :mod:`.worker`     one row's process (``python -m dit_repro.bench.worker``)
* :mod:`.measure`    warm-up until steady, timed steps, memory, saved activations
* :mod:`.workload`   what a row runs (the trainer's step, or a small matmul step)
* :mod:`.results`, :mod:`.schema`   the results document and its JSON Schema
* :mod:`.baselines`  where measured baselines live, and recording one
* :mod:`.report`     markdown table and plot
"""
