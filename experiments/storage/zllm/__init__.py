"""zLLM/BitX storage experiment (arXiv:2505.06252): deduplicate and compress a hub of fine-tuned models.

``hub`` generates a reproducible synthetic model hub offline (``generate_hub``); the pipeline modules
deduplicate files and tensors, cluster models into families by bitwise similarity and compress each
fine-tuned tensor against its base (BitX). Importing this package imports nothing heavy (no torch).
"""

__all__ = ["ingest", "restore", "stats"]


def __getattr__(name: str):
    # Resolved on first use so that ``import experiments.storage.zllm`` stays light (PEP 562).
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
