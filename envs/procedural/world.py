"""A deterministic, infinite, top-down 2D world: the ground truth for training and measuring the tiny model.

The world is a plane of square tiles around a player who always stands at the centre of the view. What a
tile shows depends only on ``(seed, biome, tile x, tile y)`` through an integer hash, so the world is
infinite, needs no storage and shows the same thing whenever a place is revisited. Tiles come from a small
atlas of pre-drawn variants per biome (textured ground, plus objects such as trees, cacti, pines and rocks)
that is drawn procedurally with numpy once per tile size.

Three biomes (``meadow``, ``desert``, ``tundra``) and three light conditions (``day``, ``night``, ``fog``)
give nine looks; five actions (``idle`` and the four compass directions) move the camera by a whole number
of pixels per frame, so motion is exact. North is up on screen: walking north makes the content move down.

Light conditions are a per-pixel affine on RGB: ``day`` is the atlas as drawn, ``night`` scales the
channels by (0.30, 0.36, 0.52) and adds a little blue (about 37% of day's brightness, still textured),
``fog`` blends halfway towards light grey (184, 186, 190), halving contrast.

Every (biome, condition, action) has a short text prompt (:func:`prompt_for`, :func:`parse_prompt`), which
is how the video model is conditioned.

Coordinates are world pixels; ``x`` grows east (right) and ``y`` grows south (down). A view of ``size``
pixels is centred on the camera position: its top-left pixel is ``(x - size // 2, y - size // 2)``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ACTIONS",
    "ACTION_TEXT",
    "BIOMES",
    "BIOME_TEXT",
    "CONDITIONS",
    "CONDITION_TEXT",
    "MOVES",
    "PROMPT_TEMPLATE",
    "SCENARIO_PATH",
    "SPRITE_SIZE",
    "ProceduralWorld",
    "WorldConfig",
    "WorldState",
    "apply_condition",
    "parse_prompt",
    "prompt_for",
    "sprite_box",
    "tile_atlas",
]

BIOMES: tuple[str, ...] = ("meadow", "desert", "tundra")
CONDITIONS: tuple[str, ...] = ("day", "night", "fog")
ACTIONS: tuple[str, ...] = ("idle", "north", "south", "east", "west")
# (dx, dy) of the camera in world pixels per frame, in units of the configured speed; y grows southwards.
MOVES: Mapping[str, tuple[int, int]] = {
    "idle": (0, 0),
    "north": (0, -1),
    "south": (0, 1),
    "east": (1, 0),
    "west": (-1, 0),
}

BIOME_TEXT: Mapping[str, str] = {
    "meadow": "a green meadow",
    "desert": "a sandy desert",
    "tundra": "a snowy tundra",
}
CONDITION_TEXT: Mapping[str, str] = {
    "day": "bright daylight",
    "night": "at night",
    "fog": "in thick fog",
}
ACTION_TEXT: Mapping[str, str] = {
    "idle": "standing still",
    "north": "walking north",
    "south": "walking south",
    "east": "walking east",
    "west": "walking west",
}
PROMPT_TEMPLATE = "{scene}, {condition}, {action}"

SCENARIO_PATH = Path(__file__).with_name("scenario.toml")

SPRITE_SIZE = 6
# Fraction of tiles that hold an object rather than bare ground.
OBJECT_FRACTION = 0.2
# Teleports land uniformly in this square of world pixels when no position is given.
TELEPORT_RANGE = 1 << 20
# The atlas is the same for every world seed (only the layout depends on the seed), so that every world
# shares one look that a model can learn.
_ATLAS_SEED = 20240611
_GROUND_VARIANTS = 6
_OBJECT_VARIANTS = 4

# Per-condition affine on RGB in [0, 255]: out = frame * gain + bias.
_NIGHT_GAIN = np.array([0.30, 0.36, 0.52], np.float32)
_NIGHT_BIAS = np.array([0.0, 2.0, 14.0], np.float32)
_FOG_MIX = 0.5
_FOG_COLOR = np.array([184.0, 186.0, 190.0], np.float32)
_CONDITION_AFFINE: Mapping[str, tuple[np.ndarray, np.ndarray]] = {
    "day": (np.ones(3, np.float32), np.zeros(3, np.float32)),
    "night": (_NIGHT_GAIN, _NIGHT_BIAS),
    "fog": (np.full(3, 1.0 - _FOG_MIX, np.float32), (_FOG_MIX * _FOG_COLOR).astype(np.float32)),
}


@dataclass(frozen=True)
class WorldConfig:
    """Frame size, tile size and walking speed (all in pixels)."""

    size: int = 64
    tile: int = 16
    speed: int = 2

    def __post_init__(self) -> None:
        if self.size < SPRITE_SIZE or self.tile < 8 or self.speed < 1:
            raise ValueError(f"need size >= {SPRITE_SIZE}, tile >= 8 and speed >= 1, got {self}")


@dataclass(frozen=True)
class WorldState:
    """Where the camera is (world pixels, its centre), in which biome and light, and the world's seed."""

    x: int
    y: int
    biome: str
    condition: str
    seed: int


