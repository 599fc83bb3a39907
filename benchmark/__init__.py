"""kdbench: the harness (data, models, trainer, ledger, CLI) of the KD benchmark suite."""

__version__ = "0.1.0"
