"""benchmarks/hub_checkpoints/hub_report.py: the steady-state rates its table reports."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "hub_checkpoints"))
from hub_report import steady_rates


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
