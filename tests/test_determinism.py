"""The data stages are deterministic: two fresh copies of the repository, in folders of different
names and with different Python hash seeds, record the same output hashes in dvc.lock. Both run
synthesize and extract with two worker processes, so the order in which parallel items finish
must not show in the outputs either."""

from __future__ import annotations

import pytest

from dvc_workspace import DATA_STAGES, dvc, lock_outputs, make_workspace, write_params

pytestmark = pytest.mark.slow

PARALLEL = {"synthesize": {"num_clips": 3, "workers": 2}, "extract": {"workers": 2}}


def test_data_stages_give_identical_outputs_in_two_fresh_copies(tmp_path, monkeypatch):
    recorded = []
    for copy, hash_seed in (("first", "1"), ("second-copy", "2")):
        monkeypatch.setenv("PYTHONHASHSEED", hash_seed)  # set iteration order must not leak into outputs
        workspace = make_workspace(tmp_path / copy)
        write_params(workspace, PARALLEL)
        dvc(workspace, "repro", *DATA_STAGES)
        recorded.append(lock_outputs(workspace, DATA_STAGES))
    first, second = recorded
    assert all(first[stage] for stage in DATA_STAGES), f"a data stage recorded no outputs: {first}"
    differing = {stage: (first[stage], second[stage]) for stage in DATA_STAGES if first[stage] != second[stage]}
    assert not differing, f"output hashes in dvc.lock differ between two runs of the same pipeline: {differing}"
