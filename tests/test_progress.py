"""The train stage's progress bar (``loop.ProgressHook``): one update per optimizer step with the
loss and samples/s, the remaining time, starting where a resumed run starts; nothing in CI logs
or files (no terminal), nothing from processes other than rank 0."""

from __future__ import annotations

import io
from types import SimpleNamespace

from av_grounding.training.loop import ProgressHook, StepResult


class Terminal(io.StringIO):
    """What the bar is written to when a person watches: a terminal."""

    def isatty(self) -> bool:
        return True


def drive(stream: io.StringIO, start: int = 0, total: int = 4, rank: int = 0) -> str:
    """Run the hook over steps ``start + 1 .. total`` (4 samples in 0.5 s each); what it wrote."""
    hook, trainer = ProgressHook(stream), SimpleNamespace(rank=rank, total=total, step=start)
    hook.before_train(trainer)
    for step in range(start + 1, total + 1):
        hook.after_step(trainer, StepResult(step, loss=1.0 / step, grad_norm=1.0, lr=1e-3, seconds=0.5, samples=4))
    hook.after_train(trainer)
    return stream.getvalue()


def test_a_terminal_gets_a_bar_per_step_with_loss_rate_and_remaining_time():
    shown = drive(Terminal())
    assert "train: 100%" in shown and "4/4" in shown
    assert "loss 0.2500, 8.00 samples/s" in shown  # the last step's
    assert "<" in shown  # elapsed<remaining


def test_a_resumed_run_starts_the_bar_at_its_checkpoint():
    shown = drive(Terminal(), start=2)
    assert " 2/4" in shown and "1/4" not in shown


def test_logs_and_other_ranks_get_no_bar():
    assert drive(io.StringIO()) == ""
    assert drive(Terminal(), rank=1) == ""
