"""The precision policy: which arithmetic the encoders and decoders run in.

``fp32`` is the exact default: float32 convolutions with TF32 switched off, because cuDNN
and cuBLAS use TF32 (a 10-bit mantissa) by default on recent GPUs, which would break the
claim that the tiled cascade equals the whole-image one. ``tf32`` allows TF32 on a GPU (on
the CPU it is the same as ``fp32``). ``bf16`` and ``fp16`` cast the modules to that dtype,
so the convolutions run in it; everything between the networks stays as in ``fp32``: the
feature statistics and the transforms are built in float64, and tiles, features and
canvases are float32 between levels (:func:`pipeline.engine.cascade.encode` casts at the model's
edges). docs/benchmarks.md gives each mode's PSNR against the fp32 whole-image result.

The TF32 switches are process-wide, so :func:`apply_precision` is called in every process
that runs a model: the in-process engine (via :func:`pipeline.engine.models.load_model_set`) and
each Ray model actor, which loads its models the same way.
"""

from __future__ import annotations

import torch

from pipeline.options import DEFAULT_PRECISION, PRECISIONS, Precision, check_precision

__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "Precision", "apply_precision", "check_precision", "model_dtype",
           "tf32_flags"]

_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def model_dtype(precision: str) -> torch.dtype:
    """The dtype the modules' weights and convolutions use in ``precision``."""
    return _DTYPES[check_precision(precision)]


def apply_precision(precision: str) -> None:
    """Set this process's TF32 switches for ``precision``: on only for ``tf32``.

    ``bf16`` and ``fp16`` leave them off too, so any float32 matmul or convolution left in
    those modes stays float32.
    """
    allow = check_precision(precision) == "tf32"
    torch.backends.cudnn.allow_tf32 = allow
    torch.backends.cuda.matmul.allow_tf32 = allow


def tf32_flags() -> dict[str, bool]:
    """This process's TF32 switches, as ``{"cudnn": ..., "matmul": ...}`` (for reports and tests)."""
    return {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
