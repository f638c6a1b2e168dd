"""Where a result came from: the code's commit and the machine, recorded with every eval
run so a report row can be traced back and compared only with its like."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path


@functools.cache
def commit() -> str:
    """`git describe --always --dirty` of the package's checkout (an editable install), else
    the installed version: a wheel carries no commit."""
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=Path(__file__).parent,
                                   capture_output=True, text=True, timeout=10)
        if described.returncode == 0 and described.stdout.strip():
            return described.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"v{metadata.version('cotdistill')}"
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def machine() -> str:
    """The GPU(s) local models run on, else the CPU model and the cores this process may use."""
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            return " + ".join(f"{names.count(n)}x {n}" for n in dict.fromkeys(names))
    except ImportError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{_cpu_model()}, {cores} cores"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"
