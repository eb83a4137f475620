"""Which torch device a ``device`` option names: the one resolver every place that loads models uses.

``auto`` is CUDA when torch sees a GPU and the CPU otherwise, so the same command uses a GPU
where there is one; ``cpu``, ``cuda`` and ``cuda:N`` are taken as asked, and a GPU asked for
where there is none is refused in one line rather than failing inside torch. The tile-batch
default then follows the resolved device (:data:`pipeline.engine.models.DEFAULT_TILE_BATCH`).
"""

from __future__ import annotations

import torch

from pipeline.options import OptionError, check_device

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto", *, cuda_available: bool | None = None) -> str:
    """The device ``device`` names here: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a :class:`torch.device`.
        cuda_available: whether the process that will load the models has a GPU; ``None``:
            this process, as torch sees it. The batch driver passes whether a model actor
            reserves GPUs, since the actor, not the driver, loads the models.

    Returns:
        ``"cuda"`` for ``auto`` with a GPU, ``"cpu"`` for ``auto`` without one, else ``device``
        as given (``cuda:N`` is checked against the GPUs torch sees).

    Raises:
        OptionError: naming ``device``: not one of the forms above, or CUDA asked for where
            there is no GPU (or no GPU ``N``).
    """
    name = check_device(str(device))
    probe = cuda_available is None
    available = torch.cuda.is_available() if probe else cuda_available
    if name == "auto":
        return "cuda" if available else "cpu"
    if name == "cpu":
        return name
    if not available:
        where = "torch sees no CUDA GPU on this machine" if probe else "no CUDA GPU is available to it"
        raise OptionError("device", f"{name}: {where}")
    index = torch.device(name).index
    if probe and index is not None and index >= (count := torch.cuda.device_count()):
        raise OptionError("device", f"{name}: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return name
