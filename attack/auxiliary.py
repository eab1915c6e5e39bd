"""The attacker's auxiliary data: images it may query the client model with.

The black-box model-inversion attack (He, Zhang & Lee 2019; OpenMined's PySyft split-learning
demo) trains an inverse network on (auxiliary image, smashed activation) pairs, so the
auxiliary set decides how well the attack transfers to the private target data. The choices
span the range from a lower to an upper bound:

``noise``          uniform noise: the lower bound, nothing image-like; any image shape.
``holdout``        a disjoint slice of the target dataset (the same-distribution upper bound), any
                   image shape; passed in as ``holdout=`` (the lab's ``target.holdout.x``).
                   ``mnist-holdout`` is its old name.
``letters``        synthetic handwritten-style letters (default): the offline stand-in for the
                   EMNIST letters the original attack used; same "pen strokes on black" domain as
                   MNIST, but no digit ever appears.
``emnist-letters`` the real EMNIST letters (needs the optional ``vision`` extra and a download).
``digits-uci``     scikit-learn's 1,797 8x8 UCI digits upscaled to MNIST style: same classes,
                   very different acquisition.

Every set comes back as float32 ``(n, C, H, W)`` in ``[0, 1]`` for the target's ``input_shape``.
``letters``, ``emnist-letters`` and ``digits-uci`` are MNIST-format sets, (1, 28, 28) grayscale
preprocessed the MNIST way by :func:`mnist_center` so the attack never learns "this is not
MNIST" from framing alone; asking for one against any other target shape is a ConfigError,
never a silent resize.
"""

from __future__ import annotations

import fnmatch
import functools
import string
from pathlib import Path
from types import ModuleType

import matplotlib
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from protocol.errors import ConfigError, DataUnavailableError, ShapeError

AUX_CHOICES = ("letters", "digits-uci", "holdout", "mnist-holdout", "noise", "emnist-letters")
#: Sets that are images in MNIST's own format, and that format.
MNIST_STYLE = frozenset({"letters", "digits-uci", "emnist-letters"})
MNIST_SHAPE = (1, 28, 28)

Box = tuple[int, int, int, int]  # PIL bounding box: left, top, right, bottom

_SIDE = MNIST_SHAPE[1]  # MNIST image side, what mnist_center produces
_BOX = 20  # MNIST fits each digit's bounding box into 20x20 before centring
# MNIST puts the centre of mass at pixel (14, 14), not at the geometric centre 13.5: the
# mean COM over MNIST training digits is (13.98, 13.99) in scipy's index coordinates.
_COM_TARGET = 14.0
_INK_EPS = 0.5 / 255  # below half a grey level a pixel is float dust, not ink

# --- letter renderer parameters (canvas pixels unless noted) -----------------------------------
_CANVAS = 64  # render big, then let mnist_center downsample: anti-aliased, sub-pixel strokes
_FONT_SIZE = 36  # reference size at which fonts are loaded
_MEASURE_SIZE = 96  # size at which each font's stroke widths are measured (once)
# Each glyph is drawn at the font size that makes its longer side about this many canvas px:
# at least twice the 20 px box, so mnist_center always shrinks (never blurs by enlarging a
# small lowercase letter), and small enough that rotation and shear stay on the canvas.
_GLYPH_EXTENT = 36
_MIN_HAIRLINE = 3.0  # canvas px (~1.5 px at 28x28) a bold font's thinnest strokes keep
_LETTERS = string.ascii_letters
# Only text fonts with Latin letters; symbol fonts (cmex10, cmsy10, STIXSiz*, STIXNonUni*),
# math italics (cmmi10), the glyph-subset "Display" fonts and LastResort are left out.
_FONT_PATTERNS = (
    "DejaVuSans.ttf",
    "DejaVuSans-*.ttf",
    "DejaVuSansMono*.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-*.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
    "cmb10.ttf",
    "STIXGeneral*.ttf",
)
# Final stroke thickness in 28x28 pixels; MNIST's (ink sum / skeleton length) is ~2.9,
# 10th-90th percentile 2.0-4.0.
_STROKE_RANGE = (1.7, 3.3)
_MAX_ROTATION_DEG = 15.0
_MAX_SHEAR = 0.3
_SCALE_RANGE = (0.9, 1.1)
_ASPECT_RANGE = (0.8, 1.25)
# Elastic distortion (Simard et al. 2003): a random field smoothed with a Gaussian. It is drawn
# on a coarse grid and upsampled, which is the same smooth field at a fraction of the cost of
# filtering at canvas resolution (sigma 2 coarse cells = 8 canvas px ~ Simard's 4 px at 28).
_ELASTIC_GRID = 16
_ELASTIC_SIGMA = 2.0
_ELASTIC_RMS_RANGE = (0.8, 2.5)  # RMS displacement in canvas pixels
_CHUNK = 128  # images distorted per vectorised map_coordinates call

