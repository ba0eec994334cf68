"""Probes that measure frames (generated or real) against the procedural ground-truth world.

* :func:`phase_correlation`, :func:`camera_motion` and :func:`motion_direction` read the camera motion
  from a clip's frames, so a generated clip can be checked for following its action prompt.
* :func:`biome_of` and :func:`condition_of` classify frames by simple colour statistics with centroids
  taken from the ground-truth world itself, so a clip can be checked for following its scene and light.
* :func:`frame_quality` scores how much frames look like real frames of a biome and light.

Frames are RGB uint8 arrays, one frame ``(H, W, 3)`` or a clip ``(T, H, W, 3)``.
"""

from __future__ import annotations

import functools

import numpy as np

from envs.procedural.world import ACTIONS, BIOMES, CONDITIONS, MOVES, ProceduralWorld, WorldConfig

__all__ = [
    "biome_of",
    "camera_motion",
    "classify",
    "color_features",
    "condition_of",
    "frame_quality",
    "motion_direction",
    "phase_correlation",
    "reference_frames",
    "with_lead_in",
]

# Seed of the ground-truth world the classifier centroids are computed from; tests hold out other seeds.
CENTROID_SEED = 7
CENTROID_FRAMES = 200
# Smallest per-statistic scale of classifier distances, in 0..1 colour units.
SPREAD_FLOOR = 0.01
# Half-width in pixels of the central square that phase correlation ignores (the player sprite is 6x6).
PLAYER_HOLE = 4
# Frames apart whose shift camera_motion reads.
MOTION_LAG = 4
# Side in pixels of the squares color_features averages before it reads contrast.
CONTRAST_POOL = 4
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _clip(frames: np.ndarray) -> np.ndarray:
    """A single frame or a clip as a (T, H, W, 3) array."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"expected RGB frames (H, W, 3) or (T, H, W, 3), got shape {frames.shape}")
    return frames


def _gray(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) @ _LUMA


@functools.lru_cache(maxsize=8)
def _window(height: int, width: int) -> np.ndarray:
    """A Hann window with a hole over the centre, where the player stands still while the world moves."""
    hann = np.outer(np.hanning(height), np.hanning(width))
    rows = np.abs(np.arange(height) - (height - 1) / 2)[:, None]
    cols = np.abs(np.arange(width) - (width - 1) / 2)[None, :]
    # Zero over the sprite, ramping up to one over a few pixels so the hole's border adds no hard edge.
    hole = np.clip((np.maximum(rows, cols) - PLAYER_HOLE) / PLAYER_HOLE, 0.0, 1.0)
    return (hann * hole).astype(np.float32)


def phase_correlation(a: np.ndarray, b: np.ndarray, whiten: bool = True) -> tuple[int, int]:
    """The integer shift ``(dx, dy)`` that moves frame ``a``'s content onto frame ``b``'s.

    ``b[y, x] ≈ a[y - dy, x - dx]``: positive ``dx`` means the content moved right on screen, positive
    ``dy`` that it moved down. Walking east for ``k`` frames at ``speed`` pixels per frame gives
    ``(-speed * k, 0)``; walking north gives ``(0, +speed * k)``. Shifts are wrapped into
    ``[-W/2, W/2)`` x ``[-H/2, H/2)``. The square of half-width ``PLAYER_HOLE`` at the centre, where the
    player stands still on screen, is left out.

    ``whiten`` (phase correlation proper) gives every frequency one vote: an exact, sharp peak on crisp
    frames. Without it (plain windowed cross-correlation) frequencies vote by their power, which keeps
    the peak on blurred frames, where the fine frequencies whitening would amplify hold only noise.
    """
    ga, gb = _gray(np.asarray(a)), _gray(np.asarray(b))
    if ga.shape != gb.shape or ga.ndim != 2:
        raise ValueError(f"need two frames of the same shape, got {np.shape(a)} and {np.shape(b)}")
    height, width = ga.shape
    # The window hides the frame borders (whose wrap-around would look like a zero shift) and the player,
    # who stays put on screen and would pull the peak to zero.
    window = _window(height, width)
    fa = np.fft.rfft2((ga - ga.mean()) * window)
    fb = np.fft.rfft2((gb - gb.mean()) * window)
    cross = np.conj(fa) * fb
    if whiten:  # keep only the phase, so every frequency votes equally and the peak is sharp
        cross = cross / (np.abs(cross) + 1e-9)
    surface = np.fft.irfft2(cross, s=(height, width))
    dy, dx = np.unravel_index(int(np.argmax(surface)), surface.shape)
    dx = dx - width if dx >= width // 2 else dx
    dy = dy - height if dy >= height // 2 else dy
    return int(dx), int(dy)


def camera_motion(frames: np.ndarray, lag: int = MOTION_LAG) -> np.ndarray:
    """The camera's mean motion ``(dx, dy)`` in pixels per frame over a clip; zero for a single frame.

    The camera follows the player, so the content moves opposite to the walk: the camera's motion is the
    negated screen shift. Shifts are read between frames ``lag`` apart (first and last, in a shorter
    clip) by cross-correlation without whitening, so that blurred frames, such as a small decoder's,
    still show their motion: a few pixels of blur hide a 2-pixel step between neighbours more than an
    8-pixel one.
    """
    clip = _clip(frames)
    lag = min(lag, len(clip) - 1)
    if lag < 1:
        return np.zeros(2)
    shifts = [phase_correlation(clip[i], clip[i + lag], whiten=False) for i in range(len(clip) - lag)]
    return -np.mean(shifts, axis=0) / lag


def with_lead_in(previous: np.ndarray | None, frames: np.ndarray, lead: int = MOTION_LAG) -> np.ndarray:
    """A block's frames after the last `lead` frames of the block before it.

    Motion is read between frames MOTION_LAG apart, so a block of few frames (4, with blocks of one
    latent frame) holds no such pair of its own; with the default lead-in every frame of the block is
    compared with the one MOTION_LAG before it, whatever the block size. A lead-in of 1 reads only the
    block's own motion: every pair ends in the block and none starts before the frame just before it.
    """
    if previous is None:
        return frames
    return np.concatenate([previous[len(previous) - lead :], frames])


def motion_direction(frames: np.ndarray, min_shift: float = 0.5) -> str:
    """The action that best explains a clip's :func:`camera_motion`; 'idle' below ``min_shift`` px a frame."""
    camera = camera_motion(frames)
    if np.hypot(*camera) < min_shift:
        return "idle"
    moves = [action for action in ACTIONS if MOVES[action] != (0, 0)]
    scores = [float(np.dot(camera, MOVES[action])) for action in moves]
    return moves[int(np.argmax(scores))]


