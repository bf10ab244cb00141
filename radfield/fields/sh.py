"""Real spherical harmonics up to degree 3 (16 coefficients) for view directions.

Vocabulary: `dirs` are unit vectors (n, 3) with components (x, y, z); the encoding is
Y_{l,m}(dirs) for l = 0..3, m = -l..l, ordered l-major then m ascending: index l * l + l + m.
Same constants, signs and order as tiny-cuda-nn's SphericalHarmonics encoding and torch-ngp's
shencoder ("degree 4" in their counting), written as polynomials valid on the unit sphere.
These are orthonormal on the sphere: integral of Y_i Y_j dOmega = delta_ij.

Worked example: dirs = (0, 0, 1) -> Y_0 = 0.2820948, Y_2 = 0.4886025,
Y_6 = 0.9461747 - 0.3153916 = 0.6307831, Y_12 = 0.3731763 * 2 = 0.7463527, every other 0.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor

from radfield.native import NativeLibrary

__all__ = ["SH_DIM", "sh_encode"]

SH_DIM = 16
SH_C0 = 0.28209479177387814  # 1 / (2 sqrt(pi))
SH_C1 = 0.4886025119029199  # sqrt(3 / (4 pi))
SH_C2 = (1.0925484305920792, 0.94617469575755997, 0.31539156525251999, 0.54627421529603959)
SH_C3 = (0.59004358992664352, 2.8906114426405538, 0.45704579946446572, 0.3731763325901154,
         1.4453057213202769)  # fmt: skip


_KERNEL = NativeLibrary(Path(__file__).with_name("_sh_cpu.c"), {
    "sh_encode_deg3": [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int32],
}, "spherical harmonics CPU kernel", "the PyTorch polynomials")


def sh_encode(dirs: Tensor) -> Tensor:
    """Real SH basis of degree 0..3 at unit directions: (n, 3) -> (n, 16), dtype of `dirs`.

    Directions are not renormalised here (normalise first); the polynomials below equal the
    orthonormal harmonics only on the unit sphere. Float32 CPU directions that need no gradient
    (renders, and training without pose refinement) go through the compiled kernel
    ``_sh_cpu.c``, the same polynomials in one pass (``radfield.native``).
    """
    if dirs.shape[-1] != 3:
        raise ValueError(f"dirs must have shape (..., 3), got {tuple(dirs.shape)}")
    if (dirs.device.type == "cpu" and dirs.dtype == torch.float32 and dirs.ndim == 2
            and not (dirs.requires_grad and torch.is_grad_enabled())):
        lib = _KERNEL.load()
        if lib is not None:  # one pass instead of some thirty tensor operations
            dirs = dirs.contiguous()
            out = torch.empty(dirs.shape[0], SH_DIM)
            lib.sh_encode_deg3(dirs.data_ptr(), dirs.shape[0], out.data_ptr(), torch.get_num_threads())
            return out
    x, y, z = dirs.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    xy, yz, xz = x * y, y * z, x * z
    c2, c3 = SH_C2, SH_C3
    out = [
        torch.full_like(x, SH_C0),
        -SH_C1 * y,
        SH_C1 * z,
        -SH_C1 * x,
        c2[0] * xy,
        -c2[0] * yz,
        c2[1] * zz - c2[2],
        -c2[0] * xz,
        c2[3] * (xx - yy),
        c3[0] * y * (-3.0 * xx + yy),
        c3[1] * xy * z,
        c3[2] * y * (1.0 - 5.0 * zz),
        c3[3] * z * (5.0 * zz - 3.0),
        c3[2] * x * (1.0 - 5.0 * zz),
        c3[4] * z * (xx - yy),
        c3[0] * x * (-xx + 3.0 * yy),
    ]
    return torch.stack(out, dim=-1)
