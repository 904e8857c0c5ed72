"""Training: losses, metrics, learning-rate schedules and the embedding cache.

Submodules are imported where they are used (``samtune.train.losses`` and so on), so importing
the package stays cheap.
"""
