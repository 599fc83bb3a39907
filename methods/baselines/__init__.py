"""Baseline distillation methods (KD, FitNet, CWD, CIRKD, SKD, IFVD, FGD, MGD)."""
