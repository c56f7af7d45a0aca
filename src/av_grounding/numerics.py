"""The same floating-point results from PyTorch on every x86-64 CPU, so that `train` and `infer`
write the same bytes on every machine, as the data stages do.

PyTorch's CPU results depend on the machine in four ways; each is pinned here, inside the
stages, before any kernel runs (no user sets anything):

- ATen compiles its vectorised kernels for several instruction sets and picks one by the CPU
  at first use. AVX-512 kernels reduce in 16 lanes, AVX2 kernels in 8, so softmax, attention,
  norms and even the random initialisation differ in the last bits. ``ATEN_CPU_CAPABILITY=avx2``
  takes the AVX2 kernels on every CPU that has AVX2 (Intel since Haswell, AMD since Zen 1).
- oneMKL (every matrix product) picks its code by CPU model and vendor: a generic path on AMD,
  AVX2 or AVX-512 code on Intel. ``MKL_CBWR=COMPATIBLE`` fixes its conditional numerical
  reproducibility branch to the one Intel documents as giving the same results on Intel and
  non-Intel CPUs (an AVX2 branch holds only on Intel CPUs: elsewhere MKL silently runs AUTO);
  ``MKL_DYNAMIC=FALSE`` keeps it from using fewer threads than asked.
- oneDNN (PyTorch's convolutions and GELU on CPU) compiles its kernels at run time for the
  CPU's instruction set and cache sizes: switched off (``torch.backends.mkldnn``), so those
  operations run ATen's kernels and MKL's products, pinned above.
- A parallel reduction splits its input by the number of threads, so the thread count decides
  the order of additions: ``CPU_THREADS`` threads on every machine (OpenMP, MKL and PyTorch),
  never adjusted at run time (``OMP_DYNAMIC=FALSE``).

One kind of operation cannot be pinned: ATen hands a few element-wise functions of contiguous
float tensors to MKL's vector math library (``VENDOR_DEPENDENT_OPS``: ``vsSqrt``, ``vsErf``, ...
in MKL's "high accuracy" mode, accurate to about one unit in the last place, not exactly rounded),
which picks its code by CPU vendor whatever ``MKL_CBWR`` says: ``torch.sqrt`` of the same 4,096
floats gave other bits on an Intel Xeon than on an AMD EPYC. The stages route around them: the
optimizer is the fused AdamW on the CPU (its square root is ATen's own, exactly rounded), the
models use ``rsqrt`` and GELU kernels of ATen's, and a test checks that training and generation
call none of them.

Sources: ATen's dispatch (``aten/src/ATen/native/DispatchStub.cpp``, ``ATEN_CPU_CAPABILITY``);
oneMKL Developer Guide, "Specifying Code Branches" and "Reproducibility Conditions" (2024.2).
What it costs on CPU, and the checks that show it holds: docs/reliability.md ("Same bytes
everywhere") and README ("Same bytes on every machine").
"""

from __future__ import annotations

import os
import warnings

# Threads of every CPU kernel. The result of a parallel reduction depends on this number, so it
# is the same on every machine: 2 is what the machines of this project have (fewer cores run
# the same threads, more slowly; more cores stay unused by the tiny CPU runs).
CPU_THREADS = 2
# The ATen kernels taken on every CPU, as torch.backends.cpu.get_cpu_capability() names them.
ATEN_CAPABILITY = "AVX2"
# ATen operators whose CPU kernels call MKL's vector math for float tensors (ATen's
# native/cpu/UnaryOpsKernel.cpp, IMPLEMENT_*_KERNEL over cpu/vml.h) and whose results are not
# exact, so they differ between CPU vendors (floor, ceil, round and trunc take the same path but
# are exact by definition). Training and inference must not call them.
VENDOR_DEPENDENT_OPS = ("sqrt", "erf", "erfc", "erfinv", "lgamma", "i0")

PINNED_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": ATEN_CAPABILITY.lower(),
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "OMP_NUM_THREADS": str(CPU_THREADS),
    "MKL_NUM_THREADS": str(CPU_THREADS),
}


class NumericsError(RuntimeError):
    """PyTorch ran a CPU kernel before the pinned settings were in place, so its kernels were
    chosen by this CPU and its results would differ from other machines' (a bug in the caller)."""


def pin_environment() -> None:
    """Set ``PINNED_ENVIRONMENT`` in this process (and so in every process it starts: torchrun,
    data-loader workers), replacing values set outside. ATen and MKL read these at their first
    kernel, so this must run before PyTorch computes anything; importing torch is fine."""
    os.environ.update(PINNED_ENVIRONMENT)


def pin_torch() -> None:
    """Pin PyTorch's CPU numerics in this process: the environment above, ``CPU_THREADS``
    threads, oneDNN off. (GPU kernels are not affected; GPU results are not promised equal
    across GPU models.)

    Raises ``NumericsError`` when ATen had already chosen other kernels on a CPU that has AVX2 (a
    tensor was computed before ``pin_environment`` ran). On a CPU without AVX2 ATen can only run
    its baseline kernels: it warns that results will differ from other machines'."""
    pin_environment()
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability != ATEN_CAPABILITY:
        has_avx2 = getattr(torch.cpu, "_is_avx2_supported", lambda: True)()
        if has_avx2:
            raise NumericsError(f"PyTorch's CPU kernels were chosen ({capability}) before "
                                "av_grounding.numerics.pin_environment() ran: call it before computing any tensor")
        warnings.warn(f"this CPU runs PyTorch's {capability} kernels, not {ATEN_CAPABILITY}: trained weights and "
                      "answers will differ from those of other machines", stacklevel=1)
    torch.set_num_threads(CPU_THREADS)
    # torch's stub types the flag as the ContextProp descriptor that implements it
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