def color_features(frames: np.ndarray) -> np.ndarray:
    """Per-frame colour statistics in 0..1, (T, 8): mean R, G, B; contrast: std of R, G, B and the 5th
    and 95th luma percentile, all of the frame averaged over squares of ``CONTRAST_POOL`` pixels.

    Means carry the biome's hue and the light level; contrast is what sets fog apart from a bright day
    over pale ground. Fog halves contrast at every scale, while a decoder's blur takes away only the
    finest detail, so contrast read on the averaged frame keeps a blurred day a day. The means are of
    the whole frame; the averaged frame drops the last rows and columns that do not fill a square.
    """
    clip = _clip(frames).astype(np.float32) / 255.0
    count, height, width, _ = clip.shape
    pool = CONTRAST_POOL
    if height < pool or width < pool:
        raise ValueError(f"need frames of at least {pool}x{pool} pixels, got {height}x{width}")
    rows, cols = height // pool, width // pool
    squares = clip[:, : rows * pool, : cols * pool].reshape(count, rows, pool, cols, pool, 3)
    coarse = squares.mean(axis=(2, 4))
    luma = (coarse @ _LUMA).reshape(count, -1)
    percentiles = np.percentile(luma, (5.0, 95.0), axis=1).T
    return np.concatenate([clip.mean(axis=(1, 2)), coarse.std(axis=(1, 2)), percentiles], axis=1)


