"""AdamW for bf16 weights whose updates survive small learning rates: stochastic rounding.

bf16 keeps 8 significant bits (7 stored): a weight w moves only by steps of 2^-7 to 2^-8 of |w|
(its ulp). An
AdamW update is about the learning rate times the weight's gradient direction, so at the
recipe's rates (Cosmos Reason 2: 2e-7, field-notes section 2) a weight of size 0.02 would need
an update of 6e-5 to move at all, and rounding to nearest drops every update: the model does
not train. Keeping fp32 master weights fixes that at 4 more bytes a parameter (16 in all with
fp32 gradients and moments: 132 GB for Cosmos-Reason1-7B's 8.29B parameters, beside the
activations, which then need checkpointing on a 141 GB H200).

Stochastic rounding (Gupta et al. 2015, "Deep Learning with Limited Numerical Precision";
Zamirai et al. 2020, "Revisiting BFloat16 Training") rounds x up to the next bf16 value with
probability (x - down) / (up - down) and down otherwise, so E[round(x)] = x: an update smaller
than the ulp moves the weight with a probability proportional to its size, and over many steps
(or many weights) the bf16 model follows the fp32 one in expectation. Weights, gradients and
both moments then all stay bf16: 8 bytes a parameter.

``StochasticAdamW`` computes each step in fp32 exactly as ``torch.optim.AdamW`` does (decoupled
weight decay, bias-corrected moments; Loshchilov & Hutter 2019) and rounds the new weight and
both moments stochastically into their bf16 storage. The rounding noise comes from the
optimizer's own generator on the parameters' device, seeded from ``train.seed`` and kept in
``state_dict()`` by device type, so a resumed run draws the same noise as an uninterrupted one;
in data parallel every process draws the same noise (same seed, same stream), so the replicas
stay equal, and every process resumes from rank 0's saved state. fp32 parameters get the plain
update (no rounding): then it equals ``torch.optim.AdamW``. A tensor is updated in pieces of
``UPDATE_CHUNK`` elements, so the scratch stays under 1 GiB whatever the largest tensor
(Cosmos-Reason2-8B's 622M-element embedding would otherwise need 19 GiB of it at once).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

UPDATE_CHUNK = 1 << 24  # elements a step updates at a time (training/memory.py counts its scratch)
_LOW_BITS = 1 << 16  # the fp32 mantissa bits that bf16 drops
_HIGH_MASK = -_LOW_BITS  # 0xFFFF0000 as a signed 32-bit integer


def _compiler_errors() -> tuple[type[Exception], ...]:
    """What a failed compilation of the update raises (dynamo wraps Inductor's and the backends'
    errors), imported when needed (importing dynamo takes a second)."""
    import torch._dynamo.exc
    import torch._inductor.exc

    return torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError


def stochastic_round(value: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``value`` (fp32, any shape) rounded to bf16, up or down at random with the probability
    that makes the expectation exact: adding a uniform 16-bit integer to the low bits of the
    fp32 pattern, then cutting them, rounds the magnitude up with probability (low bits) / 2^16.
    Values representable in bf16 come back unchanged; infinities and NaN stay so; a finite value
    above the largest finite bf16 can round up to infinity. Returns a bf16 tensor of
    the same shape on the same device. Raises ``TypeError`` for a tensor that is not fp32."""
    if value.dtype != torch.float32:
        raise TypeError(f"stochastic_round takes float32 values, not {value.dtype}")
    noise = torch.randint(0, _LOW_BITS, value.shape, dtype=torch.int32, device=value.device, generator=generator)
    return _rounded(value.contiguous(), noise)


