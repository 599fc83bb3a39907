"""Tasks: what a run's data, loss and metrics are (segmentation, detection).

The trainer, caches, ledger and tables are task-agnostic; they ask the run's `Task` how to batch samples,
move them to the device, run the student's loss and evaluate it.
"""

from benchmark.tasks.base import Task
from benchmark.tasks.detection import DetectionLoss, DetectionTask
from benchmark.tasks.segmentation import SegmentationTask

__all__ = ["DetectionLoss", "DetectionTask", "SegmentationTask", "Task"]
