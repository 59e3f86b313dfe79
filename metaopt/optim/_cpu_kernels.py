"""The C kernels of the ``fused=True`` complex optimizers and of ``LearnedOptimizer``'s fused step on CPU
(``_cpu_kernels.c``).

On CPU a ``torch.compile``-d multi-tensor step spends more time in dynamo's guards and inductor's
wrapper (checks over every tensor of the group) than in its kernel: at 1M parameters over 40 tensors
it took 1.8× torch's fused SGD step. These kernels do the same arithmetic in one pass over all
tensors and are called through ``ctypes`` with one array of data pointers, so a step costs what its
memory traffic costs. The C file is compiled once per process, on first use, with the system C
compiler (``$CC``, else ``cc``; about 0.2 s), OpenMP and ``-march=native`` where the compiler takes
them; without a working compiler :func:`run` and :func:`run_learned` return False and the caller takes
the ``torch.compile`` path (complex optimizers) or the functional core's torch code (the learned optimizer).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import warnings
from importlib import resources

import torch
from torch.autograd.graph import increment_version

__all__ = ["run", "run_learned", "supports"]

SOURCE = "_cpu_kernels.c"
# Flags tried in order: the first set that compiles is used. -fno-math-errno lets sqrt vectorize (the
# kernels never read errno); -march=native is safe because the library is built in the process using it.
FLAG_SETS = (["-O3", "-fno-math-errno", "-march=native", "-fopenmp"], ["-O3", "-fno-math-errno", "-fopenmp"],
             ["-O3", "-fno-math-errno", "-fopenmp-simd"], ["-O3", "-fno-math-errno"])
# Below this many elements one thread is faster than waking the OpenMP team (the learned optimizer's step
# does ~1000 FLOPs an element, not ~10: a thread pays off on far fewer).
MIN_ELEMENTS_PER_THREAD = 32_768
MIN_LEARNED_ELEMENTS_PER_THREAD = 2_048

FALLBACKS = "complex momentum and Adam; LearnedOptimizer takes its torch path, and refuses fused=True"
_library: ctypes.CDLL | None = None
_built = False


def _compile() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        warnings.warn(f"no C compiler ({compiler!r}) for metaopt's fused CPU kernels; fused=True uses "
                      f"torch.compile instead ({FALLBACKS})", stacklevel=4)
        return None
    source = resources.files("metaopt.optim").joinpath(SOURCE).read_text()
    errors = []
    with tempfile.TemporaryDirectory(prefix="metaopt-kernels-", ignore_cleanup_errors=True) as folder:
        source_path, library_path = os.path.join(folder, SOURCE), os.path.join(folder, "kernels.so")
        with open(source_path, "w") as file:
            file.write(source)
        for flags in FLAG_SETS:
            command = [compiler, *flags, "-fPIC", "-shared", "-o", library_path, source_path, "-lm"]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode == 0:
                library = ctypes.CDLL(library_path)  # mapped now: the file may go with the folder
                for name in ("complex_momentum_step", "complex_adam_step"):
                    getattr(library, name).argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                                       ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
                    getattr(library, name).restype = None
                library.learned_step.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                 ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
                library.learned_step.restype = None
                return library
            errors.append(f"{' '.join(command)}: {result.stderr.strip()[:300]}")
    warnings.warn(f"metaopt's fused CPU kernels did not compile; fused=True uses torch.compile instead "
                  f"({FALLBACKS}). " + " | ".join(errors), stacklevel=4)
    return None


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on the first call of the process; None where that failed."""
    global _library, _built
    if not _built:
        _built = True
        _library = _compile()
    return _library


def supports(tensor_lists: list[list[torch.Tensor]]) -> bool:
    """Whether every tensor is a contiguous float32 or float64 CPU tensor of the params' dtype."""
    dtype = tensor_lists[0][0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    # (is_cpu and an identity test: a third of the cost of comparing t.device.type and dtypes)
    return all(t.is_cpu and t.dtype is dtype and t.is_contiguous() for tensors in tensor_lists for t in tensors)


def run(kernel: str, tensor_lists: list[list[torch.Tensor]], scalars: list[float]) -> bool:
    """Run ``kernel`` (``"complex_momentum_step"`` or ``"complex_adam_step"``) in place over
    ``tensor_lists`` = [params, grads, *state buffers]; False (nothing done) where it cannot run."""
    if not supports(tensor_lists) or (lib := library()) is None:
        return False
    params = tensor_lists[0]
    sizes = [p.numel() for p in params]
    pointers = [t.data_ptr() for tensors in tensor_lists for t in tensors]
    threads = max(1, min(torch.get_num_threads(), sum(sizes) // MIN_ELEMENTS_PER_THREAD))
    getattr(lib, kernel)(int(params[0].dtype == torch.float64), (ctypes.c_void_p * len(pointers))(*pointers),
                         (ctypes.c_int64 * len(sizes))(*sizes), len(params),
                         (ctypes.c_double * len(scalars))(*scalars), threads)
    # Written through raw pointers: tell autograd, as in-place torch ops would.
    written = [t for i, tensors in enumerate(tensor_lists) if i != 1 for t in tensors]
    increment_version(written)
    return True


def run_learned(tensor_lists: list[list[torch.Tensor]], weights: torch.Tensor, scalars: list[float]) -> bool:
    """The learned optimizer's step (one hidden layer) in place over ``tensor_lists`` = [params, grads,
    momenta, second moments] with the flat ``weights``; ``scalars`` as ``learned_step`` in the C file
    reads them. False (nothing done) where it cannot run."""
    if not supports(tensor_lists) or (lib := library()) is None:
        return False
    params = tensor_lists[0]
    weights = weights.to(params[0].dtype).contiguous()
    sizes = [p.numel() for p in params]
    pointers = [t.data_ptr() for tensors in tensor_lists for t in tensors]
    sums = (ctypes.c_double * (6 * len(params)))()
    threads = max(1, min(torch.get_num_threads(), sum(sizes) // MIN_LEARNED_ELEMENTS_PER_THREAD))
    lib.learned_step(int(params[0].dtype == torch.float64), (ctypes.c_void_p * len(pointers))(*pointers),
                     (ctypes.c_int64 * len(sizes))(*sizes), len(params), (ctypes.c_double * len(scalars))(*scalars),
                     threads, weights.data_ptr(), sums)
    increment_version([t for i, tensors in enumerate(tensor_lists) if i != 1 for t in tensors])
    return True
