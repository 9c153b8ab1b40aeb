"""Engines: where a propose job computes. The local engine is :func:`keypatch.batch.run_propose`
(this process, files decoded ahead in a thread); :mod:`keypatch.engines.ray_data` runs the same
job on a Ray cluster (``engine="ray"``)."""
