"""The DINO multi-crop on the training device: decode, crop and augment a whole batch of encoded images.

The PIL path costs a CPU core about 1/56 s per image for 2x224 + 10x96 crops, so one GPU needs
dozens of loader cores. Here the loader only reads file bytes; the training process decodes them
on its device (nvJPEG on CUDA) and builds every crop with batched tensor operations, using kornia's
functional operations with per-sample parameters for the colour and blur steps.

What equals the PIL path and what does not (each difference is tested or stated in docs/training.md):
- parameters: same distributions (crop_params.py), drawn per image from (seed, epoch, index);
- crop + resize: PIL's antialiased bicubic coefficients, as dense matrices, so all crops of one size
  from one image are two matrix products (a few kernel launches per image instead of several per
  crop); two passes, the first clipped to [0, 1] as PIL's uint8 pass is;
- brightness, contrast, saturation, hue: torchvision's tensor formulas, in a random order per crop;
  the grey level uses PIL's weights (0.299, 0.587, 0.114; torchvision's tensor code uses 0.2989);
- blur: PIL's own kernel (three box blurs with the variance of a Gaussian of standard deviation
  radius), applied once in float with edges replicated; PIL applies the three passes in uint8;
- the image stays float from decoding to normalisation; PIL rounds to uint8 after every step;
- decoding: libjpeg-turbo (PIL), libjpeg (torchvision on CPU) and nvJPEG may differ by a grey level.

Before any image reaches torchvision or nvJPEG, PIL reads its header alone and the pixel cap is
applied (pixel_cap.py): a small file declaring a huge image would otherwise be decoded at full size
in device memory. An image refused there is skipped and counted as an undecodable one is.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from dino_model.config import CropConfig
from dino_model.data.crop_params import CropParams, ViewSpec, crop_params, draw_uniforms, view_specs
from dino_model.data.folders import UNREADABLE_ERRORS, unreadable_reason
from dino_model.data.pixel_cap import check_encoded
from dino_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dino_model.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

GPU_AUG_EXTRA = "pip install 'dino-mlops[gpu-aug]'"
JPEG_MAGIC = b"\xff\xd8\xff"
SOLARIZE_THRESHOLD = 128 / 255  # PIL's ImageOps.solarize default, on [0, 1] images
RESAMPLE_ELEMENTS = 1 << 24  # resampling weights built at once (64 MiB of float32; a few such temporaries)


def kornia_module() -> Any:
    """kornia, imported on first use: only crops.backend=gpu needs it."""
    try:
        import kornia
    except ImportError:
        raise ConfigError(f"crops.backend=gpu needs kornia, which is not installed: {GPU_AUG_EXTRA}") from None
    return kornia


def blur_kernel_size(radius_max: float) -> int:
    """Taps of PIL's three-pass box blur at the widest radius (13 for the official radius 2)."""
    sigma2 = radius_max**2 / 3
    whole = math.floor((math.sqrt(12 * sigma2 + 1) - 1) / 2)
    return 6 * (whole + 1) + 1


class GpuMultiCrop:
    """Batch of encoded images -> ([global 1, global 2, local 1, ...] each (B, 3, S, S), images not decodable).

    The batch is what `SeededEncodedDataset` items collate into: {"encoded": [bytes], "seed": int64 (B,),
    "path": [str]}. An image that does not decode is replaced by the batch's next decodable image,
    keeping its own seed (as the loader replaces an unreadable file), and counted.
    """

    def __init__(self, cfg: CropConfig, device: torch.device | str) -> None:
        self.kornia = kornia_module()
        self.cfg, self.device = cfg, torch.device(device)
        self.specs = view_specs(cfg)
        self.kernel_size = blur_kernel_size(float(cfg.blur_radius[1]))
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def __call__(self, batch: dict[str, Any]) -> tuple[list[torch.Tensor], int]:
        images, failed = decode_batch(batch["encoded"], batch["path"], self.device)
        sizes = torch.tensor([img.shape[-2:] for img in images], dtype=torch.int64)
        params = crop_params(draw_uniforms(batch["seed"].tolist(), len(self.specs)), sizes, self.specs, self.cfg)
        return self.crops(images, params), failed

    def crops(self, images: list[torch.Tensor], params: CropParams) -> list[torch.Tensor]:
        """Every crop of every image, augmented; crop k of all images is one (B, 3, S, S) tensor."""
        out: list[torch.Tensor] = []
        for size, columns in _size_groups(self.specs):
            resized = resized_crops(images, params.boxes[:, columns].tolist(), size)  # (len(columns), B, 3, S, S)
            flat = resized.flatten(0, 1)  # crop-major, so each crop's B images stay contiguous
            picked = _select(params, columns)
            flat = self.augment(flat, picked)
            out += list(flat.view_as(resized).unbind(0))
        return out

    def augment(self, x: torch.Tensor, p: CropParams) -> torch.Tensor:
        """Flip, colour jitter, grayscale, blur, solarise, normalise a (N, 3, S, S) batch in [0, 1]."""
        dev = x.device
        x = torch.where(_mask(p.flip, dev), x.flip(-1), x)
        x = color_jitter(x, p.jitter, p.order, p.factors, self.kornia)
        x = torch.where(_mask(p.gray, dev), self.kornia.color.rgb_to_grayscale(x).expand_as(x), x)
        x = gaussian_blur(x, p.blur, p.sigma, self.kernel_size, self.kornia)
        x = torch.where(_mask(p.solarize, dev), torch.where(x >= SOLARIZE_THRESHOLD, 1 - x, x), x)
        return (x - self.mean) / self.std


