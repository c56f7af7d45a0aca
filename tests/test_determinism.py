"""Every stage gives the same bytes on every machine, and a colleague's `dvc repro` in a fresh
clone leaves `dvc.lock`, metrics and plots as committed.

A pipeline copy runs on this machine as it is, with PyTorch, MKL and oneDNN told to use its
widest kernels (AVX-512 where it has them), one thread, OpenBLAS's Haswell kernels (FMA); its
results are committed. A fresh clone of it (another folder name, another Python hash seed, other
worker counts) then runs everything again as another machine would: ATen's baseline kernels,
MKL's AVX2 code, oneDNN's AVX2 kernels, three threads, OpenBLAS's Sandybridge kernels (no FMA),
numpy's runtime-dispatched AVX2/AVX-512 loops and libjpeg-turbo's AVX2 code switched off. The
stages pin what decides PyTorch's results (``av_grounding.numerics``), so trained weights,
answers and metrics must come out the same; without the pin, threads and kernels change the
weights from the first steps on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from dvc_workspace import commit_all, dvc, environment, git, lock_outputs, make_workspace, write_params

pytestmark = pytest.mark.slow

FIRST = {"OPENBLAS_CORETYPE": "Haswell", "PYTHONHASHSEED": "1", "ATEN_CPU_CAPABILITY": "avx512",
         "MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "ALL", "OMP_NUM_THREADS": "1",
         "MKL_NUM_THREADS": "1"}
SECOND = {"OPENBLAS_CORETYPE": "Sandybridge", "PYTHONHASHSEED": "2", "ATEN_CPU_CAPABILITY": "default",
          "MKL_ENABLE_INSTRUCTIONS": "AVX2", "MKL_CBWR": "AUTO", "ONEDNN_MAX_CPU_ISA": "AVX2",
          "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "JSIMD_FORCESSE2": "1"}
# The first machine's params (which the clone inherits) also turn format's views on: their JPEGs
# are decoded and encoded again (dataset/views.py), under libjpeg-turbo's AVX2 and SSE2 code.
WORKERS = ({"synthesize": {"num_clips": 3, "workers": 2}, "extract": {"workers": 2},
            "format": {"crop_above_deg": 20.0, "mirror_train": True}},
           {"synthesize": {"workers": 1}, "extract": {"workers": 1}, "transform": {"workers": 1},
            "filter": {"workers": 1}})


def numpy_dispatch() -> list[str]:
    """The SIMD targets numpy dispatches to on this CPU, above its build baseline."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]


def openblas_core(environment: dict[str, str]) -> str:
    """The kernel OpenBLAS picks under ``environment``, as it reports it (OPENBLAS_VERBOSE=2)."""
    result = subprocess.run([sys.executable, "-c", "import numpy"], check=False, capture_output=True, text=True,
                            timeout=60, env={**os.environ, **environment, "OPENBLAS_VERBOSE": "2"})
    return next((line.split(":", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("Core:")),
                "unknown")


def torch_kernels(environment: dict[str, str]) -> str:
    """The ATen kernels PyTorch would pick under ``environment`` if nothing pinned them."""
    result = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                            check=False, capture_output=True, text=True, timeout=120, env={**os.environ, **environment})
    return result.stdout.strip()


def stages(workspace) -> tuple[str, ...]:
    return tuple(yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"])


def test_a_fresh_clone_on_another_kind_of_machine_reproduces_every_output(tmp_path, monkeypatch):
    kinds = {"OpenBLAS": (openblas_core(FIRST), openblas_core(SECOND)),
             "ATen": (torch_kernels(FIRST), torch_kernels(SECOND))}
    for name, value in FIRST.items():
        monkeypatch.setenv(name, value)
    first = make_workspace(tmp_path / "first")
    write_params(first, WORKERS[0])
    dvc(first, "repro")
    commit_all(first, "Results of the first machine")

    for name in FIRST:
        monkeypatch.delenv(name)
    for name, value in {**SECOND, "NPY_DISABLE_CPU_FEATURES": " ".join(numpy_dispatch())}.items():
        monkeypatch.setenv(name, value)
    second = tmp_path / "second-clone"
    git(tmp_path, "clone", "--quiet", str(first), str(second))
    write_params(second, WORKERS[1])
    dvc(second, "repro")

    recorded = [lock_outputs(workspace, stages(first)) for workspace in (first, second)]
    assert all(recorded[0].values()), f"a stage recorded no outputs: {recorded[0]}"
    differing = {stage: (recorded[0][stage], recorded[1][stage]) for stage in recorded[0]
                 if recorded[0][stage] != recorded[1][stage]}
    assert not differing, f"outputs in dvc.lock differ between two kinds of machine {kinds}: {differing}"
    # What a reviewer runs: no warning, no changed metric; git sees only the worker counts.
    diff = subprocess.run([sys.executable, "-m", "dvc", "metrics", "diff", "HEAD"], cwd=second, check=False,
                          capture_output=True, text=True, env=environment(second), timeout=120)
    assert (diff.returncode, diff.stdout, diff.stderr) == (0, "", ""), diff
    assert git(second, "status", "--porcelain").split() == ["M", "dvc.lock", "M", "params.yaml"]
