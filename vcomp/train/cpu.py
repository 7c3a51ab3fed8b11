"""CPU host settings that make training on a CPU measurably faster.

Why these three:
- glibc hands every allocation above its mmap threshold straight back to the kernel when it is
  freed, and trims the heap top eagerly. PyTorch's CPU allocator frees a step's activations at
  the end of the step, so the next step page-faults all of them in again: on a 2-core EPYC one
  fp32 forward+backward of the tiny UNet (8 clips x 16 frames) spent 0.5 of its 1.2 s in the
  kernel. Raising both thresholds keeps freed memory in the process: 1.2 -> 0.87 s. (Sampling
  steps, on small tensors, showed no difference in repeated A/B runs; the pipeline leaves it.)
- CPUs with native bf16 (AVX512-BF16, AMX) run oneDNN's bf16 convolutions and matmuls much
  faster than fp32: the same step under bf16 autocast takes 0.64 s.
- Subnormal floats (below 1.2e-38) take a slow microcode path on x86. A prompt-refiner run
  (runs/pr5, 231 k parameters, batch 8 x 4 frames) went from 0.69 to 2.2 s per step at step
  ~450, with the same weights and data each time it was resumed, and back to 0.65 s with
  flush-to-zero (its SiLU outputs had gone subnormal as the run collapsed; see
  vcomp.model.prompt_refiner). Values that small change nothing a model computes, and a run
  that does go wrong that way should not also crawl.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc malloc to keep freed blocks (up to 1 GiB each) instead of returning them to the
    kernel; True when applied. A no-op on other C libraries. Memory the process once held stays
    mapped: peak memory is unchanged, the resident size just does not shrink between steps."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


def prepare_cpu_training(threads: int | None = None) -> None:
    """Host settings for a training process on the CPU: keep freed memory, flush subnormal
    floats to zero, and use `threads` torch threads (None: every core). Process-wide, as
    training owns its process."""
    import os

    import torch

    keep_freed_memory()
    torch.set_flush_denormal(True)
    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpuinfo_has_bf16(cpuinfo: str) -> bool:
    """True when the first `flags` line of a /proc/cpuinfo text lists AVX512-BF16 or AMX-BF16."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


@functools.cache
def native_bf16() -> bool:
    """Does this CPU have bf16 arithmetic (AVX512-BF16 or AMX-BF16)? Read from /proc/cpuinfo
    (Linux; False elsewhere). oneDNN's own check (`torch.ops.mkldnn._is_mkldnn_bf16_supported`)
    also accepts plain AVX-512, where bf16 is emulated and not faster."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return cpuinfo_has_bf16(f.read())
    except OSError:
        return False
