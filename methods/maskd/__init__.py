"""MasKD: masked distillation with receptive tokens."""
