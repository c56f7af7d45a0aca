"""benchmarks/hub_checkpoints/hub_report.py: the steady-state rates its table reports, and its
row of a train-step profile."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "hub_checkpoints"))
from hub_report import profile_rows, steady_rates, sync_lines


def test_steady_rates_leave_out_the_first_step_and_weight_the_others_by_their_time():
    """Steps of 13, 4 and 4 s at 2, 8 and 6 samples/s and 40, 100, 120 TFLOP/s: steps 2-3 did
    32 + 24 samples and 400 + 480 TFLOP in 8 s."""
    timing = {"samples_per_s": 4.0, "model_tflops_per_s": 70.0,
              "per_step": {"seconds": [13.0, 4.0, 4.0], "samples_per_s": [2.0, 8.0, 6.0],
                           "model_tflops_per_s": [40.0, 100.0, 120.0]}}
    assert steady_rates(timing) == (pytest.approx(7.0), pytest.approx(110.0))


def test_one_step_gives_the_overall_rates_and_uncounted_flops_stay_unknown():
    one = {"samples_per_s": 1.7, "model_tflops_per_s": 26.5,
           "per_step": {"seconds": [18.9], "samples_per_s": [1.7], "model_tflops_per_s": [26.5]}}
    assert steady_rates(one) == (1.7, 26.5)
    uncounted = {"per_step": {"seconds": [5.0, 2.0], "samples_per_s": [4.0, 16.0], "model_tflops_per_s": [None, None]}}
    assert steady_rates(uncounted) == (16.0, None)


def test_a_profiles_row_averages_the_profiled_steps_only(tmp_path):
    """Steps of 9, 2 and 3 s at 10, 180 and 220 TFLOP/s, the last two profiled: 2.5 s a step and
    (360 + 660) / 5 = 204 TFLOP/s, 0.255 of an 800 TFLOP/s card; 12 waits for the device over two
    steps; without CUDA's count, the 3 + 2 reads on the host a step; torch's AdamW shows no update kind."""
    report = {"batch_size": 16, "grad_accum": 1, "pad_to_multiple_of": 64, "optimizer_compiled": True,
              "fused_kernels": "liger", "peak_gpu_memory_gib": 66.8, "profiled_steps": 2,
              "steps": [{"seconds": s, "model_tflops": t} for s, t in ((9.0, 10.0), (2.0, 180.0), (3.0, 220.0))],
              "optimizer_s": [4.0, 0.2, 0.3],
              "profile": {"gpu_busy_share": 0.79, "host_sync_calls": {"aten::_local_scalar_dense": 6,
                                                                      "aten::nonzero": 4,
                                                                      "cudaStreamSynchronize": 12}}}
    (tmp_path / "profile-8b-mb16.json").write_text(json.dumps(report))
    assert profile_rows(tmp_path, 800.0) == [["8b-mb16", "16 x 1", 64, "compiled", "liger", "-", "2.50", "204.0",
                                              "0.255", "0.25", 0.79, "6", 66.8]]
    del report["profile"]["host_sync_calls"]["cudaStreamSynchronize"]
    report["profile"]["sync_sources"] = []
    (tmp_path / "profile-8b-mb16.json").write_text(json.dumps({**report, "optimizer_compiled": None,
                                                               "host_positions": False}))
    [row] = profile_rows(tmp_path, 800.0)
    assert row[3] == "-" and row[5] == "device" and row[6] == "2.50 (stacks)" and row[11] == "5"


def test_sync_lines_name_each_source_per_profiled_step(tmp_path):
    """Two profiled steps, 12 reads from one source: 6 a step, named by its frames; a profile made
    without --stacks adds nothing."""
    source = {"name": "aten::nonzero", "calls": 12, "stack": ["m.py(3): deepstack", "m.py(9): forward", "x.py(1): y"]}
    (tmp_path / "profile-a.json").write_text(json.dumps({"profiled_steps": 2, "profile": {"sync_sources": [source]}}))
    (tmp_path / "profile-b.json").write_text(json.dumps({"profiled_steps": 2, "profile": {}}))
    assert sync_lines(tmp_path) == ["\na: host reads a step, by source",
                                    "- 6 `aten::nonzero` <- m.py(3): deepstack <- m.py(9): forward <- x.py(1): y"]
