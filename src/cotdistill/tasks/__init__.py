"""Tasks: where problems come from and what their gold answers are."""

from cotdistill.tasks.problem import Problem
from cotdistill.tasks.registry import BUILTIN, DatasetTask, Task, data_identity, get_task

__all__ = ["BUILTIN", "DatasetTask", "Problem", "Task", "data_identity", "get_task"]