_UCI_UPSCALE = 32  # 8x8 UCI digits are upscaled to this before mnist_center brings them to 20
_UCI_INK_RAMP = (0.25, 0.65)  # upscaled grey levels mapped to background .. full ink


def load_aux(
    name: str,
    n: int,
    seed: int,
    input_shape: tuple[int, int, int],
    *,
    holdout: NDArray[np.float32] | None = None,
    data_dir: str | Path | None = None,
    download: bool = False,
    emnist: np.ndarray | None = None,
) -> NDArray[np.float32]:
    """Return the auxiliary set ``name`` as float32 ``(n', C, H, W)`` in ``[0, 1]``.

    ``input_shape`` is the target's (C, H, W); an MNIST-format set against any other shape is
    a ConfigError naming both. ``n' == n`` for every set except ``holdout``, which returns
    ``holdout`` (N, C, H, W) whole and ignores ``n``. ``digits-uci`` also returns exactly
    ``n``: beyond the 1,797 originals it adds randomly jittered copies (see
    :func:`_digits_uci`). Deterministic for a ``seed``.

    ``emnist-letters``: ``emnist`` is the EMNIST letters images already read by the caller,
    (M, 28, 28) or (M, 1, 28, 28), upright (MNIST orientation), uint8 0-255 or float 0-1;
    without it they are read through torchvision from ``data_dir`` (``download`` to fetch).
    """
    shape = check_aux(name, n, input_shape)
    rng = np.random.default_rng(seed)
    if name == "letters":
        return render_letters(n, seed)
    if name == "digits-uci":
        return _digits_uci(n, rng)
    if name in ("holdout", "mnist-holdout"):
        return _holdout(name, holdout, shape)
    if name == "noise":
        return rng.random((n, *shape), dtype=np.float32)
    if emnist is not None:
        return _emnist_from_array(emnist, n, rng)
    return _emnist_letters(n, rng, data_dir, download)


