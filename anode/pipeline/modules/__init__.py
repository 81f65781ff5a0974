"""The pipeline's modules, one file per check (``Config`` + ``create``), listed in ``pipeline/registry.py``."""
