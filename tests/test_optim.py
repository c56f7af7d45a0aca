"""Stochastic rounding and the AdamW built on it (``training.optim``): the rounding is one of the
two neighbouring bf16 values and exact in expectation; its counter-based noise is the hash a
plain-Python reference computes, uniform and unrelated across rows, steps and parameters, and the
same whether a tensor is updated whole or in pieces; fp32 parameters get torch's AdamW update; an
update far below bf16's resolution survives in expectation where rounding to nearest drops it;
the optimizer resumes exactly. (The `train` stage with it: test_training.py.)"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from av_grounding.params import ParamsError, TrainParams
from av_grounding.training import optim
from av_grounding.training.optim import ROWS, StochasticAdamW, noise_key, rounding_noise, stochastic_round


def neighbours(value: float) -> tuple[float, float]:
    """The bf16 values either side of a finite fp32 ``value``: cut toward zero, and one bf16 ulp further out."""
    bits = torch.tensor([value], dtype=torch.float32).view(torch.int32)
    down = (bits & -65536).view(torch.float32)
    up = ((bits & -65536) + 65536).view(torch.float32)
    return float(down), float(up)


@settings(max_examples=200, deadline=None)
@given(st.floats(width=32, allow_nan=False, allow_infinity=False, max_value=2.0**127, min_value=-(2.0**127)))
def test_a_rounded_value_is_one_of_its_two_bf16_neighbours(value):
    rounded = stochastic_round(torch.full((64,), value, dtype=torch.float32), key=7).float()
    assert set(rounded.tolist()) <= set(neighbours(value))
    if float(torch.tensor(value).bfloat16()) == value:  # representable: never moves
        assert (rounded == value).all()


def test_rounding_is_exact_in_expectation_and_keeps_non_finite_values():
    for key, value in enumerate( (1.0 + 2**-10, -3.0e-3 * (1 + 0.3 * 2**-7), 0.02 + 1e-6)):
        down, up = neighbours(value)
        share = (value - down) / (up - down)  # the probability of rounding away from zero
        draws = stochastic_round(torch.full((200_000,), value, dtype=torch.float32), key).float()
        spread = abs(up - down) * math.sqrt(share * (1 - share) / draws.numel())
        assert abs(float(draws.double().mean()) - value) < 5 * spread
    special = torch.tensor([math.inf, -math.inf, math.nan, 0.0, -0.0])
    out = stochastic_round(special).float()
    assert out[0] == math.inf and out[1] == -math.inf and math.isnan(out[2]) and (out[3:] == 0).all()
    with pytest.raises(TypeError, match="float32"):
        stochastic_round(torch.ones(3, dtype=torch.bfloat16))


@pytest.mark.parametrize("chunk", [optim.UPDATE_CHUNK, 7])
def test_fp32_parameters_get_torchs_adamw_update(chunk, monkeypatch):
    """Whole and in pieces of 7 elements (the update is elementwise: pieces change nothing)."""
    monkeypatch.setattr(optim, "UPDATE_CHUNK", chunk)
    torch.manual_seed(0)
    ours, reference = torch.nn.Parameter(torch.randn(50, 30)), torch.nn.Parameter(torch.empty(50, 30))
    reference.data.copy_(ours.data)
    a = StochasticAdamW([ours], lr=1e-2, weight_decay=0.1, betas=(0.8, 0.95), eps=1e-6)
    b = torch.optim.AdamW([reference], lr=1e-2, weight_decay=0.1, betas=(0.8, 0.95), eps=1e-6, foreach=False)
    for _ in range(5):
        grad = torch.randn(50, 30)
        ours.grad, reference.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    torch.testing.assert_close(ours.data, reference.data, rtol=1e-6, atol=1e-7)


def test_a_gradient_with_other_strides_is_updated_in_pieces_as_torch_does(monkeypatch):
    monkeypatch.setattr(optim, "UPDATE_CHUNK", 7)
    torch.manual_seed(1)
    ours, reference = torch.nn.Parameter(torch.randn(20, 30)), torch.nn.Parameter(torch.empty(20, 30))
    reference.data.copy_(ours.data)
    a, b = StochasticAdamW([ours], lr=1e-2), torch.optim.AdamW([reference], lr=1e-2, weight_decay=0.01, foreach=False)
    for _ in range(3):
        grad = torch.randn(30, 20).t()  # transposed: not contiguous
        ours.grad, reference.grad = grad, grad.clone()
        a.step()
        b.step()
    torch.testing.assert_close(ours.data, reference.data, rtol=1e-6, atol=1e-7)


def test_an_update_far_below_bf16_resolution_survives_in_expectation(monkeypatch):
    """The recipe's lr 2e-7 on weights of 1.0 (bf16 step there: 2^-8 down, 2^-7 up). Adam's first
    step moves each weight by lr (gradient direction), 1/19,500 of the step down: rounding to
    nearest (torch's AdamW on bf16) drops every update, stochastic rounding moves about one weight
    in 19,500 by the full step, and the mean weight by lr."""
    n, lr = 2_000_000, 2e-7
    monkeypatch.setattr(optim, "UPDATE_CHUNK", 1 << 20)  # two pieces, each rounded with its own noise
    ours = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
    nearest = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
    for p in (ours, nearest):
        p.grad = torch.ones(n, dtype=torch.bfloat16)
    StochasticAdamW([ours], lr=lr, weight_decay=0.0, seed=3).step()
    torch.optim.AdamW([nearest], lr=lr, weight_decay=0.0, foreach=False).step()
    assert (nearest == 1).all()
    change = 1.0 - ours.detach().double()
    assert set(change.unique().tolist()) == {0.0, 2**-8}
    share = lr / 2**-8
    spread = 2**-8 * math.sqrt(share / n)
    assert abs(float(change.mean()) - lr) < 5 * spread  # 5 sigma; lr is 10 sigma from 0
    assert ours.dtype == torch.bfloat16 and nearest.dtype == torch.bfloat16


def test_a_resumed_optimizer_continues_exactly():
    """The noise follows from the seed, the parameter's place and its step count (kept in the
    state): a resumed run equals an uninterrupted one, also from a state saved when the noise
    came from a generator (its ``rounding`` entry is dropped); another seed rounds otherwise."""
    torch.manual_seed(0)
    start = torch.randn(1000).bfloat16()
    grads = [torch.randn(1000).bfloat16() for _ in range(4)]

    def run(p, optimizer, steps):
        for grad in steps:
            p.grad = grad.clone()
            optimizer.step()

    straight = torch.nn.Parameter(start.clone())
    run(straight, StochasticAdamW([straight], lr=1e-3, seed=5), grads)
    first = torch.nn.Parameter(start.clone())
    optimizer = StochasticAdamW([first], lr=1e-3, seed=5)
    run(first, optimizer, grads[:2])
    saved = optimizer.state_dict()
    assert "rounding" not in saved
    for state in (saved, {**saved, "rounding": {"device_type": "cuda", "state": torch.zeros(16, dtype=torch.uint8)}}):
        resumed = torch.nn.Parameter(first.detach().clone())
        again = StochasticAdamW([resumed], lr=1e-3, seed=5)
        again.load_state_dict(copy.deepcopy(state))  # the loaded moments are updated in place
        run(resumed, again, grads[2:])
        assert torch.equal(resumed, straight)
    other = torch.nn.Parameter(start.clone())
    run(other, StochasticAdamW([other], lr=1e-3, seed=6), grads)
    assert not torch.equal(other, straight)


def mix_reference(word: int) -> int:
    """The hash of ``optim.rounding_noise`` on one Python integer: two rounds of xorshift 16 and multiply by
    0x45D9F3B modulo 2^32, then a last xorshift."""
    for _ in range(2):
        word = ((word ^ (word >> 16)) * 0x45D9F3B) % 2**32
    return word ^ (word >> 16)


@pytest.mark.parametrize("key, start, row", [(0, 0, 0), (noise_key(3, 1, 2), 17, 2), (-1, 2**29, 1),
                                             (2**31 - 1, 2**31 - 60, 2)])
def test_the_noise_is_the_hash_of_each_elements_counter(key, start, row):
    noise = rounding_noise(key, start, 50, row)
    expected = [mix_reference(((ROWS * (start + i) + row) % 2**32) ^ (key % 2**32)) >> 16 for i in range(50)]
    assert noise.dtype == torch.int32 and noise.tolist() == expected


def test_the_noise_is_uniform_and_unrelated_across_rows_steps_and_parameters():
    """16 bins of 2^12 over 300,000 draws (chi-square, 15 degrees of freedom: 99.9 % below 37.7);
    the correlation of the weight's row with the moments' rows, the next step's and the next
    parameter's below 5 standard errors."""
    n = 300_000
    weight = rounding_noise(noise_key(0, 0, 1), 0, n, 0).double()
    counts = torch.bincount((weight // 4096).long(), minlength=16).double()
    assert float(((counts - n / 16) ** 2 / (n / 16)).sum()) < 37.7
    others = [rounding_noise(noise_key(0, 0, 1), 0, n, 1), rounding_noise(noise_key(0, 0, 1), 0, n, 2),
              rounding_noise(noise_key(0, 0, 2), 0, n, 0), rounding_noise(noise_key(0, 1, 1), 0, n, 0)]
    for other in others:
        assert abs(float(torch.corrcoef(torch.stack([weight, other.double()]))[0, 1])) < 5 / n**0.5
    assert len({noise_key(s, p, t) for s in range(3) for p in range(3) for t in range(1, 4)}) == 27


def test_a_bf16_tensor_updated_whole_or_in_pieces_gets_the_same_values(monkeypatch):
    """Each element's noise follows from its index in the tensor, not from the piece it is in."""
    torch.manual_seed(2)
    start, grad = torch.randn(40, 25).bfloat16(), torch.randn(40, 25).bfloat16()
    results = []
    for chunk in (optim.UPDATE_CHUNK, 7):
        monkeypatch.setattr(optim, "UPDATE_CHUNK", chunk)
        p = torch.nn.Parameter(start.clone())
        p.grad = grad.clone()
        StochasticAdamW([p], lr=1e-2, seed=4).step()
        results.append(p.detach())
    assert torch.equal(*results)


def test_the_compiled_update_was_compiled_and_a_failing_compiler_falls_back_with_a_warning(monkeypatch):
    """compiled=True runs a dynamo graph (torch's counters see it); where the compiler fails,
    one warning, the plain update from then on (the same values as compiled=False), and in a
    distributed run an error instead."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    p = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
    p.grad = torch.full((64,), 0.5, dtype=torch.bfloat16)
    StochasticAdamW([p], lr=1e-2, compiled=True).step()
    assert counters["stats"]["unique_graphs"] >= 1

    def failing(function, **options):
        def call(*args):
            raise torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no C compiler"), None)
        return call

    monkeypatch.setattr(torch, "compile", failing)
    grad = torch.randn(64).bfloat16()
    ours, plain = (torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16)) for _ in range(2))
    for param in (ours, plain):
        param.grad = grad.clone()
    falling = StochasticAdamW([ours], lr=1e-2, seed=1, compiled=True)
    with pytest.warns(UserWarning, match=r"(?s)torch.compile of the update failed .*no C compiler"):
        falling.step()
    StochasticAdamW([plain], lr=1e-2, seed=1, compiled=False).step()
    assert falling.compiled is False and torch.equal(ours, plain)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    distributed = StochasticAdamW([plain], lr=1e-2, compiled=True)
    with pytest.raises(RuntimeError, match=r"(?s)distributed run .* every process must update alike"):
        distributed.step()


def test_bad_hyperparameters_are_refused():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="lr"):
        StochasticAdamW([p], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        StochasticAdamW([p], lr=1e-3, betas=(0.9, 1.0))


def test_only_the_hf_backend_without_deepspeed_takes_it():
    with pytest.raises(ParamsError, match=r"train\.precision = bf16_stochastic"):
        TrainParams(precision="bf16_stochastic", backend="cosmos-rl")
    with pytest.raises(ParamsError, match=r"train\.deepspeed"):
        TrainParams(precision="bf16_stochastic", deepspeed="configs/deepspeed_zero3.json")



def test_the_compiled_update_equals_the_plain_one_up_to_fp32_rounding():
    """``torch.compile`` of the update (what a GPU runs) against the plain operations, from the
    same state and noise over three steps: the same bf16 values but where an fp32 rounding turned
    a stochastic rounding the other way (about one bf16 step, or a few fp32 roundings of a
    moment that cancels to near zero; 0.01 % of the elements here), and no fallback warning."""
    torch.manual_seed(0)
    n = 100_003
    start = torch.randn(n).mul(0.02).bfloat16()
    grads = [torch.randn(n).bfloat16() for _ in range(3)]
    results = []
    torch._dynamo.reset()
    for compiled in (False, True):
        p = torch.nn.Parameter(start.clone())
        optimizer = StochasticAdamW([p], lr=1e-3, weight_decay=0.01, seed=2, compiled=compiled)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for grad in grads:
                p.grad = grad.clone()
                optimizer.step()
        assert not [w for w in caught if "StochasticAdamW" in str(w.message)]  # compiled, no fallback
        assert (optimizer._compiled is not None) == compiled and optimizer.compiled is compiled
        results.append([p.detach(), *(optimizer.state[p][k] for k in ("exp_avg", "exp_avg_sq"))])
    for plain, fused in zip(*results):
        differ = plain != fused
        assert int(differ.sum()) <= n // 1_000
        scale = float(plain.float().pow(2).mean().sqrt())
        torch.testing.assert_close(fused.float(), plain.float(), rtol=2**-6, atol=1e-6 * scale)


def test_the_compiled_update_gets_its_noise_counters_as_int32_tensors_not_symbolic_integers():
    """What broke the update's compilation on an H100 (torch 2.11): a Python integer argument of
    a ``dynamic=True`` compile becomes a 64-bit kernel argument folded into the index arithmetic,
    so Triton computed the int32 hash in int64 and could not bitcast the result to fp32. The
    optimizer passes the key and start as an int32 tensor: the only symbolic integers dynamo sees
    are the pieces' sizes (the CPU compiler cannot show the Triton failure itself)."""
    import torch._dynamo

    graphs = []

    def capture(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    optimizer = StochasticAdamW([p := torch.nn.Parameter(torch.ones(300, dtype=torch.bfloat16))], lr=1e-2, seed=3,
                                compiled=True)
    optimizer._compiled = torch.compile(optim.adamw_piece, dynamic=True, backend=capture)
    for _ in range(2):  # the second step's key differs: no recompilation either
        p.grad = torch.full((300,), 0.5, dtype=torch.bfloat16)
        optimizer.step()
    assert len(graphs) == 1
    symbolic = [node.meta["example_value"] for node in graphs[0].graph.nodes
                if node.op == "placeholder" and isinstance(node.meta.get("example_value"), torch.SymInt)]
    assert symbolic and all(int(value.node.hint) == 300 for value in symbolic)  # sizes only
    placeholders = [node.meta["example_value"] for node in graphs[0].graph.nodes if node.op == "placeholder"]
    assert any(isinstance(t, torch.Tensor) and t.dtype == torch.int32 and t.shape == (2,) for t in placeholders)


def test_indices_past_the_int32_counters_are_refused_naming_the_caller():
    with pytest.raises(ValueError, match=r"rounding_noise: elements up to 2147483658 pass int32 counters"):
        rounding_noise(0, 2**31 - 10, 20, 0)
    rounding_noise(0, 2**31 - 20, 20, 0)  # the last index 2^31 - 1 still fits
    with pytest.raises(ValueError, match=r"StochasticAdamW: elements up to 2147483649"):
        optim.check_counters(2**31 + 1, "StochasticAdamW")