def decode_batch(encoded: list[bytes], paths: list[str], device: torch.device) -> tuple[list[torch.Tensor], int]:
    """uint8 (3, H, W) RGB images on `device`; undecodable ones replaced by the next decodable, and counted.

    An image whose header PIL cannot read or that is over the pixel cap is never handed to a decoder.
    """
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) if _header_ok(b, p) else None
            for b, p in zip(encoded, paths, strict=True)]
    decoded = _decode(data, paths, device)
    good = [k for k, img in enumerate(decoded) if img is not None]
    if not good:
        raise DataError(f"no image of the batch decodes (first: {paths[0]}); is the data set intact?")
    filled = [img if img is not None else decoded[_next_good(k, good)] for k, img in enumerate(decoded)]
    return filled, len(decoded) - len(good)


def _next_good(k: int, good: list[int]) -> int:
    """The first decodable position after k, wrapping round the batch."""
    return next((g for g in good if g > k), good[0])


def _header_ok(encoded: bytes, path: str) -> bool:
    """Whether PIL reads the header of `encoded` and finds the image within the pixel cap; logs why not."""
    try:
        check_encoded(encoded)
    except UNREADABLE_ERRORS as exc:
        logger.warning("skipped %s: %s", path, unreadable_reason(exc))
        return False
    return True


def _decode(data: list[torch.Tensor | None], paths: list[str], device: torch.device) -> list[torch.Tensor | None]:
    """Each image decoded on `device`; None where `data` is None (refused) or the decoder fails."""
    out: list[torch.Tensor | None] = [None] * len(data)
    jpegs = [k for k, d in enumerate(data) if d is not None and bytes(d[:3]) == JPEG_MAGIC]
    if device.type == "cuda" and jpegs:
        try:  # one batched nvJPEG call; a failing image makes us decode them one by one below
            for k, img in zip(jpegs, decode_jpeg([data[k] for k in jpegs], mode=ImageReadMode.RGB, device=device),
                              strict=True):
                out[k] = img
        except RuntimeError as exc:
            logger.debug("batched nvJPEG decode failed (%s); decoding image by image", exc)
    for k, (img, d) in enumerate(zip(out, data, strict=True)):
        if img is None and d is not None:
            out[k] = _decode_one(d, paths[k], device)
    return out