def check_aux(name: str, n: int, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The checks ``load_aux`` makes before it loads anything (ConfigError), so a caller that
    loads later (the lab renders letters on a spare core) still fails at once; returns the
    target's (C, H, W)."""
    if name not in AUX_CHOICES:
        raise ConfigError(
            f"unknown auxiliary set {name!r} for --aux: choose one of {', '.join(AUX_CHOICES)}"
        )
    if n < 1:
        raise ConfigError(f"--aux-size must be at least 1, got {n}")
    shape = _check_shape(input_shape)
    if name in MNIST_STYLE and shape != MNIST_SHAPE:
        raise ConfigError(
            f"--aux {name} is {_fmt(MNIST_SHAPE)} grayscale, the target's images are "
            f"{_fmt(shape)}: use --aux holdout or noise"
        )
    return shape


def _check_shape(input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"auxiliary data needs a (C, H, W) input shape, got {input_shape}")
    return shape  # type: ignore[return-value]


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


# --- MNIST-style preprocessing -----------------------------------------------------------------


def mnist_center(img: np.ndarray) -> NDArray[np.float32]:
    """Preprocess one 2-D grayscale image (ink bright, background 0) the way MNIST was made.

    Float input is read as ink on a [0, 1] scale; integer input is scaled by its dtype's
    maximum (uint8 0-255 -> [0, 1]). The ink's bounding box is resized, keeping its aspect
    ratio and anti-aliased, so its longer side is 20 px, then pasted into 28x28 so that the
    centre of mass lands on pixel (14, 14) to the nearest pixel, as in MNIST. An image with no
    ink gives zeros.
    """
    if img.ndim != 2:
        raise ShapeError(f"mnist_center needs a 2-D image, got shape {img.shape}")
    ink = _as_unit_float(img)
    crop = _ink_crop(ink)
    if crop is None:
        return np.zeros((_SIDE, _SIDE), np.float32)
    box = _fit_box(crop)
    return _paste_by_mass(box)


def _as_unit_float(img: np.ndarray) -> NDArray[np.float32]:
    if np.issubdtype(img.dtype, np.integer):
        scaled = img.astype(np.float32) / np.float32(np.iinfo(img.dtype).max)
    else:
        scaled = img.astype(np.float32)
    return np.clip(scaled, 0.0, 1.0)


def _ink_crop(ink: NDArray[np.float32]) -> NDArray[np.float32] | None:
    mask = ink > _INK_EPS
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _fit_box(crop: NDArray[np.float32]) -> NDArray[np.float32]:
    h, w = crop.shape
    scale = _BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL wants (width, height)
    # Shrinking uses BOX, i.e. area coverage: the anti-aliasing MNIST itself used, which keeps
    # stroke cores saturated (BILINEAR's wider kernel greys them). Enlarging a tiny crop uses
    # BILINEAR, which interpolates smoothly where BOX would give blocky pixels.
    resample = Image.Resampling.BOX if scale < 1.0 else Image.Resampling.BILINEAR
    resized = Image.fromarray(np.ascontiguousarray(crop), mode="F").resize(size, resample)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _paste_by_mass(box: NDArray[np.float32]) -> NDArray[np.float32]:
    out = np.zeros((_SIDE, _SIDE), np.float32)
    if box.sum() <= 0.0:
        return out
    cy, cx = ndimage.center_of_mass(box)
    top, left = round(_COM_TARGET - cy), round(_COM_TARGET - cx)
    # Lopsided glyphs can push part of the box past the edge; MNIST clips those too.
    h, w = box.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, _SIDE), min(left + w, _SIDE)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = box[y0 - top : y1 - top, x0 - left : x1 - left]
    return out


# --- synthetic handwritten-style letters -------------------------------------------------------


def render_letters(n: int, seed: int) -> NDArray[np.float32]:
    """Render ``n`` handwritten-style letters a-z / A-Z as float32 ``(n, 1, 28, 28)`` in [0, 1].

    Each sample draws a font (matplotlib's bundled text fonts), a letter, a target stroke
    thickness (thick like MNIST pen strokes), a rotation, shear, scale/aspect jitter and an
    elastic distortion, then goes through :func:`mnist_center`. Deterministic for a ``seed``.
    """
    if n < 1:
        raise ConfigError(f"--aux-size must be at least 1, got {n}")
    fonts = _letter_fonts()
    rng = np.random.default_rng(seed)
    font_idx = rng.integers(len(fonts), size=n)
    letter_idx = rng.integers(len(_LETTERS), size=n)
    stroke = rng.uniform(*_STROKE_RANGE, size=n)
    out = np.empty((n, *MNIST_SHAPE), np.float32)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        glyphs = np.stack(
            [
                _render_glyph(int(font_idx[i]), _LETTERS[letter_idx[i]], float(stroke[i]))
                for i in range(start, stop)
            ]
        )
        warped = _distort(glyphs, rng)
        for j, img in enumerate(warped):
            out[start + j, 0] = mnist_center(img)
    return out


