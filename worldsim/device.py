"""Where a world runs: the device, the dtype, and how many CPU threads torch uses.

CPU threads. torch's default uses every core, and its OpenMP threads wait for each other at every
operation; when another program keeps one core busy, each operation waits for the slowest thread
and speed collapses (the shipped tiny bundle on 2 cores: 50 fps idle, 12.6 with one busy process
beside it, 4.6 with two). One thread per two cores leaves room for the rest of the machine: 36 fps
idle, 35 with one busy process, 23 with two (``worldsim bench --blocks 16``, the README has the
table). ``default_threads`` is that policy; every command takes ``--threads N`` to override it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")
MAX_DEFAULT_THREADS = 8  # the models here gain little from more


class DeviceError(ValueError):
    """A device, dtype or thread count that cannot be used here; the message says why."""


def default_threads() -> int:
    """CPU threads for torch: one per two cores this process may use, at least 1, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, cores // 2))


def use_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads (`threads`, or `default_threads()` when None); returns the number set."""
    import torch

    count = default_threads() if threads is None else threads
    if count < 1:
        raise DeviceError(f"threads must be at least 1, not {count}")
    torch.set_num_threads(count)
    return count


def check_device_name(device: str) -> None:
    """Refuse a device name worldsim cannot run on, without importing torch: cpu, cuda or cuda:N only."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") and not kind.isalpha():
        raise DeviceError(f"unknown device {device!r} (use cpu or cuda)")
    if kind not in ("cpu", "cuda"):
        raise DeviceError(f"worldsim runs on cpu or cuda, not {kind!r}")
    if index and (kind == "cpu" or not index.isdigit()):
        raise DeviceError(f"unknown device {device!r} (use cpu, cuda or cuda:N)")


def parse_device(device: str) -> torch.device:
    """A device worldsim can run on: the CPU or an available CUDA GPU; DeviceError otherwise."""
    check_device_name(device)
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"unknown device {device!r} (use cpu or cuda)") from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device} was asked for but this torch build sees no CUDA GPU")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DeviceError(
                f"there is no {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
    elif parsed.type != "cpu":
        raise DeviceError(f"worldsim runs on cpu or cuda, not {parsed.type!r}")
    return parsed


def parse_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of a name in DTYPES; DeviceError otherwise."""
    import torch

    if dtype not in DTYPES:
        raise DeviceError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    parsed: torch.dtype = getattr(torch, dtype)
    return parsed