def _check(kind: str, value: str, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")
    return value


def prompt_for(biome: str, condition: str, action: str) -> str:
    """The text prompt of a biome, light and action, e.g. 'a green meadow, bright daylight, walking north'."""
    _check("biome", biome, BIOMES)
    _check("condition", condition, CONDITIONS)
    _check("action", action, ACTIONS)
    return PROMPT_TEMPLATE.format(
        scene=BIOME_TEXT[biome], condition=CONDITION_TEXT[condition], action=ACTION_TEXT[action]
    )


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """Invert :func:`prompt_for`: ``(biome, condition, action)``; ValueError if it is not one of ours."""
    parts = [part.strip().lower() for part in prompt.split(",")]
    if len(parts) != 3:
        raise ValueError(f"expected {PROMPT_TEMPLATE!r}, got {prompt!r}")
    found = []
    for part, table, kind in zip(
        parts, (BIOME_TEXT, CONDITION_TEXT, ACTION_TEXT), ("scene", "condition", "action"), strict=True
    ):
        names = [name for name, text in table.items() if text == part]
        if not names:
            raise ValueError(f"unknown {kind} {part!r} in {prompt!r}; valid: {', '.join(table.values())}")
        found.append(names[0])
    return found[0], found[1], found[2]


def apply_condition(frame: np.ndarray, condition: str) -> np.ndarray:
    """Apply a light condition (a per-pixel affine on the float frame) to a uint8 RGB frame."""
    gain, bias = _CONDITION_AFFINE[_check("condition", condition, CONDITIONS)]
    out = frame.astype(np.float32) * gain + bias
    return np.clip(out + 0.5, 0.0, 255.0).astype(np.uint8)


def sprite_box(size: int = 64) -> tuple[int, int, int, int]:
    """The player sprite's ``(top, left, bottom, right)`` rows/columns (end-exclusive) in a frame."""
    start = size // 2 - SPRITE_SIZE // 2
    return start, start, start + SPRITE_SIZE, start + SPRITE_SIZE


# ---------------------------------------------------------------------------------------------------------
# Hashing


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_PX = np.uint64(0xD6E8FEB86659FD93)
_PY = np.uint64(0xA0761D6478BD642F)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijection on uint64 with full avalanche."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _tile_hash(seed: int, biome: int, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    """A uint64 hash per tile; tx and ty are int64 arrays that broadcast together."""
    with np.errstate(over="ignore"):
        key = _mix(np.array(seed % (1 << 64), np.uint64) * _GOLDEN + np.uint64(biome + 1))
        ux = np.asarray(tx, np.int64).view(np.uint64)
        uy = np.asarray(ty, np.int64).view(np.uint64)
        return _mix(_mix(key + ux * _PX + uy * _PY))


# ---------------------------------------------------------------------------------------------------------
# The tile atlas


class _Canvas:
    """A float RGB tile with mask-based painting helpers; coordinates are in units of a 16-pixel tile."""

    def __init__(self, tile: int, rng: np.random.Generator) -> None:
        self.n = tile
        self.scale = tile / 16.0
        self.rng = rng
        coords = (np.arange(tile, dtype=np.float32) + 0.5) / self.scale
        self.yy, self.xx = np.meshgrid(coords, coords, indexing="ij")
        self.img = np.zeros((tile, tile, 3), np.float32)

    def noise(self, cells: int) -> np.ndarray:
        """Smooth value noise in [0, 1]: a random coarse grid, bilinearly upsampled."""
        grid = self.rng.random((cells + 1, cells + 1)).astype(np.float32)
        t = np.linspace(0.0, cells, self.n, endpoint=False, dtype=np.float32)
        i = t.astype(np.int64)
        f = t - i
        fy, fx = f[:, None], f[None, :]
        top = grid[i][:, i] * (1 - fx) + grid[i][:, i + 1] * fx
        bottom = grid[i + 1][:, i] * (1 - fx) + grid[i + 1][:, i + 1] * fx
        return top * (1 - fy) + bottom * fy

    def ellipse(self, cy: float, cx: float, ry: float, rx: float | None = None) -> np.ndarray:
        rx = ry if rx is None else rx
        return ((self.yy - cy) / ry) ** 2 + ((self.xx - cx) / rx) ** 2 <= 1.0

    def rect(self, y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
        return (self.yy >= y0) & (self.yy < y1) & (self.xx >= x0) & (self.xx < x1)

    def fill(self, color: Sequence[float], grain: float = 0.0) -> None:
        self.img[:] = np.asarray(color, np.float32)
        self.grain(grain)

    def paint(self, mask: np.ndarray, color: Sequence[float], grain: float = 0.0) -> None:
        """Paint a mask in a colour, with per-pixel brightness grain so that objects are textured too."""
        jitter = self.rng.uniform(-grain, grain, mask.shape).astype(np.float32)[..., None]
        self.img = np.where(mask[..., None], np.asarray(color, np.float32) + jitter, self.img)

    def shade(self, mask: np.ndarray, factor: float) -> None:
        self.img = np.where(mask[..., None], self.img * factor, self.img)

    def grain(self, amount: float) -> None:
        self.img += self.rng.uniform(-amount, amount, self.img.shape[:2]).astype(np.float32)[..., None]

    def dots(self, count: int, colors: Sequence[Sequence[float]], radius: float = 0.6) -> None:
        for _ in range(count):
            cy, cx = self.rng.uniform(1.0, 15.0, 2)
            self.paint(self.ellipse(cy, cx, radius), colors[int(self.rng.integers(len(colors)))])

    def strokes(self, count: int, color: Sequence[float], length: float = 3.0) -> None:
        """Short near-vertical strokes (grass blades)."""
        for _ in range(count):
            cy, cx = self.rng.uniform(1.0, 15.0, 2)
            self.paint(self.rect(cy, cx, cy + length, cx + 1.0), color, 8.0)

    def result(self) -> np.ndarray:
        return np.clip(self.img + 0.5, 0.0, 255.0).astype(np.uint8)


def _meadow_ground(c: _Canvas, variant: int) -> None:
    c.fill((74, 142, 58), 14.0)
    # Broad light/dark patches plus blades and specks give texture at both coarse and fine scales.
    c.img += ((c.noise(3) - 0.5) * 46.0)[..., None]
    c.strokes(14, (38, 92, 34))
    c.strokes(8, (124, 188, 84), length=2.0)
    if variant % 3 == 0:
        c.dots(6, ((250, 228, 70), (245, 245, 240), (236, 118, 168), (150, 120, 235)))


def _desert_ground(c: _Canvas, variant: int) -> None:
    c.fill((218, 186, 126), 10.0)
    angle = c.rng.uniform(-0.5, 0.5) + (np.pi / 2 if variant % 2 else 0.0)
    along = c.yy * np.cos(angle) + c.xx * np.sin(angle)
    wave = np.sin(along * c.rng.uniform(0.9, 1.4) + c.rng.uniform(0.0, 6.3))
    wobble = c.noise(2) * 0.8
    c.shade(wave + wobble > 1.1, 0.8)
    c.img += ((c.noise(3) - 0.5) * 30.0)[..., None]
    c.dots(5, ((160, 122, 82), (184, 150, 104), (238, 214, 164)), radius=0.7)


def _tundra_ground(c: _Canvas, variant: int) -> None:
    c.fill((226, 236, 250), 8.0)
    c.paint(c.noise(3) > 0.58, (166, 188, 222), 8.0)
    c.paint(c.noise(4) > 0.72, (204, 216, 232), 6.0)
    c.dots(4 + variant % 3, ((112, 124, 146), (150, 166, 190)), radius=0.6)


def _shadow(c: _Canvas, cy: float, cx: float, ry: float, rx: float | None = None) -> None:
    c.shade(c.ellipse(cy + 1.5, cx + 1.5, ry, rx), 0.62)


def _meadow_object(c: _Canvas, variant: int) -> None:
    if variant == 0:  # broadleaf tree
        _shadow(c, 8, 8, 6.5)
        c.paint(c.ellipse(8, 8, 6.5), (34, 96, 38), 12.0)
        c.paint(c.ellipse(6.5, 6.5, 3.5) & (c.noise(4) > 0.45), (78, 156, 62), 12.0)
        c.paint(c.ellipse(8, 8, 6.5) & ~c.ellipse(8, 8, 5.5), (22, 66, 28), 6.0)
    elif variant == 1:  # two-crowned tree
        _shadow(c, 8, 8, 6.5, 7.0)
        c.paint(c.ellipse(6, 6, 4.5) | c.ellipse(10, 10, 4.5), (30, 84, 46), 12.0)
        c.paint(c.ellipse(5, 5, 2.2) | c.ellipse(9, 9, 2.2), (70, 140, 70), 10.0)
    elif variant == 2:  # berry bush
        _shadow(c, 8, 8, 4.5)
        c.paint(c.ellipse(8, 8, 4.5), (52, 118, 44), 14.0)
        c.dots(5, ((200, 30, 40),), radius=0.7)
    else:  # flower bed
        c.paint(c.ellipse(8, 8, 6.0, 7.0), (60, 120, 48), 10.0)
        c.dots(22, ((250, 228, 70), (245, 245, 240), (236, 118, 168), (240, 150, 50)), radius=0.8)


def _desert_object(c: _Canvas, variant: int) -> None:
    green, dark = (64, 134, 62), (34, 84, 40)
    if variant == 0:  # tall cactus with arms
        body = c.rect(2, 6.5, 14, 9.5) | c.rect(5, 2.5, 7.5, 6.5) | c.rect(3, 2.5, 7.5, 4.5)
        body |= c.rect(8, 9.5, 10.5, 13.5) | c.rect(5, 11.5, 10.5, 13.5)
        c.shade(np.roll(body, (1, 2), axis=(0, 1)), 0.6)
        c.paint(body, dark, 8.0)
        c.paint(c.rect(2, 7.5, 14, 8.5) | c.rect(5.5, 3.5, 6.5, 6.5), green, 8.0)
    elif variant == 1:  # barrel cactus with spines
        _shadow(c, 8, 8, 4.5)
        c.paint(c.ellipse(8, 8, 4.5), dark, 6.0)
        c.paint(c.ellipse(7.5, 7.5, 3.2), green, 10.0)
        c.dots(6, ((236, 230, 190),), radius=0.5)
        c.paint(c.ellipse(5.5, 8, 1.0), (230, 80, 120))
    elif variant == 2:  # boulder
        _shadow(c, 8.5, 8, 5.0, 6.0)
        c.paint(c.ellipse(8.5, 8, 5.0, 6.0), (134, 108, 84), 12.0)
        c.paint(c.ellipse(7, 6.5, 2.5, 3.0), (178, 150, 118), 8.0)
    else:  # scattered stones
        for cy, cx, r in ((5, 5, 2.5), (10, 10, 3.0), (11, 4, 1.8)):
            _shadow(c, cy, cx, r)
            c.paint(c.ellipse(cy, cx, r), (120, 96, 76), 10.0)
            c.paint(c.ellipse(cy - 0.8, cx - 0.8, r * 0.5), (170, 142, 112), 6.0)


def _tundra_object(c: _Canvas, variant: int) -> None:
    if variant in (0, 1):  # pine from above: stacked dark-green rings with snow on the boughs
        _shadow(c, 8, 8, 6.5)
        for radius, color in ((6.5, (22, 62, 50)), (4.6, (30, 80, 60)), (2.6, (40, 98, 70))):
            c.paint(c.ellipse(8, 8, radius), color, 8.0)
        c.dots(6 if variant == 0 else 14, ((242, 246, 252), (214, 226, 240)), radius=0.7)
    elif variant == 2:  # frozen pond with cracks
        pond = c.ellipse(8, 8, 5.5, 7.0)
        c.paint(pond, (150, 196, 228), 6.0)
        cracks = (np.abs(c.yy - c.xx * 0.6 - 3.0) < 0.5) | (np.abs(c.yy + c.xx * 0.8 - 15.0) < 0.5)
        c.paint(pond & cracks, (240, 248, 255))
        c.paint(pond & ~c.ellipse(8, 8, 4.6, 6.1), (96, 138, 178), 4.0)
    else:  # snow-capped rock
        _shadow(c, 8.5, 8, 5.0, 5.5)
        c.paint(c.ellipse(8.5, 8, 5.0, 5.5), (96, 102, 116), 10.0)
        c.paint(c.ellipse(6.5, 7, 2.8, 3.5), (238, 242, 250), 6.0)


_DRAWERS = {
    "meadow": (_meadow_ground, _meadow_object),
    "desert": (_desert_ground, _desert_object),
    "tundra": (_tundra_ground, _tundra_object),
}


@functools.lru_cache(maxsize=8)
def tile_atlas(tile: int = 16) -> np.ndarray:
    """The day-light atlas, (biomes, variants, tile, tile, 3) uint8: ground variants first, then objects."""
    rng = np.random.default_rng(_ATLAS_SEED)
    atlas = np.zeros((len(BIOMES), _GROUND_VARIANTS + _OBJECT_VARIANTS, tile, tile, 3), np.uint8)
    for b, biome in enumerate(BIOMES):
        ground, obj = _DRAWERS[biome]
        grounds = []
        for v in range(_GROUND_VARIANTS):
            canvas = _Canvas(tile, rng)
            ground(canvas, v)
            grounds.append(canvas.img.copy())
            atlas[b, v] = canvas.result()
        for v in range(_OBJECT_VARIANTS):
            canvas = _Canvas(tile, rng)
            canvas.img = grounds[v % _GROUND_VARIANTS].copy()
            obj(canvas, v)
            atlas[b, _GROUND_VARIANTS + v] = canvas.result()
    atlas.flags.writeable = False
    return atlas


def _sprite() -> tuple[np.ndarray, np.ndarray]:
    """The player: a 6x6 red/orange figure with a dark outline; returns (rgb, opaque mask)."""
    art = (
        ".kkkk.",
        "kooook",
        "korrok",
        "krrrrk",
        "krrrrk",
        ".k..k.",
    )
    palette = {"k": (28, 18, 16), "o": (252, 160, 40), "r": (222, 48, 28), ".": (0, 0, 0)}
    rgb = np.array([[palette[ch] for ch in row] for row in art], np.uint8)
    mask = np.array([[ch != "." for ch in row] for row in art])
    return rgb, mask


@functools.lru_cache(maxsize=8)
def _lit_assets(tile: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Atlas and sprite per condition. The condition is a per-pixel affine, so lighting the atlas once is
    exactly the same as lighting every rendered frame, and rendering becomes a pure gather."""
    atlas = tile_atlas(tile)
    sprite, mask = _sprite()
    atlases = {c: apply_condition(atlas, c) for c in CONDITIONS}
    sprites = {c: apply_condition(sprite, c) for c in CONDITIONS}
    return atlases, sprites, mask


# ---------------------------------------------------------------------------------------------------------
# The world


class ProceduralWorld:
    """The world around one player: render the view, step with actions, change light, teleport."""

    def __init__(
        self,
        config: WorldConfig | None = None,
        seed: int = 0,
        biome: str = "meadow",
        condition: str = "day",
        x: int = 0,
        y: int = 0,
    ) -> None:
        self.config = config or WorldConfig()
        self.seed = int(seed)
        self._biome = _check("biome", biome, BIOMES)
        self._condition = _check("condition", condition, CONDITIONS)
        self._x, self._y = int(x), int(y)
        # Teleports draw their destinations from here, so a seed fixes a whole episode.
        self._rng = np.random.default_rng(self.seed % (1 << 64))
        self._atlases, self._sprites, self._sprite_mask = _lit_assets(self.config.tile)
        tile, size = self.config.tile, self.config.size
        self._tiles_across = -(-size // tile) + 1
        offsets = np.arange(self._tiles_across, dtype=np.int64)
        self._col_offsets, self._row_offsets = offsets[None, :], offsets[:, None]
        self._index_key: tuple[str, int, int] | None = None
        self._index = np.zeros((self._tiles_across, self._tiles_across), np.int64)

    @property
    def state(self) -> WorldState:
        """The current state (camera position, biome, condition, seed)."""
        return WorldState(self._x, self._y, self._biome, self._condition, self.seed)

    def set_condition(self, condition: str) -> None:
        """Change the light condition; the place stays the same."""
        self._condition = _check("condition", condition, CONDITIONS)

    def teleport(self, biome: str, x: int | None = None, y: int | None = None) -> None:
        """Move to a biome, at the given place or at a random one drawn from the world's generator."""
        self._biome = _check("biome", biome, BIOMES)
        new_x = int(self._rng.integers(-TELEPORT_RANGE, TELEPORT_RANGE)) if x is None else int(x)
        new_y = int(self._rng.integers(-TELEPORT_RANGE, TELEPORT_RANGE)) if y is None else int(y)
        self._x, self._y = new_x, new_y

    def move(self, action: str) -> None:
        """Move the camera by one frame of an action without rendering."""
        dx, dy = MOVES[_check("action", action, ACTIONS)]
        self._x += dx * self.config.speed
        self._y += dy * self.config.speed

    def history(self, action: str, frames: int) -> np.ndarray:
        """The last `frames` views of a walk with `action` that arrives here, oldest first.

        The views are of the current biome and light, the last one is the current view, and the world
        does not move: what the place would have looked like to a player who had walked this way.
        """
        dx, dy = MOVES[_check("action", action, ACTIONS)]
        x, y, speed = self._x, self._y, self.config.speed
        views = np.empty((frames, self.config.size, self.config.size, 3), np.uint8)
        try:
            for i in range(frames):
                back = frames - 1 - i
                self._x, self._y = x - dx * speed * back, y - dy * speed * back
                views[i] = self.render()
        finally:
            self._x, self._y = x, y
        return views

    def step(self, action: str) -> np.ndarray:
        """Move by one frame of an action, then render."""
        self.move(action)
        return self.render()

    def rollout(self, actions: Sequence[str]) -> np.ndarray:
        """Step through actions and return the frames after each step, (T, size, size, 3) uint8."""
        size = self.config.size
        frames = np.empty((len(actions), size, size, 3), np.uint8)
        for i, action in enumerate(actions):
            frames[i] = self.step(action)
        return frames

    def tile_variants(self, tx: np.ndarray, ty: np.ndarray, biome: str | None = None) -> np.ndarray:
        """Atlas variant index of tiles at integer tile coordinates (arrays that broadcast together)."""
        b = BIOMES.index(_check("biome", biome or self._biome, BIOMES))
        h = _tile_hash(self.seed, b, tx, ty)
        # Independent bit fields of one hash choose object-or-ground and which variant.
        is_object = (h >> np.uint64(40)) < np.uint64(int(OBJECT_FRACTION * (1 << 24)))
        ground = (h & np.uint64(0xFFFF)) % np.uint64(_GROUND_VARIANTS)
        obj = ((h >> np.uint64(16)) & np.uint64(0xFFFF)) % np.uint64(_OBJECT_VARIANTS)
        return np.where(is_object, obj.astype(np.int64) + _GROUND_VARIANTS, ground.astype(np.int64))

    def render(self) -> np.ndarray:
        """The current view, (size, size, 3) uint8, with the player at the centre."""
        tile, size = self.config.tile, self.config.size
        tx0, ox = divmod(self._x - size // 2, tile)
        ty0, oy = divmod(self._y - size // 2, tile)
        key = (self._biome, tx0, ty0)
        # The tile layout only changes when the view crosses a tile border, so it is hashed only then.
        if key != self._index_key:
            self._index = self.tile_variants(tx0 + self._col_offsets, ty0 + self._row_offsets)
            self._index_key = key
        n = self._tiles_across
        tiles = self._atlases[self._condition][BIOMES.index(self._biome)][self._index]  # (n, n, t, t, 3)
        mosaic = tiles.transpose(0, 2, 1, 3, 4).reshape(n * tile, n * tile, 3)
        frame = np.ascontiguousarray(mosaic[oy : oy + size, ox : ox + size])
        top, left, bottom, right = sprite_box(size)
        window = frame[top:bottom, left:right]
        window[self._sprite_mask] = self._sprites[self._condition][self._sprite_mask]
        return frame
