"""Fitting the ``ranked`` strategy's patch ranker (``python -m tools.ranker.fit``)."""