def _font_dir() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=1)
def _letter_fonts() -> tuple[ImageFont.FreeTypeFont, ...]:
    """Load (once) every bundled font that matches the text-font patterns and has all letters."""
    paths = sorted(
        p
        for p in _font_dir().glob("*.ttf")
        if any(fnmatch.fnmatchcase(p.name, pat) for pat in _FONT_PATTERNS)
    )
    fonts = [ImageFont.truetype(str(p), _FONT_SIZE) for p in paths]
    fonts = [f for f in fonts if _has_all_letters(f)]
    if not fonts:
        raise DataUnavailableError(
            f"--aux letters found no usable fonts under {_font_dir()}: reinstall matplotlib"
        )
    return tuple(fonts)


def _has_all_letters(font: ImageFont.FreeTypeFont) -> bool:
    # A missing glyph renders as the font's .notdef box: identical for every missing character.
    notdef = bytes(font.getmask("\uffff"))
    return all(
        font.getbbox(c)[2] > font.getbbox(c)[0] and bytes(font.getmask(c)) != notdef
        for c in _LETTERS
    )


@functools.cache
def _font_strokes(font_idx: int) -> tuple[float, float]:
    """(typical, hairline) stroke width of a font at the reference size, in canvas px.

    Measured once per font on a few letters, at a large size because binary distances are
    only accurate to about a pixel. Typical: the median of twice the distance-to-background
    along stroke centre lines, what an outline must add to. Hairline: twice the erosion depth
    at which a letter first falls apart, the limit thinning must respect (high-contrast serif
    fonts break there first).
    """
    font = _font_at(font_idx, _MEASURE_SIZE)
    widths, hairlines = [], []
    for letter in "olnHIeS":
        ink = _draw(font, letter, font.getbbox(letter), 0, canvas=3 * _MEASURE_SIZE // 2) > 0.5
        dist = ndimage.distance_transform_edt(ink)
        # Distances run to the nearest background pixel centre, half a pixel too far on each
        # side (hence - 1); ridge pixels at distance 1 are edge jaggies, not stroke centres.
        ridge = _ridge(dist) & (dist >= 2.0)
        widths.append(2.0 * dist[ridge] - 1.0)
        hairlines.append(2.0 * _breaking_depth(dist) - 1.0)
    scale = _FONT_SIZE / _MEASURE_SIZE
    return float(np.median(np.concatenate(widths))) * scale, float(min(hairlines)) * scale


def _ridge(dist: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Pixels that are a maximum of ``dist`` across the stroke, in any of four directions.

    A plain 3x3 local-maximum test misses most of a slanted stroke's centre line (it rises
    along the stroke); strict on one side so flat runs along an edge do not count.
    """
    padded = np.pad(dist, 1)
    h, w = dist.shape
    ridge = np.zeros(dist.shape, dtype=bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        ahead = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        behind = padded[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        ridge |= ((dist > ahead) & (dist >= behind)) | ((dist >= ahead) & (dist > behind))
    return ridge


def _breaking_depth(dist: NDArray[np.float64]) -> float:
    """Smallest erosion depth (px, half-pixel steps) that changes the glyph's real pieces.

    Only pieces holding at least 5% of the ink count: eroding a stroke to its centre line
    first leaves a string of crumbs, which says nothing about a hairline giving way.
    """
    ink = float((dist > 0).sum())

    def pieces(depth: float) -> int:
        labels, count = ndimage.label(dist > depth)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        return int((sizes >= 0.05 * ink).sum())

    whole = pieces(0.0)
    for depth in np.arange(0.5, dist.max() + 0.5, 0.5):
        if pieces(float(depth)) != whole:
            return float(depth)
    return float(dist.max())


@functools.cache
def _font_at(font_idx: int, size: int) -> ImageFont.FreeTypeFont:
    return _letter_fonts()[font_idx].font_variant(size=size)


def _extent(box: Box) -> int:
    left, top, right, bottom = box
    return max(right - left, bottom - top, 1)


@functools.cache
def _glyph_layout(font_idx: int, letter: str) -> tuple[int, Box]:
    """Font size giving ``letter`` a longer side of about _GLYPH_EXTENT px, and its ink box."""
    reference = _letter_fonts()[font_idx].getbbox(letter)
    size = max(8, round(_FONT_SIZE * _GLYPH_EXTENT / _extent(reference)))
    return size, _font_at(font_idx, size).getbbox(letter)


def _render_glyph(font_idx: int, letter: str, stroke: float) -> NDArray[np.float32]:
    """Draw ``letter`` centred on the canvas with strokes that end up ``stroke`` px wide at 28x28.

    mnist_center scales the glyph's longer side E to 20 px, so a stroke t canvas px wide ends
    up t * 20 / E. An outline of k px per side adds 2k to both t and E; solving for k gives the
    outline below. A fractional k is drawn by blending the floor and ceiling outlines (their
    ring becomes sub-pixel width after downsampling). A negative k, a bold font too heavy for
    the target, erodes instead, but only as far as the font's hairlines can afford.
    """
    size, box = _glyph_layout(font_idx, letter)
    font = _font_at(font_idx, size)
    typical, hairline = (w * size / _FONT_SIZE for w in _font_strokes(font_idx))
    ratio = stroke / _BOX
    k = (ratio * _extent(box) - typical) / (2.0 * (1.0 - ratio))
    if k >= 0.0:
        lo = int(np.floor(k))
        return _blend(_draw(font, letter, box, lo), _draw(font, letter, box, lo + 1), k - lo)
    thinning = min(-k, max(0.0, (hairline - _MIN_HAIRLINE) / 2.0))
    lo = int(np.floor(thinning))
    base = _erode(_draw(font, letter, box, 0), lo)
    return _blend(base, _erode(base, 1), thinning - lo)


def _blend(a: NDArray[np.float32], b: NDArray[np.float32], weight: float) -> NDArray[np.float32]:
    return (1.0 - weight) * a + weight * b if weight > 0.0 else a


def _erode(img: NDArray[np.float32], steps: int) -> NDArray[np.float32]:
    cross = ndimage.generate_binary_structure(2, 1)
    for _ in range(steps):
        img = ndimage.grey_erosion(img, footprint=cross)
    return img


def _draw(
    font: ImageFont.FreeTypeFont,
    letter: str,
    box: Box,
    stroke_width: int,
    canvas: int = _CANVAS,
) -> NDArray[np.float32]:
    """Render ``letter`` with its ink box ``box`` (from ``font.getbbox``) centred on the canvas.

    Centring the ink, not the text anchor, keeps descenders such as 'g' on the canvas under
    rotation and shear about the centre. An outline grows the box equally on every side, so
    the centre of the stroke-less box is right for any ``stroke_width``.
    """
    left, top, right, bottom = box
    origin = (canvas / 2 - (left + right) / 2, canvas / 2 - (top + bottom) / 2)
    image = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(image).text(
        origin, letter, font=font, fill=255, stroke_width=stroke_width, stroke_fill=255
    )
    return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def _distort(images: NDArray[np.float32], rng: np.random.Generator) -> NDArray[np.float32]:
    """Apply a random affine map plus a smooth elastic field to each image of a (B, H, W) stack.

    One 2-D map_coordinates call warps the whole stack, which removes the per-image Python
    loop: the images are stacked into one tall array with a zero row above each, and every
    source row is clamped into its own image's band so interpolation never mixes two images.
    """
    b, h, w = images.shape
    inverse = _random_inverse_affines(b, rng)  # (B, 2, 2): output offset -> source offset
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    grid = np.stack(np.mgrid[0:h, 0:w], axis=0).reshape(2, -1) - centre[:, None]  # (2, HW)
    source = np.einsum("bij,jp->bip", inverse, grid) + centre[None, :, None]  # (B, 2, HW)
    source += _elastic_fields(b, h, w, rng).reshape(b, 2, -1)
    tall = np.zeros((b * (h + 1) + 1, w), np.float32)
    tall[:-1].reshape(b, h + 1, w)[:, 1:] = images
    # Rows -1 and h of an image are the zero rows around it: clamping there reads background.
    rows = np.clip(source[:, 0], -1.0, float(h)) + 1.0 + (h + 1) * np.arange(b)[:, None]
    coords = np.stack([rows.ravel(), source[:, 1].ravel()])
    warped = ndimage.map_coordinates(tall, coords, order=1, mode="grid-constant", cval=0.0)
    return warped.reshape(b, h, w).astype(np.float32)


def _random_inverse_affines(b: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Inverse of rotate . shear . scale for each sample, in (row, col) coordinates."""
    theta = np.deg2rad(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG, b))
    shear = rng.uniform(-_MAX_SHEAR, _MAX_SHEAR, b)
    scale = rng.uniform(*_SCALE_RANGE, b)
    aspect = rng.uniform(*_ASPECT_RANGE, b)
    cos, sin = np.cos(theta), np.sin(theta)
    rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    # Horizontal shear proportional to height: the slant of handwriting.
    shear_m = np.zeros((b, 2, 2))
    shear_m[:, 0, 0] = shear_m[:, 1, 1] = 1.0
    shear_m[:, 1, 0] = shear
    stretch = np.zeros((b, 2, 2))
    stretch[:, 0, 0] = scale * np.sqrt(aspect)
    stretch[:, 1, 1] = scale / np.sqrt(aspect)
    return np.linalg.inv(rotate @ shear_m @ stretch)


