"""What the distillation job reads and writes, free of Ray so it runs in-process and in tests.

- training images: listing a URI, a stable held-out split, and the random crops a step sees;
- teachers: ``torchvision-vgg19`` (``:random`` for untrained weights) or a weights URI;
- evaluation: held-out reconstruction PSNR of any weight set, level by level;
- bundles: ``<publish>/<run id>/{k}SE.pth, {k}SD.pth, card.json`` and the ``latest`` pointer,
  moved only when the new bundle reconstructs the held-out images no worse;
- figures: PNGs of the loss curves and of reconstructions, drawn with Pillow.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fsspec.core import url_to_fs
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from models import VGG19, Decoder, Encoder, FamilySpec, WeightSet, resolve_weights, small_decoder, small_encoder
from models.losses import reconstruction_psnr
from models.vgg import vgg19_decoder, vgg19_encoder
from pipeline.imageio import ImageError, read_image, write_bytes

__all__ = [
    "IMAGE_EXTENSIONS",
    "VGG19_TEACHER",
    "Teacher",
    "decode_for_crops",
    "evaluate_levels",
    "list_images",
    "load_eval_images",
    "promote",
    "publish_bundle",
    "random_crops",
    "render_loss_curves",
    "render_reconstructions",
    "should_promote",
    "split_holdout",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
VGG19_TEACHER = "torchvision-vgg19"


# ---------------------------------------------------------------------------- training images


def list_images(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Every image file under ``uri`` (recursively), as sorted full URIs.

    Raises:
        FileNotFoundError: ``uri`` holds no file with one of :data:`IMAGE_EXTENSIONS`.
    """
    fs, path = url_to_fs(uri, **(storage_options or {}))
    found = [path] if fs.isfile(path) else fs.find(path)
    files = sorted(p for p in found if p.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise FileNotFoundError(uri)
    return [fs.unstrip_protocol(p) if "://" in uri else p for p in files]


def split_holdout(uris: Sequence[str], *, every: int) -> tuple[list[str], list[str]]:
    """Split image URIs into (training, held-out), holding out one in ``every``.

    The held-out images are those whose file name has the smallest sha256, so the split
    depends on the file names alone, not on the listing order or the prefix they live under.

    Raises:
        ValueError: fewer than two images, or ``every`` < 2.
    """
    if every < 2:
        raise ValueError(f"every must be >= 2, got {every}")
    if len(uris) < 2:
        raise ValueError(f"need at least two images to hold one out, got {len(uris)}")
    ranked = sorted(uris, key=lambda u: hashlib.sha256(u.rsplit("/", 1)[-1].encode()).hexdigest())
    held = set(ranked[: max(1, len(uris) // every)])
    return [u for u in uris if u not in held], [u for u in uris if u in held]


def decode_for_crops(data: bytes, *, side: int) -> np.ndarray:
    """Decode image bytes to RGB with the shorter side resized to ``side``, aspect kept.

    Runs once per training image per epoch, so it asks JPEG for a reduced decode (Pillow's
    ``draft``) before resizing: crops of a 4K photo at 128 px would show texture rather than
    scenes, and a full decode would cost more than the training step. EXIF orientation is
    applied and grey, palette and CMYK images become RGB.

    Returns:
        ``(H, W, 3)`` uint8 with ``min(H, W) == side``.

    Raises:
        ImageError: the bytes are not an image Pillow can decode.
    """
    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (side, side))
        img = ImageOps.exif_transpose(img).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"training image is not decodable: {e}") from e
    w, h = img.size
    scale = side / min(w, h)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    if size != (w, h):
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(img)


def random_crops(image: np.ndarray, *, size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random crops of ``image`` at random scales, resized to ``size``, randomly flipped.

    Each crop's side is drawn from ``[size, min(H, W)]`` (a zoom of 1x up to the whole short
    side), so with images decoded at ``2 * size`` the network sees scales 1x..2x.

    Args:
        image: ``(H, W, 3)`` uint8 with ``min(H, W) >= size``.
        size: output side in pixels.
        count: crops to cut.
        rng: source of randomness (a fresh generator per call gives new crops every epoch).

    Returns:
        ``(count, 3, size, size)`` float32 RGB in [0, 1].
    """
    h, w = image.shape[:2]
    if min(h, w) < size:
        raise ValueError(f"image is {w}x{h}, smaller than the crop size {size}")
    pil = Image.fromarray(image)
    out = np.empty((count, 3, size, size), dtype=np.float32)
    for i in range(count):
        side = int(rng.integers(size, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = pil.crop((left, top, left + side, top + side))
        if side != size:
            crop = crop.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.asarray(crop, dtype=np.float32) / 255.0
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out[i] = arr.transpose(2, 0, 1)
    return out


def load_eval_images(
    uris: Sequence[str], *, side: int, storage_options: dict[str, Any] | None = None
) -> list[torch.Tensor]:
    """Held-out images, shorter side resized to ``side`` and centre-cropped to multiples of 16.

    Returns:
        One ``(1, 3, H, W)`` float32 tensor in [0, 1] per URI, H and W multiples of 16.
    """
    images = []
    for uri in uris:
        x = torch.from_numpy(read_image(uri, storage_options).rgb).permute(2, 0, 1)[None]
        h, w = x.shape[-2:]
        scale = side / min(h, w)
        x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
        h, w = x.shape[-2:]
        top, left = (h % 16) // 2, (w % 16) // 2
        images.append(x[..., top : top + h - h % 16, left : left + w - w % 16].clamp(0, 1).contiguous())
    return images


# ---------------------------------------------------------------------------------- teachers


@dataclass(frozen=True)
class Teacher:
    """Where the teacher comes from: ``torchvision-vgg19[:random]`` or a weights URI.

    Args:
        source: ``torchvision-vgg19`` (ImageNet weights, downloaded by torchvision),
            ``torchvision-vgg19:random`` (untrained, for tests; built from ``seed`` so every
            worker holds the same one) or any ``--weights`` location.
        storage_options: for a weights URI.
        seed: initialisation seed of the random VGG-19.
    """

    source: str
    storage_options: dict[str, Any] | None = None
    seed: int = 0

    @property
    def is_vgg19(self) -> bool:
        return self.source == VGG19_TEACHER or self.source.startswith(f"{VGG19_TEACHER}:")

    @cached_property
    def weight_set(self) -> WeightSet | None:
        """The resolved weights of a URI teacher (``None`` for VGG-19), resolved once."""
        return None if self.is_vgg19 else resolve_weights(self.source, self.storage_options)

    def family(self) -> FamilySpec:
        """Channel widths of the teacher."""
        return VGG19 if self.weight_set is None else self.weight_set.family

    def encoder(self, level: int) -> Encoder:
        """The teacher's encoder of ``level`` (frozen use: eval mode)."""
        if not self.is_vgg19:
            return small_encoder(level, weights=self.weight_set, storage_options=self.storage_options)
        variant = self.source.partition(":")[2]
        if variant not in ("", "random"):
            raise ValueError(f"teacher {self.source!r}: expected {VGG19_TEACHER} or {VGG19_TEACHER}:random")
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return vgg19_encoder(level, weights=None if variant == "random" else "DEFAULT", progress=False)

    def has_decoder(self, level: int) -> bool:
        """Whether the teacher comes with a decoder of ``level`` (else ``distill`` trains one)."""
        return self.weight_set is not None and f"{level}SD" in self.weight_set.files

    def decoder(self, level: int) -> Decoder | None:
        """The teacher's decoder of ``level``, or ``None`` when it must be trained first."""
        if not self.has_decoder(level):
            return None
        return small_decoder(level, weights=self.weight_set, storage_options=self.storage_options)

    def blank_decoder(self, level: int) -> Decoder:
        """A randomly initialised decoder of the teacher's widths, to train."""
        return vgg19_decoder(level) if self.is_vgg19 else Decoder(level, self.family())


# -------------------------------------------------------------------------------- evaluation


def evaluate_levels(
    encoders: Mapping[int, Encoder], decoders: Mapping[int, Decoder], images: Sequence[torch.Tensor]
) -> dict[int, float]:
    """Held-out reconstruction PSNR (dB) per level: ``mean_x PSNR(D_k(E_k(x)), x)``."""
    return {k: reconstruction_psnr(encoders[k].eval(), decoders[k].eval(), images) for k in sorted(encoders)}


def _weight_set_psnr(
    wset: WeightSet, levels: Sequence[int], images: Sequence[torch.Tensor], storage_options: dict[str, Any] | None
) -> dict[int, float]:
    common = [k for k in levels if k in wset.levels]
    encoders = {k: small_encoder(k, weights=wset, storage_options=storage_options) for k in common}
    decoders = {k: small_decoder(k, weights=wset, storage_options=storage_options) for k in common}
    return evaluate_levels(encoders, decoders, images)


# ---------------------------------------------------------------------------------- bundles


def _state_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
    return buf.getvalue()


def publish_bundle(
    publish_uri: str,
    run_id: str,
    states: Mapping[str, Mapping[str, torch.Tensor]],
    card: Mapping[str, Any],
    *,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write ``<publish>/<run id>/`` with one ``.pth`` per state dict and ``card.json``.

    The weights go first and the card last, so a bundle without its card is incomplete, and
    the card's ``files`` holds each file's sha256 for :func:`models.resolve_weights`.

    Args:
        publish_uri: bundle root (local folder or fsspec URI).
        run_id: the bundle's folder name.
        states: ``"{k}SE"``/``"{k}SD"`` -> state dict (plain tensors, names as the modules give them).
        card: the card's other keys (teacher, widths, level1_width, embed_widths, data, steps,
            metrics, code_version, ...); ``run_id`` and ``files`` are filled in here.

    Returns:
        The bundle's URI.
    """
    bundle = f"{publish_uri.rstrip('/')}/{run_id}"
    files = {}
    for name, state in sorted(states.items()):
        data = _state_bytes(state)
        write_bytes(f"{bundle}/{name}.pth", data, storage_options)
        files[name] = hashlib.sha256(data).hexdigest()
    full = {**card, "run_id": run_id, "files": files}
    write_bytes(f"{bundle}/card.json", json.dumps(full, indent=2, sort_keys=True).encode(), storage_options)
    log.info("published bundle %s (%s)", bundle, ", ".join(files))
    return bundle


def should_promote(candidate: Mapping[int, float], current: Mapping[int, float] | None) -> bool:
    """True if ``candidate`` reconstructs no worse than ``current`` (mean PSNR over shared levels).

    A candidate with no level in common with the current bundle is a different product and
    is not promoted over it; with no current bundle, any candidate is.
    """
    if current is None:
        return True
    common = sorted(set(candidate) & set(current))
    if not common:
        return False
    return sum(candidate[k] - current[k] for k in common) >= 0


def promote(
    publish_uri: str,
    run_id: str,
    candidate: Mapping[int, float],
    images: Sequence[torch.Tensor],
    *,
    storage_options: dict[str, Any] | None = None,
) -> tuple[bool, dict[int, float] | None]:
    """Point ``<publish>/latest`` at ``run_id`` if it is no worse than the current latest.

    The current bundle is evaluated again on the same held-out ``images``, so the comparison
    does not depend on what data the older run held out.

    Args:
        candidate: held-out PSNR per level of the new bundle.
        images: the held-out images ``candidate`` was measured on.

    Returns:
        Whether ``latest`` now names ``run_id``, and the current bundle's PSNR per level
        (``None`` when there was no ``latest``).
    """
    latest_uri = f"{publish_uri.rstrip('/')}/latest"
    fs, path = url_to_fs(latest_uri, **(storage_options or {}))
    current = None
    if fs.exists(path):
        current = _weight_set_psnr(
            resolve_weights(latest_uri, storage_options), list(candidate), images, storage_options
        )
    promoted = should_promote(candidate, current)
    if promoted:
        write_bytes(latest_uri, run_id.encode(), storage_options)
    log.info(
        "%s %s as %s (held-out PSNR %s vs current %s)",
        "promoted" if promoted else "kept the current bundle; did not promote",
        run_id,
        latest_uri,
        _fmt_psnr(candidate),
        "none" if current is None else _fmt_psnr(current),
    )
    return promoted, current


def _fmt_psnr(psnrs: Mapping[int, float]) -> str:
    return " ".join(f"L{k}={v:.2f}dB" for k, v in sorted(psnrs.items()))


# ---------------------------------------------------------------------------------- figures

_PANEL = (360, 220)
_MARGIN = 36


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _draw_curve(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, values: Sequence[float]) -> None:
    """One panel: the per-step values (light) and their moving average (dark), log-scaled."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(160, 160, 160))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    if len(finite) < 2:
        return
    lo, hi = math.log10(min(finite)), math.log10(max(finite))
    span = hi - lo or 1.0

    def points(series: Sequence[float]) -> list[tuple[float, float]]:
        n = len(series) - 1
        return [(x0 + (x1 - x0) * i / n, y1 - (y1 - y0) * (math.log10(v) - lo) / span) for i, v in enumerate(series)]

    draw.line(points(finite), fill=(174, 199, 232), width=1)
    draw.line(points(_moving_average(finite, max(1, len(finite) // 20))), fill=(31, 119, 180), width=2)
    draw.text((x0 + 4, y0 + 2), f"{10**hi:.4g}", fill=(90, 90, 90))
    draw.text((x0 + 4, y1 - 12), f"{10**lo:.4g}", fill=(90, 90, 90))
    draw.text((x1 - 70, y1 + 2), f"{len(values)} steps", fill=(90, 90, 90))


def render_loss_curves(curves: Mapping[str, Sequence[float]], *, columns: int = 3) -> bytes:
    """A PNG with one panel per stage: its total loss per step (and moving average), log scale.

    Args:
        curves: stage title -> loss per step, in stage order.
    """
    rows = max(1, math.ceil(len(curves) / columns))
    w, h = _PANEL
    img = Image.new("RGB", (columns * w, rows * h), "white")
    draw = ImageDraw.Draw(img)
    for i, (title, values) in enumerate(curves.items()):
        left, top = (i % columns) * w, (i // columns) * h
        _draw_curve(draw, (left + _MARGIN, top + _MARGIN, left + w - 12, top + h - _MARGIN), title, values)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def render_reconstructions(rows: Mapping[str, Sequence[tuple[str, torch.Tensor]]]) -> bytes:
    """A PNG grid: one row per model (e.g. teacher, student), one labelled tile per column.

    Args:
        rows: row label -> ``(column label, (1, 3, H, W) float32 in [0, 1])`` pairs, all the
            same size.
    """
    tiles = [t for row in rows.values() for _, t in row]
    th, tw = tiles[0].shape[-2:]
    ncols = max(len(r) for r in rows.values())
    label_h = 14
    img = Image.new("RGB", (ncols * tw, len(rows) * (th + label_h)), "white")
    draw = ImageDraw.Draw(img)
    for r, (row_label, row) in enumerate(rows.items()):
        for c, (label, tile) in enumerate(row):
            arr = (tile[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            top = r * (th + label_h)
            img.paste(Image.fromarray(arr), (c * tw, top + label_h))
            draw.text((c * tw + 2, top + 1), f"{row_label} {label}", fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
