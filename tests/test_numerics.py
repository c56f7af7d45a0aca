"""PyTorch's CPU numerics are pinned whatever the machine's environment asks for, and a caller
that computed a tensor before the pin hears about it (its kernels would be the machine's)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from av_grounding import numerics

PROBE = """
import ctypes, os, torch
from av_grounding import numerics
numerics.pin_torch()
torch.ones(8) @ torch.ones(8)  # a first matrix product: MKL reads its branch now
library = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
branch = library.mkl_serv_cbwr_get(1) if hasattr(library, "mkl_serv_cbwr_get") else "unknown"
print(torch.backends.cpu.get_cpu_capability(), torch.get_num_threads(), torch.backends.mkldnn.enabled, branch)
"""
MKL_CBWR_COMPATIBLE = "3"  # mkl_cbwr.h


def run_python(code: str, environment: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **environment})


def test_the_pin_replaces_what_the_environment_asks_for():
    machine = {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO", "OMP_NUM_THREADS": "7", "MKL_NUM_THREADS": "7"}
    result = run_python(PROBE, machine)
    assert result.returncode == 0, result.stderr
    capability, threads, onednn, branch = result.stdout.split()
    assert (capability, int(threads), onednn) == (numerics.ATEN_CAPABILITY, numerics.CPU_THREADS, "False")
    assert branch in (MKL_CBWR_COMPATIBLE, "unknown"), f"MKL's branch {branch}, not COMPATIBLE"


@pytest.mark.skipif(not torch.cpu._is_avx2_supported(), reason="a CPU without AVX2 has no other kernels to pin")
def test_a_tensor_computed_before_the_pin_is_an_error_not_a_silent_difference():
    code = ("import torch; torch.ones(3).sum()\n"
            "from av_grounding import numerics\nnumerics.pin_torch()")
    result = run_python(code, {"ATEN_CPU_CAPABILITY": "default"})
    assert result.returncode != 0
    assert "NumericsError: PyTorch's CPU kernels were chosen (DEFAULT) before" in result.stderr, result.stderr


def test_this_test_process_runs_the_pinned_kernels():
    """conftest pins before anything computes: exact training outcomes in these tests hold on
    every x86-64 CPU."""
    assert torch.backends.cpu.get_cpu_capability() == numerics.ATEN_CAPABILITY
    assert torch.get_num_threads() == numerics.CPU_THREADS and not torch.backends.mkldnn.enabled