def _elastic_fields(b: int, h: int, w: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Smooth random displacement fields (B, 2, H, W), each with a random RMS in canvas px."""
    g = _ELASTIC_GRID
    coarse = rng.uniform(-1.0, 1.0, (b, 2, g, g))
    coarse = ndimage.gaussian_filter(coarse, sigma=(0, 0, _ELASTIC_SIGMA, _ELASTIC_SIGMA))
    rms = np.sqrt((coarse**2).mean(axis=(2, 3), keepdims=True))
    # The RMS range is tuned for the letter canvas; smaller images get proportionally less.
    amplitude = rng.uniform(*_ELASTIC_RMS_RANGE, (b, 1, 1, 1)) * (h / _CANVAS)
    coarse *= amplitude / np.maximum(rms, 1e-12)
    # Separable linear upsampling as two small matrix products: ~20x faster than ndimage.zoom.
    return _upsample_matrix(h, g) @ coarse @ _upsample_matrix(w, g).T


@functools.lru_cache(maxsize=8)
def _upsample_matrix(fine: int, coarse: int) -> NDArray[np.float64]:
    """(fine, coarse) linear-interpolation weights, cell centres aligned, edges clamped."""
    pos = np.clip((np.arange(fine) + 0.5) * coarse / fine - 0.5, 0.0, coarse - 1.0)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, coarse - 1)
    frac = pos - lo
    weights = np.zeros((fine, coarse))
    weights[np.arange(fine), lo] += 1.0 - frac
    weights[np.arange(fine), hi] += frac
    return weights


# --- the other auxiliary sets ------------------------------------------------------------------


def _digits_uci(n: int, rng: np.random.Generator) -> NDArray[np.float32]:
    """scikit-learn's UCI digits, MNIST-style; exactly ``n`` images.

    ``n <= 1797``: a seeded random subset of the originals. ``n > 1797``: all 1,797 originals
    (shuffled) followed by ``n - 1797`` copies of randomly chosen originals, each given the same
    small random affine + elastic jitter the letter renderer uses, so the set reaches ``n``
    without repeating an image exactly.
    """
    from sklearn.datasets import load_digits  # lazy: sklearn import is slow and rarely needed

    raw = load_digits().images / 16.0  # (1797, 8, 8), 0..16 -> [0, 1]
    order = rng.permutation(len(raw))
    if n <= len(raw):
        return _uci_to_mnist(_upscale_uci(raw[order[:n]]))
    base = _upscale_uci(raw[order])
    extra = base[rng.integers(len(base), size=n - len(base))]
    jittered = np.concatenate(
        [_distort(extra[i : i + _CHUNK], rng) for i in range(0, len(extra), _CHUNK)]
    )
    return _uci_to_mnist(np.concatenate([base, jittered]))


def _upscale_uci(images: NDArray[np.float64]) -> NDArray[np.float32]:
    """Bicubic-upscale 8x8 digits, then steepen the grey ramp into MNIST-like crisp strokes.

    Upscaling 8 px alone gives soft blobs; MNIST strokes are saturated with a ~1 px edge, so
    the upscaled intensity is mapped linearly from _UCI_INK_RAMP onto [0, 1].
    """
    side = _UCI_UPSCALE
    big = np.stack(
        [
            np.asarray(
                Image.fromarray(img.astype(np.float32), mode="F").resize(
                    (side, side), Image.Resampling.BICUBIC
                )
            )
            for img in images
        ]
    )
    lo, hi = _UCI_INK_RAMP
    return np.clip((big - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _uci_to_mnist(images: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.stack([mnist_center(img)[None] for img in images]).astype(np.float32)


def _holdout(name: str, holdout: np.ndarray | None,
             shape: tuple[int, int, int]) -> NDArray[np.float32]:
    if holdout is None:
        raise ConfigError(
            f"--aux {name} needs the target's holdout split: pass holdout=target.holdout.x"
        )
    arr = np.asarray(holdout, dtype=np.float32)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != shape:
        raise ShapeError(f"--aux {name} needs holdout images (N, {', '.join(map(str, shape))}), "
                         f"got {arr.shape}")
    return arr


def _emnist_from_array(images: np.ndarray, n: int,
                       rng: np.random.Generator) -> NDArray[np.float32]:
    """``n`` of the caller's upright EMNIST letters, picked as from the torchvision set."""
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or arr.shape[1:] != MNIST_SHAPE[1:]:
        raise ShapeError(f"--aux emnist-letters needs (M, 28, 28) letters, got {images.shape}")
    if n > len(arr):
        raise ConfigError(f"--aux-size {n} exceeds the {len(arr)} EMNIST letters available")
    picked = arr[rng.choice(len(arr), size=n, replace=False)]
    return _as_unit_float(picked)[:, None]


def _emnist_letters(
    n: int, rng: np.random.Generator, data_dir: str | Path | None, download: bool
) -> NDArray[np.float32]:
    datasets = _torchvision_datasets()
    if data_dir is None:
        raise DataUnavailableError(
            "--aux emnist-letters needs --data-dir (a folder holding or receiving EMNIST)"
        )
    try:
        emnist = datasets.EMNIST(root=str(data_dir), split="letters", train=True, download=download)
    except (RuntimeError, OSError) as exc:
        raise _dataset_error("EMNIST", data_dir, download, exc) from exc
    raw = np.asarray(emnist.data, dtype=np.uint8)
    if n > len(raw):
        raise ConfigError(f"--aux-size {n} exceeds the {len(raw)} EMNIST letters available")
    picked = raw[rng.choice(len(raw), size=n, replace=False)]
    # EMNIST stores images transposed relative to MNIST (column-major from the NIST source).
    upright = np.ascontiguousarray(picked.transpose(0, 2, 1))
    return (upright.astype(np.float32) / np.float32(255.0))[:, None]


def _torchvision_datasets() -> ModuleType:
    try:
        import torchvision  # lazy: the optional 'vision' extra
    except ImportError as exc:
        raise DataUnavailableError(
            "--aux emnist-letters needs the 'vision' extra: pip install -e '.[vision]'"
        ) from exc
    return torchvision.datasets


def _dataset_error(
    what: str, data_dir: str | Path, download: bool, exc: Exception
) -> DataUnavailableError:
    reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    if download:
        return DataUnavailableError(f"could not download {what} into {data_dir}: {reason}")
    return DataUnavailableError(
        f"{what} not found under --data-dir {data_dir}: pass --download to fetch it"
    )
