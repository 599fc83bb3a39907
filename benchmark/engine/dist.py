"""Distributed helpers: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; NCCL on CUDA, gloo on CPU."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def init_from_env(device: torch.device) -> None:
    """Join the process group when launched by torchrun (no-op for a single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (identity for one process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def sync_batch_norms(module: nn.Module) -> nn.Module:
    """`module` with SyncBatchNorm in place of every plain ``BatchNorm{1,2,3}d``.

    Unlike ``nn.SyncBatchNorm.convert_sync_batchnorm``, subclasses are left alone: a norm that keeps its
    statistics (the detectors' ``bn_eval``, a ``BatchNorm2d`` subclass) would otherwise turn back into one
    that normalises with batch statistics under DDP.
    """
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        module.add_module(name, sync_batch_norms(child))
    return module


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DDP-wrap the trainable unit; plain BatchNorm becomes SyncBN on CUDA (`sync_batch_norms`).

    PyTorch's SyncBatchNorm refuses CPU tensors under DDP, so CPU (gloo) runs keep per-process
    BatchNorm statistics; the run log says so.
    """
    if not dist.is_initialized():
        return module
    if device.type == "cuda":
        module = sync_batch_norms(module)
        return nn.parallel.DistributedDataParallel(module, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(module)


def gather_objects(items: list) -> list:
    """Concatenate a picklable list from every rank, in rank order (itself for one process)."""
    if not dist.is_initialized():
        return items
    parts: list[list | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in (part or [])]