def reference_frames(
    biome: str, condition: str, count: int, seed: int = 0, config: WorldConfig | None = None
) -> np.ndarray:
    """Ground-truth frames of a biome and light, each at a random place of the world with ``seed``."""
    world = ProceduralWorld(config or WorldConfig(), seed=seed, biome=biome, condition=condition)
    size = world.config.size
    frames = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        world.teleport(biome)
        frames[i] = world.render()
    return frames


@functools.lru_cache(maxsize=1)
def _centroids() -> tuple[np.ndarray, np.ndarray, tuple[tuple[str, str], ...]]:
    """Class centroids for every (biome, condition) pair, and the feature scale for distances."""
    labels = tuple((b, c) for b in BIOMES for c in CONDITIONS)
    features = [
        color_features(reference_frames(b, c, CENTROID_FRAMES, seed=CENTROID_SEED + i))
        for i, (b, c) in enumerate(labels)
    ]
    centroids = np.stack([f.mean(axis=0) for f in features])
    # Distances are measured in units of the pooled within-class spread, so no statistic dominates.
    # The floor (about 2.5 grey levels) keeps a statistic that barely varies on ground truth, like the
    # 95th percentile, from outweighing the others on slightly blurred or noisy generated frames.
    spread = np.maximum(np.sqrt(np.mean([f.var(axis=0) for f in features], axis=0)), SPREAD_FLOOR)
    return centroids, spread, labels


def classify(frames: np.ndarray) -> tuple[str, str]:
    """The ``(biome, condition)`` whose ground-truth centroid is nearest the clip's mean colour features."""
    centroids, spread, labels = _centroids()
    feature = color_features(frames).mean(axis=0)
    distances = np.linalg.norm((centroids - feature) / spread, axis=1)
    return labels[int(np.argmin(distances))]


def biome_of(frames: np.ndarray) -> str:
    """The biome a frame or clip shows, by nearest colour centroid."""
    return classify(frames)[0]


def condition_of(frames: np.ndarray) -> str:
    """The light condition a frame or clip shows, by nearest colour centroid."""
    return classify(frames)[1]


def _color_histogram(frames: np.ndarray) -> np.ndarray:
    """The normalised 8x8x8-bin RGB histogram of all pixels of a clip."""
    q = (np.clip(_clip(frames), 0, 255).astype(np.uint8) >> 5).astype(np.int64)
    codes = (q[..., 0] * 64 + q[..., 1] * 8 + q[..., 2]).ravel()
    counts = np.bincount(codes, minlength=512).astype(np.float64)
    return counts / counts.sum()


def _sharpness(frames: np.ndarray) -> float:
    """Mean absolute luminance gradient (horizontal plus vertical), in grey levels per pixel."""
    gray = _gray(_clip(frames))
    return float(np.abs(np.diff(gray, axis=2)).mean() + np.abs(np.diff(gray, axis=1)).mean())


def frame_quality(frames: np.ndarray, reference: np.ndarray) -> float:
    """How much frames look like reference frames (of the same biome and light), a score in [0, 1].

    ``score = 1 - (d_color + d_sharp) / 2`` where

    * ``d_color`` is the total variation distance (half the L1 distance) between the 8x8x8-bin RGB
      histograms of all pixels of ``frames`` and of ``reference``: 0 for the same colour distribution,
      1 for disjoint ones;
    * ``d_sharp = 1 - min(g, g_ref) / max(g, g_ref)`` where ``g`` is the mean absolute luminance gradient:
      0 when frames are as sharp as the reference, towards 1 when they are much blurrier (or flat) or much
      noisier.

    Real frames of other places score near 1, blurred or noisy ones clearly lower, flat grey near 0.
    """
    d_color = 0.5 * float(np.abs(_color_histogram(frames) - _color_histogram(reference)).sum())
    g, g_ref = _sharpness(frames), _sharpness(reference)
    d_sharp = 0.0 if max(g, g_ref) == 0.0 else 1.0 - min(g, g_ref) / max(g, g_ref)
    return float(np.clip(1.0 - 0.5 * (d_color + d_sharp), 0.0, 1.0))