def _rounded(value: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``stochastic_round`` with its noise given: ``noise`` holds integers in [0, 2^16) of
    ``value``'s shape (int32)."""
    bits = value.view(torch.int32)
    rounded = torch.where(torch.isfinite(value), (bits + noise) & _HIGH_MASK, bits)
    return rounded.view(torch.float32).to(torch.bfloat16)  # exact: the low 16 bits are zero


def adamw_piece(weight: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                noise: torch.Tensor | None, scalars: torch.Tensor) -> None:
    """One AdamW update of a piece, in place: ``torch.optim.AdamW``'s single-tensor update
    (decoupled weight decay, bias-corrected moments; Loshchilov & Hutter 2019) computed in fp32,
    each result stored with stochastic rounding where its storage is bf16 (``noise``: (3, *shape)
    int32 in [0, 2^16), one row for the weight, the first and the second moment; None when
    nothing is bf16) and as it is otherwise. weight, grad, exp_avg, exp_avg_sq: one shape.
    (At the recipe's rates the decay factor 1 - lr x weight_decay is 1.0 in fp32, 1 - 2e-9: no
    decay, as in torch's AdamW on fp32 weights.)
    ``scalars`` (fp32, on their device): 1 - lr x weight_decay, 1 - beta1, beta2, 1 - beta2,
    the square root of the second moment's bias correction, eps, -lr / (the first moment's bias
    correction); tensors, so a compiled update serves every step's learning rate. Pure tensor
    operations: ``torch.compile`` fuses the whole of it into one kernel (``StochasticAdamW``)."""
    decay, one_minus_beta1, beta2, one_minus_beta2, bias2_sqrt, eps, step_size = scalars.unbind()
    g = grad.float()
    m = exp_avg.float().lerp(g, one_minus_beta1)
    v = exp_avg_sq.float() * beta2 + g * g * one_minus_beta2
    w = weight.float() * decay + step_size * m / (v.sqrt() / bias2_sqrt + eps)
    for row, (stored, value) in enumerate(((weight, w), (exp_avg, m), (exp_avg_sq, v))):
        stored.copy_(_rounded(value, noise[row]) if noise is not None and stored.dtype == torch.bfloat16 else value)


class StochasticAdamW(torch.optim.Optimizer):
    """AdamW whose bf16 parameters and moments are updated in fp32 and stored with stochastic
    rounding (module docstring). Same hyperparameters and update as ``torch.optim.AdamW``
    (``lr``, ``betas``, ``eps``, ``weight_decay``); ``seed`` seeds the rounding noise.

    ``compiled``: None compiles each piece's update into one kernel on CUDA devices
    (``torch.compile``), True on every device, False never (``_fused``). Where compilation fails
    the update warns and runs the plain operations, in one process; in a distributed run it
    raises instead, since replicas updated two ways would drift apart.

    Raises ``ValueError`` for a negative learning rate, epsilon or weight decay, or betas
    outside [0, 1)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, seed: int = 0, compiled: bool | None = None):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"StochasticAdamW: lr {lr}, eps {eps} and weight_decay {weight_decay} must be >= 0")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"StochasticAdamW: betas {betas} must lie in [0, 1)")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.seed = seed
        self.compiled = compiled  # ``_fused``
        self._compiled: Any = None
        self._rounding: torch.Generator | None = None  # made at the first step, on the parameters' device
        self._saved: dict[str, Any] | None = None  # a loaded generator state, applied when it is made

    def _generator(self, device: torch.device) -> torch.Generator:
        """The rounding generator (one per optimizer: its parameters share a device)."""
        if self._rounding is None:
            self._rounding = torch.Generator(device=device)
            self._rounding.manual_seed(self.seed)
            if self._saved is not None:
                if self._saved["device_type"] != device.type:
                    raise ValueError(f"StochasticAdamW: the rounding state was saved on {self._saved['device_type']} "
                                     f"and cannot continue on {device.type}: resume on the checkpoint's device type")
                self._rounding.set_state(self._saved["state"])
        return self._rounding

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW update of every parameter with a gradient (``closure``: as torch's)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            scalars: dict[tuple[torch.device, int], torch.Tensor] = {}  # one copy to the device per step count
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                key = (p.device, state["step"])
                if key not in scalars:
                    scalars[key] = self._scalars(group, state["step"], p.device)
                self._update(p, state, scalars[key])
        return loss

    @staticmethod
    def _scalars(group: dict[str, Any], step: int, device: torch.device) -> torch.Tensor:
        """``adamw_piece``'s seven scalars (fp32, on ``device``) of a parameter group at
        optimizer step ``step`` (1-based); for a GPU copied from pinned memory, so the copy does
        not wait."""
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        values = torch.tensor([1 - lr * decay, 1 - beta1, beta2, 1 - beta2, (1 - beta2**step) ** 0.5, eps,
                               -lr / (1 - beta1**step)], dtype=torch.float32, pin_memory=device.type == "cuda")
        return values.to(device, non_blocking=True)

    def _update(self, p: torch.Tensor, state: dict[str, Any], scalars: torch.Tensor) -> None:
        """``torch.optim.AdamW``'s single-tensor update in fp32, stored back with stochastic
        rounding where the storage is bf16: in pieces of ``UPDATE_CHUNK`` elements where the
        parameter is contiguous (a gradient with other strides is copied contiguous first), the
        whole tensor at once otherwise."""
        assert p.grad is not None  # step() updates only parameters with a gradient
        grad = p.grad if p.grad.is_contiguous() or not p.is_contiguous() else p.grad.contiguous()
        tensors = [p, grad, state["exp_avg"], state["exp_avg_sq"]]
        if all(t.is_contiguous() for t in tensors):  # else no flat views: the whole tensor at once
            tensors = [t.view(-1) for t in tensors]
        piece = UPDATE_CHUNK if tensors[0].dim() == 1 else p.numel()
        rounded = torch.bfloat16 in (p.dtype, state["exp_avg"].dtype, state["exp_avg_sq"].dtype)
        for start in range(0, p.numel(), piece):
            weight, gradient, exp_avg, exp_avg_sq = (t[start:start + piece] if piece < p.numel() else t
                                                     for t in tensors)
            noise = None
            if rounded:
                noise = torch.randint(0, _LOW_BITS, (3, weight.numel()), dtype=torch.int32, device=p.device,
                                      generator=self._generator(p.device)).view(3, *weight.shape)
            self._fused(p.device)(weight, gradient, exp_avg, exp_avg_sq, noise, scalars)

    def _fused(self, device: torch.device) -> Callable[..., None]:
        """``adamw_piece`` compiled by ``torch.compile`` where ``compiled`` says (None: on CUDA
        devices, True: everywhere): one kernel a piece in place of about twenty, each reading and
        writing fp32 copies (the update of Cosmos-Reason2-8B's 8.77B bf16 weights took 1.44 s a
        step on an H100 unfused, 0.30 s compiled). Compiled and plain updates agree up to fp32
        rounding, which can turn a stochastic rounding the other way (about 1e-4 of the elements
        after three steps of the CPU test; none of 4M on the H100). Returns the function to call
        with ``adamw_piece``'s arguments."""
        if self.compiled is False or (self.compiled is None and device.type != "cuda"):
            return adamw_piece
        if self._compiled is None:
            self._compiled = torch.compile(adamw_piece, dynamic=True)
        return self._compiled_or_plain

    def _compiled_or_plain(self, *args) -> None:
        """The compiled update; where the compiler fails (a missing Triton or C compiler, an
        unsupported operation), a warning and the plain update from then on, in one process
        only (a distributed run raises: every replica must update alike). Other errors (out of
        memory, CUDA errors) propagate."""
        try:
            self._compiled(*args)
        except _compiler_errors() as exc:
            if torch.distributed.is_available() and torch.distributed.is_initialized() \
                    and torch.distributed.get_world_size() > 1:
                raise RuntimeError("StochasticAdamW: torch.compile of the update failed in a distributed run "
                                   f"({type(exc).__name__}: {exc}); every process must update alike") from exc
            warnings.warn(f"StochasticAdamW: torch.compile of the update failed ({type(exc).__name__}: {exc}); "
                          "updating with the unfused operations", stacklevel=4)
            self.compiled = False
            adamw_piece(*args)

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state plus the rounding generator's state and device type (an exact
        resume; none before the first step)."""
        rounding = None if self._rounding is None else {"device_type": self._rounding.device.type,
                                                        "state": self._rounding.get_state()}
        return {**super().state_dict(), "rounding": rounding if rounding is not None else self._saved}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what ``state_dict`` saved; the rounding generator continues from the saved
        state on whichever device index the parameters are (``ValueError`` at the next step
        when that device's type is not the saved one)."""
        state_dict = dict(state_dict)
        self._saved, self._rounding = state_dict.pop("rounding", None), None
        super().load_state_dict(state_dict)
