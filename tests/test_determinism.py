"""The data stages give the same bytes on every machine: two fresh copies of the repository, in
folders of different names, with different Python hash seeds, worker counts, BLAS kernels
(``OPENBLAS_CORETYPE``: Haswell with FMA against Sandybridge without) and numpy SIMD paths
(the second copy with numpy's runtime-dispatched AVX2/AVX-512 loops switched off, as on an older
CPU), record the same output hashes in dvc.lock. Parallel items finishing in another order must
not show in the outputs either."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dvc_workspace import DATA_STAGES, dvc, lock_outputs, make_workspace, write_params

pytestmark = pytest.mark.slow

FIRST = {"OPENBLAS_CORETYPE": "Haswell", "PYTHONHASHSEED": "1"}
SECOND = {"OPENBLAS_CORETYPE": "Sandybridge", "PYTHONHASHSEED": "2"}
WORKERS = ({"synthesize": {"num_clips": 3, "workers": 2}, "extract": {"workers": 2}},
           {"synthesize": {"num_clips": 3, "workers": 1}, "extract": {"workers": 1}})


def numpy_dispatch() -> list[str]:
    """The SIMD targets numpy dispatches to on this CPU, above its build baseline."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]


def openblas_core(environment: dict[str, str]) -> str:
    """The kernel OpenBLAS picks under ``environment``, as it reports it (OPENBLAS_VERBOSE=2)."""
    result = subprocess.run([sys.executable, "-c", "import numpy"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **environment, "OPENBLAS_VERBOSE": "2"})
    return next((line.split(":", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("Core:")),
                "unknown")


def test_data_stages_give_identical_outputs_on_two_kinds_of_machine(tmp_path, monkeypatch):
    cores = [openblas_core(FIRST), openblas_core(SECOND)]
    if cores[0] == cores[1]:
        pytest.skip(f"this CPU or numpy build cannot select two OpenBLAS kernels (got {cores})")
    second = {**SECOND, "NPY_DISABLE_CPU_FEATURES": " ".join(numpy_dispatch())}
    recorded = []
    for copy, environment, workers in (("first", FIRST, WORKERS[0]), ("second-copy", second, WORKERS[1])):
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        workspace = make_workspace(tmp_path / copy)
        write_params(workspace, workers)
        dvc(workspace, "repro", *DATA_STAGES)
        recorded.append(lock_outputs(workspace, DATA_STAGES))
    first, second = recorded
    assert all(first[stage] for stage in DATA_STAGES), f"a data stage recorded no outputs: {first}"
    differing = {stage: (first[stage], second[stage]) for stage in DATA_STAGES if first[stage] != second[stage]}
    assert not differing, (f"output hashes in dvc.lock differ between OpenBLAS {cores[0]} and {cores[1]} "
                           f"(numpy dispatch off), hash seeds and worker counts: {differing}")
