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
both moments stochastically into their bf16 storage. The rounding noise is counter-based (as
Philox is, Salmon et al. 2011): a 32-bit integer hash (two multiply-xorshift rounds) of each
element's index, keyed by ``train.seed``, the parameter's place in the optimizer and the step.
It is computed inside the update's kernel (no noise tensor is drawn, stored or read: 12 bytes an
element less traffic, and the compiled update is one kernel a piece), it is the same on every
device and CPU, so the compiled and plain updates and a CPU and a GPU round alike, and a resumed
run continues with the same noise from the step count alone; in data parallel every process
computes the same noise, so the replicas stay equal. fp32 parameters get the plain
update (no rounding): then it equals ``torch.optim.AdamW``. A tensor is updated in pieces of
``UPDATE_CHUNK`` elements, so the scratch stays under 1 GiB whatever the largest tensor
(Cosmos-Reason2-8B's 622M-element embedding would otherwise need 19 GiB of it at once).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

UPDATE_CHUNK = 1 << 24  # elements a step updates at a time (training/memory.py counts its scratch)
_LOW_BITS = 1 << 16  # the fp32 mantissa bits that bf16 drops
_HIGH_MASK = -_LOW_BITS  # 0xFFFF0000 as a signed 32-bit integer
_LOW_MASK = _LOW_BITS - 1  # the low 16 bits: a right shift by 16 made logical
_MULTIPLIER = 0x45D9F3B  # the multiply-xorshift hash's constant (an odd one: each round is a bijection)
ROWS = 3  # noise rows a parameter's element draws a step: the weight, the first and the second moment


def _compiler_errors() -> tuple[type[Exception], ...]:
    """What a failed compilation of the update raises (dynamo wraps Inductor's and the backends'
    errors), imported when needed (importing dynamo takes a second)."""
    import torch._dynamo.exc
    import torch._inductor.exc

    return torch._dynamo.exc.TorchDynamoException, torch._inductor.exc.InductorError


def noise_key(seed: int, parameter: int, step: int) -> int:
    """The 32-bit key of one parameter's rounding noise at one optimizer step (1-based), as a
    signed integer (the int32 ``rounding_noise`` computes in): BLAKE2b of the three numbers, so
    keys of neighbouring seeds, parameters or steps are unrelated."""
    digest = hashlib.blake2b(f"{seed}:{parameter}:{step}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little", signed=True)


def check_counters(end: int, where: str) -> None:
    """``ValueError`` (naming ``where``) when element indices up to ``end`` pass the noise's int32
    counters (2^31)."""
    if end > 2**31:
        raise ValueError(f"{where}: elements up to {end} pass int32 counters (2^31)")


def rounding_noise(key: int | torch.Tensor, start: int | torch.Tensor, count: int, row: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Noise for stochastic rounding: ``count`` integers in [0, 2^16) (int32), for the elements
    ``start`` .. ``start + count - 1`` of a parameter and noise row ``row`` (0 to ``ROWS`` - 1),
    under ``key`` (``noise_key``): the top 16 bits of a 32-bit integer hash (two rounds of
    xorshift 16 and multiply, then a last xorshift: a bijection of 32-bit words whose every
    output bit depends on every input bit) of the element's counter (``ROWS`` x index + row)
    xor the key. Words are int32, whose products wrap modulo 2^32 (on CPUs and in Triton);
    shifts are made logical by masking. (int64 words cut to int32 at the end came out wrong
    from torch 2.13's compiled AVX2 code in 8 of every 16 elements; eager and AVX-512 were
    right.) The same integers on every device. Computed in place
    (4 bytes an element and one shift's temporary, when not compiled).

    ``key`` and ``start``: Python integers, or 0-d int32 tensors on ``device`` (what the
    compiled update passes: Inductor turns integer arguments into 64-bit kernel arguments and
    folds them into the index arithmetic, and Triton then computes the whole hash in int64:
    on an H100 with torch 2.11 the kernel did not compile). ``ValueError`` past 2^31 elements
    (integer ``start``; a caller passing a tensor checks: ``check_counters``)."""
    if isinstance(start, int):
        check_counters(start + count, "rounding_noise")
    word = torch.arange(count, dtype=torch.int32, device=device).add_(start)
    word.mul_(ROWS).add_(row).bitwise_xor_(key)
    for _ in range(2):
        word.bitwise_xor_((word >> 16) & _LOW_MASK).mul_(_MULTIPLIER)
    return word.bitwise_xor_((word >> 16) & _LOW_MASK).bitwise_right_shift_(16).bitwise_and_(_LOW_MASK)


def stochastic_round(value: torch.Tensor, key: int = 0, start: int = 0) -> torch.Tensor:
    """``value`` (fp32, any shape) rounded to bf16, up or down at random with the probability
    that makes the expectation exact: adding a uniform 16-bit integer to the low bits of the
    fp32 pattern, then cutting them, rounds the magnitude up with probability (low bits) / 2^16.
    The integers are ``rounding_noise(key, start, ...)`` of row 0, one per element in row-major
    order. Values representable in bf16 come back unchanged; infinities and NaN stay so; a finite
    value above the largest finite bf16 can round up to infinity. Returns a bf16 tensor of the
    same shape on the same device. Raises ``TypeError`` for a tensor that is not fp32."""
    if value.dtype != torch.float32:
        raise TypeError(f"stochastic_round takes float32 values, not {value.dtype}")
    noise = rounding_noise(key, start, value.numel(), 0, value.device).view(value.shape)
    return _rounded(value.contiguous(), noise)


def _rounded(value: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``stochastic_round`` with its noise given: ``noise`` holds integers in [0, 2^16) of
    ``value``'s shape (int32)."""
    bits = value.view(torch.int32)
    rounded = torch.where(torch.isfinite(value), (bits + noise) & _HIGH_MASK, bits)
    return rounded.view(torch.float32).to(torch.bfloat16)  # exact: the low 16 bits are zero


def adamw_piece(weight: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                counters: torch.Tensor, scalars: torch.Tensor) -> None:
    """One AdamW update of a piece, in place: ``torch.optim.AdamW``'s single-tensor update
    (decoupled weight decay, bias-corrected moments; Loshchilov & Hutter 2019) computed in fp32,
    each result stored with stochastic rounding where its storage is bf16 (``rounding_noise``
    for the piece's elements, row 0 for the weight, 1 for the first and 2 for the second moment)
    and as it is otherwise. ``counters``: int32, shape (2,), on the piece's device: the noise's
    key (``noise_key``) and the piece's first element's index in its parameter (``start``). weight, grad, exp_avg,
    exp_avg_sq: one 1-D shape (a flat piece) or any shape (a whole tensor, ``start`` 0).
    (At the recipe's rates the decay factor 1 - lr x weight_decay is 1.0 in fp32, 1 - 2e-9: no
    decay, as in torch's AdamW on fp32 weights.)
    ``scalars`` (fp32, on their device): 1 - lr x weight_decay, 1 - beta1, beta2, 1 - beta2,
    the square root of the second moment's bias correction, eps, -lr / (the first moment's bias
    correction); tensors, so a compiled update serves every step's learning rate. Pure tensor
    operations: ``torch.compile`` fuses the whole of it, the noise included, into one kernel
    (``StochasticAdamW``)."""
    decay, one_minus_beta1, beta2, one_minus_beta2, bias2_sqrt, eps, step_size = scalars.unbind()
    key, start = counters.unbind()
    g = grad.float()
    m = exp_avg.float().lerp(g, one_minus_beta1)
    v = exp_avg_sq.float() * beta2 + g * g * one_minus_beta2
    w = weight.float() * decay + step_size * m / (v.sqrt() / bias2_sqrt + eps)
    for row, (stored, value) in enumerate(((weight, w), (exp_avg, m), (exp_avg_sq, v))):
        if stored.dtype == torch.bfloat16:
            noise = rounding_noise(key, start, value.numel(), row, value.device)
            stored.copy_(_rounded(value, noise.view(value.shape)))
        else:
            stored.copy_(value)


class StochasticAdamW(torch.optim.Optimizer):
    """AdamW whose bf16 parameters and moments are updated in fp32 and stored with stochastic
    rounding (module docstring). Same hyperparameters and update as ``torch.optim.AdamW``
    (``lr``, ``betas``, ``eps``, ``weight_decay``); ``seed`` keys the rounding noise
    (``noise_key``: with the parameter's place among all groups' parameters and its step count,
    which the optimizer state keeps, so a resumed run draws the same noise on any device).

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

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW update of every parameter with a gradient (``closure``: as torch's)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        place = 0  # the parameter's place among all groups' parameters: part of its noise key
        for group in self.param_groups:
            scalars: dict[tuple[torch.device, int], torch.Tensor] = {}  # one copy to the device per step count
            for p in group["params"]:
                place += 1
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
                self._update(p, state, noise_key(self.seed, place - 1, state["step"]), scalars[key])
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

    def _update(self, p: torch.Tensor, state: dict[str, Any], key: int, scalars: torch.Tensor) -> None:
        """``torch.optim.AdamW``'s single-tensor update in fp32, stored back with stochastic
        rounding (noise under ``key``) where the storage is bf16: in pieces of ``UPDATE_CHUNK``
        elements where the parameter is contiguous (a gradient with other strides is copied
        contiguous first), the whole tensor at once otherwise."""
        assert p.grad is not None  # step() updates only parameters with a gradient
        grad = p.grad if p.grad.is_contiguous() or not p.is_contiguous() else p.grad.contiguous()
        tensors = [p, grad, state["exp_avg"], state["exp_avg_sq"]]
        if all(t.is_contiguous() for t in tensors):  # else no flat views: the whole tensor at once
            tensors = [t.view(-1) for t in tensors]
        piece = UPDATE_CHUNK if tensors[0].dim() == 1 else p.numel()
        starts = range(0, p.numel(), piece)
        check_counters(p.numel(), "StochasticAdamW")
        counters = torch.tensor([[key, start] for start in starts], dtype=torch.int32,
                                pin_memory=p.device.type == "cuda").to(p.device, non_blocking=True)
        for piece_counters, start in zip(counters, starts):
            weight, gradient, exp_avg, exp_avg_sq = (t[start:start + piece] if piece < p.numel() else t
                                                     for t in tensors)
            self._fused(p.device)(weight, gradient, exp_avg, exp_avg_sq, piece_counters, scalars)

    def _fused(self, device: torch.device) -> Callable[..., None]:
        """``adamw_piece`` compiled by ``torch.compile`` where ``compiled`` says (None: on CUDA
        devices, True: everywhere): one kernel a piece in place of about twenty, each reading and
        writing fp32 copies (the update of Cosmos-Reason2-8B's 8.77B bf16 weights took 1.44 s a
        step on an H100 unfused, 0.30 s compiled, with the noise then still drawn apart). Compiled
        and plain updates use the same noise and agree up to fp32 rounding, which can turn a
        stochastic rounding the other way (no weight and 12 of 100,003 first moments after three
        steps of the CPU test). Returns the function to call with ``adamw_piece``'s arguments."""
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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's, also of a state saved when the noise came from a generator (its
        ``rounding`` entry is dropped: the noise now follows from the seed and the step)."""
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "rounding"})
