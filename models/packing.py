"""Packing the official CD 16x ``.pth`` pickles into the embedded ``safetensors`` files.

The upstream files are torch pickles (``{"model": state dict, "epoch": n}``); the package ships
their tensors as safetensors, which load without running any pickle code. Packing is
reproducible: the same upstream file always gives the same bytes (the safetensors header is
rewritten with sorted keys, since the library writes metadata in hash order), so the digests
pinned in :mod:`models.weights` can be checked by packing again with
``ultrastyle weights pack --from DIR --to DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save

from models.checkpoint import WeightsError, load_state_dict, sha256_file

__all__ = ["pack_checkpoint", "pack_official"]


def _canonical(blob: bytes) -> bytes:
    """``blob`` with its JSON header re-serialised with sorted keys, space-padded to 8 bytes."""
    size = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + blob[8 + size :]


def pack_checkpoint(src: str | Path, dst: str | Path, *, upstream_path: str, upstream_sha256: str) -> Path:
    """Write the tensors of the ``.pth`` file ``src`` to the safetensors file ``dst``.

    Args:
        src: a local upstream checkpoint (loaded with ``weights_only=True``).
        dst: the safetensors file to write.
        upstream_path: the file's path in the authors' repository, kept in the metadata.
        upstream_sha256: the digest ``src`` must have; kept in the metadata.

    Raises:
        WeightsError: ``src`` is missing, unreadable or not the expected upstream file.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise WeightsError(f"upstream checkpoint not found: {src}")
    actual = sha256_file(src)
    if actual != upstream_sha256:
        raise WeightsError(f"sha256 mismatch for {src}: expected {upstream_sha256}, got {actual}")
    tensors = {name: t.detach().contiguous() for name, t in load_state_dict(src).items()}
    meta = {"upstream_path": upstream_path, "upstream_sha256": upstream_sha256}
    dst.write_bytes(_canonical(save(tensors, metadata=meta)))
    return dst


def pack_official(src_dir: str | Path, dst_dir: str | Path) -> list[Path]:
    """Pack ``src_dir/{k}SE.pth``/``{k}SD.pth`` (the pinned upstream files) into ``dst_dir/{k}S?.safetensors``.

    Raises:
        WeightsError: a file is missing or differs from its pinned upstream digest.
    """
    from models.weights import OFFICIAL_FILES

    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    return [
        pack_checkpoint(Path(src_dir) / f"{name}.pth", dst_dir / f"{name}.safetensors",
                        upstream_path=path, upstream_sha256=digest)
        for name, (path, digest) in OFFICIAL_FILES.items()
    ]
