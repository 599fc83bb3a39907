"""Distillation methods: one registry of methods that tap any nn.Module by module name."""