def _decode_one(data: torch.Tensor, path: str, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_image(data, mode=ImageReadMode.RGB).to(device, non_blocking=True)
    except RuntimeError as exc:
        logger.warning("skipped %s: not a decodable image (%s)", path, str(exc).splitlines()[-1])
        return None


def resized_crops(images: list[torch.Tensor], boxes: list[list[list[int]]], size: int) -> torch.Tensor:
    """float (n_crops, B, 3, size, size) in [0, 1]: box [top, left, height, width] of each image, bicubic.

    `images` are all uint8 as decoded, or all float in [0, 1]. All crops of one image are two matrix
    products (columns, then rows), so the work launched per image does not grow with the crop count.
    """
    unit = _unit(images)
    box = torch.tensor(boxes, dtype=torch.float32)  # (B, K, 4)
    out = []
    n_taps = tap_count(box[..., 2:], size)  # from the boxes on the CPU: no wait for the device
    for start, stop in _chunks([tuple(img.shape[-2:]) for img in images], box.shape[1] * size):
        chunk = box[start:stop].to(images[0].device, non_blocking=True)
        heights, widths = zip(*(img.shape[-2:] for img in images[start:stop]), strict=True)
        rows = pil_resample_weights(chunk[..., 0], chunk[..., 2], max(heights), size, n_taps)
        cols = pil_resample_weights(chunk[..., 1], chunk[..., 3], max(widths), size, n_taps)
        out += [_resample(img, row, col, unit) for img, row, col in zip(images[start:stop], rows, cols, strict=True)]
    return torch.stack(out, 1).clamp_(0, unit).div_(unit)


def tap_count(lengths: torch.Tensor, size: int) -> int:
    """Source pixels that can weigh in one output pixel when resampling crops of `lengths` to `size` (and then some)."""
    return math.ceil(4 * max(float(lengths.max()) / size, 1.0)) + 2


def pil_resample_weights(start: torch.Tensor, length: torch.Tensor, extent: int, size: int,
                         n_taps: int) -> torch.Tensor:
    """float (n, extent, K, size): weight of source pixel x in output pixel i of crop k (n images, K crops each).

    PIL's antialiased bicubic (a = -0.5) resampling of the crop [start, start + length) to `size`
    pixels: output pixel i is centred at (i + 0.5) * scale in the crop (scale = length / size), the
    filter is widened by the scale when downsampling, taps outside the crop are dropped and each
    row of taps is normalised to sum 1 (ImagingResample's precompute_coeffs, torch's antialias path).
    The `n_taps` (tap_count) taps around each output pixel are computed, then scattered into the
    dense matrix.
    """
    scale = (length / size)[:, None, :, None]  # (n, 1, K, 1)
    widen = scale.clamp(min=1)
    centre = (torch.arange(size, device=start.device) + 0.5) * scale  # (n, 1, K, size), crop coordinates
    first = (centre - 2 * widen + 0.5).floor().clamp_(min=0)
    x = first + torch.arange(n_taps, device=start.device)[None, :, None, None]  # (n, taps, K, size)
    taps = _bicubic((x - centre + 0.5) / widen) * (x < length[:, None, :, None])
    index = (x + start[:, None, :, None]).long()  # distinct per output pixel; below extent + n_taps
    dense = torch.zeros(len(start), extent + n_taps, *taps.shape[2:], device=start.device)
    return dense.scatter_(1, index, taps / taps.sum(1, keepdim=True))[:, :extent]


def _bicubic(t: torch.Tensor) -> torch.Tensor:
    """PIL's bicubic filter with a = -0.5: zero from |t| = 2 on."""
    t = t.abs()
    near = (1.5 * t - 2.5) * t * t + 1
    far = ((-0.5 * t + 2.5) * t - 4) * t + 2
    return torch.where(t < 1, near, torch.where(t < 2, far, 0.0))


def _resample(image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, unit: float) -> torch.Tensor:
    """(K, 3, S, S) crops of one (3, H, W) image: columns first, clipped to [0, unit] as PIL's uint8 pass is."""
    c, h, w = image.shape
    _, k, s = cols.shape
    source = image.to(torch.float32, memory_format=torch.contiguous_format).view(c * h, w)
    wide = torch.mm(source, cols[:w].reshape(w, k * s)).clamp_(0, unit)
    return torch.einsum("hki,chkj->kcij", rows[:h], wide.view(c, h, k, s))


def _unit(images: list[torch.Tensor]) -> float:
    """255 for uint8 images, 1 for float ones; one kind per batch."""
    kinds = {img.dtype for img in images}
    if len(kinds) != 1:
        raise ValueError(f"images of one batch must share a dtype, not {sorted(map(str, kinds))}")
    return 255.0 if kinds == {torch.uint8} else 1.0


def _chunks(shapes: list[tuple[int, int]], crop_pixels: int) -> list[tuple[int, int]]:
    """[start, stop) runs of images whose resampling weights hold at most RESAMPLE_ELEMENTS (one image at least)."""
    runs, start, widest = [], 0, 0
    for k, (h, w) in enumerate(shapes):
        widest = max(widest, h, w)
        if k > start and (k + 1 - start) * widest * crop_pixels > RESAMPLE_ELEMENTS:
            runs.append((start, k))
            start, widest = k, max(h, w)
    return [*runs, (start, len(shapes))]


def color_jitter(x: torch.Tensor, apply: torch.Tensor, order: torch.Tensor, factors: torch.Tensor,
                 kornia: Any) -> torch.Tensor:
    """torchvision's ColorJitter per sample: the four operations in that sample's own random order."""
    enhance = kornia.enhance
    ops = (enhance.adjust_brightness_accumulative, enhance.adjust_contrast_with_mean_subtraction,
           enhance.adjust_saturation_with_gray_subtraction,
           lambda img, f: enhance.adjust_hue(img, f * (2 * math.pi)))  # hue shift in turns -> radians
    x = x.clone()
    for step in range(4):
        for op, fn in enumerate(ops):
            chosen = torch.nonzero(apply & (order[:, step] == op)).squeeze(1)  # on the CPU: no device sync
            if len(chosen):
                idx = chosen.to(x.device, non_blocking=True)
                x[idx] = fn(x[idx], factors[chosen, op].to(x.device, non_blocking=True))
    return x


def gaussian_blur(x: torch.Tensor, apply: torch.Tensor, radius: torch.Tensor, kernel_size: int,
                  kornia: Any) -> torch.Tensor:
    """PIL's GaussianBlur(radius) on the chosen samples, each with its own radius; edges replicated as PIL does."""
    chosen = torch.nonzero(apply).squeeze(1)
    if not len(chosen):
        return x
    idx = chosen.to(x.device, non_blocking=True)
    kernels = pil_blur_kernels(radius[chosen], kernel_size).to(x.device, non_blocking=True)
    x = x.clone()
    x[idx] = kornia.filters.filter2d_separable(x[idx], kernels, kernels, border_type="replicate")
    return x


def pil_blur_kernels(radius: torch.Tensor, size: int) -> torch.Tensor:
    """float (N, size) 1-D kernels of PIL's GaussianBlur: three box blurs whose variance is radius**2.

    PIL (ImagingGaussianBlur) widens a box of 2l+1 taps by a fraction `a` at each end so that three
    passes have exactly the Gaussian's variance; the kernel is that box convolved with itself twice.
    A sampled Gaussian of the same sigma would be nearly the identity below sigma 0.5, where PIL's
    box still blurs, so PIL's kernel is rebuilt instead.
    """
    sigma2 = radius.double() ** 2 / 3  # per pass
    box_len = torch.sqrt(12 * sigma2 + 1)
    whole = torch.floor((box_len - 1) / 2)
    frac = (2 * whole + 1) * (whole * (whole + 1) - 3 * sigma2) / (6 * (sigma2 - (whole + 1) ** 2))
    half = (size - 1) // 6  # box half-width that three passes stretch to `size` taps
    offsets = torch.arange(-half, half + 1, dtype=torch.float64).abs()
    box = torch.where(offsets <= whole[:, None], 1.0, torch.where(offsets == whole[:, None] + 1, frac[:, None], 0.0))
    box = box / box.sum(-1, keepdim=True)
    n = len(radius)
    twice = F.conv1d(box[None], box.flip(-1)[:, None], padding=2 * half, groups=n)
    thrice = F.conv1d(twice, box.flip(-1)[:, None], padding=2 * half, groups=n)[0]
    return thrice.float()


def _size_groups(specs: list[ViewSpec]) -> list[tuple[int, list[int]]]:
    """[(size, crop columns of that size)] in crop order: the global crops, then the local ones."""
    groups: dict[int, list[int]] = {}
    for c, spec in enumerate(specs):
        groups.setdefault(spec.size, []).append(c)
    return list(groups.items())


def _select(p: CropParams, columns: list[int]) -> CropParams:
    """The parameters of `columns`, flattened crop-major to match `resized_crops(...).flatten(0, 1)`."""
    def flat(t: torch.Tensor) -> torch.Tensor:
        return t[:, columns].transpose(0, 1).flatten(0, 1)
    return CropParams(**{name: flat(getattr(p, name)) for name in p.__dataclass_fields__})


def _mask(flags: torch.Tensor, device: torch.device) -> torch.Tensor:
    return flags.to(device, non_blocking=True).view(-1, 1, 1, 1)
