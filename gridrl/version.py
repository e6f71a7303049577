"""gridrl's version (``gridrl.__version__``), recorded in checkpoints and provenance."""

__version__ = "0.1.0"
