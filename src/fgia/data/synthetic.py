"""Synthetic fine-grained benchmark: procedurally drawn objects whose species differ only in small parts.

Each meta-category (birds, cars, food, fish, planes) has one global shape and a few *cues*: small, local parts
with a handful of values each (a head-cap colour, the number of wing stripes, a wheel-rim style, ...). A species
is one combination of cue values; distractors are combinations no species uses. Everything global varies within
a species instead: body colour, background and clutter, lighting, pose, scale, position, flip and occlusion, so
a global colour histogram says little about the species while a CNN that looks at the parts can tell them apart.

Every image is a pure function of (config, image index): the output does not depend on the number of workers.
"""

from __future__ import annotations

import colorsys
import csv
import functools
import itertools
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fgia.config import save_yaml
from fgia.runtime import atomic_path, output_folder

RGB = tuple[int, int, int]
MANIFEST_COLUMNS = ("path", "label", "split", "x1", "y1", "x2", "y2", "category")
DISTRACTOR = "distractor"
SYNTH_KIND = "synthetic benchmark"


@dataclass
class SynthConfig:
    """What to generate. `difficulty` in [0, 1] scales every nuisance (pose, clutter, occlusion, jitter, light)."""

    categories: int = 3
    species_per_category: int = 12
    images_per_species: int = 40
    image_size: int = 96
    difficulty: float = 0.5
    distractors: int = 0
    test_fraction: float = 0.25
    seed: int = 0
    image_format: str = "jpg"

    def __post_init__(self) -> None:
        if not 1 <= self.categories <= len(CATEGORIES):
            raise ValueError(f"categories must be in 1..{len(CATEGORIES)} ({', '.join(CATEGORIES)}), got {self.categories}")
        most = min(_n_combos(CATEGORIES[name]) for name in list(CATEGORIES)[: self.categories])
        if not 1 <= self.species_per_category <= most:
            raise ValueError(f"species_per_category must be in 1..{most} for {self.categories} categories, "
                             f"got {self.species_per_category}")
        if self.distractors and self.species_per_category == most:
            raise ValueError("distractors need cue combinations no species uses: lower species_per_category")
        if self.images_per_species < 1:
            raise ValueError(f"images_per_species must be >= 1, got {self.images_per_species}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 pixels, got {self.image_size}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {self.difficulty}")
        if self.distractors < 0:
            raise ValueError(f"distractors must be >= 0, got {self.distractors}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")

    @property
    def num_labelled(self) -> int:
        return self.categories * self.species_per_category * self.images_per_species

    @property
    def num_images(self) -> int:
        return self.num_labelled + self.distractors


# --------------------------------------------------------------------------------------------- drawing helpers


class _Pen:
    """ImageDraw in unit coordinates: (0, 0) is the top-left and (1, 1) the bottom-right of the object canvas."""

    def __init__(self, image: Image.Image) -> None:
        self.draw = ImageDraw.Draw(image)
        self.s = image.width

    def _pts(self, pts: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x * self.s, y * self.s) for x, y in pts]

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: RGB) -> None:
        s = self.s
        self.draw.ellipse([(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s], fill=fill)

    def ring(self, cx: float, cy: float, r: float, width: float, fill: RGB) -> None:
        s = self.s
        self.draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], outline=fill,
                          width=max(1, round(width * s)))

    def chord(self, cx: float, cy: float, r: float, start: float, end: float, fill: RGB) -> None:
        s = self.s
        self.draw.chord([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], start, end, fill=fill)

    def poly(self, pts: Sequence[tuple[float, float]], fill: RGB) -> None:
        self.draw.polygon(self._pts(pts), fill=fill)

    def line(self, pts: Sequence[tuple[float, float]], width: float, fill: RGB) -> None:
        self.draw.line(self._pts(pts), fill=fill, width=max(1, round(width * self.s)), joint="curve")

    def rect(self, x1: float, y1: float, x2: float, y2: float, fill: RGB, radius: float = 0.0) -> None:
        s = self.s
        self.draw.rounded_rectangle([x1 * s, y1 * s, x2 * s, y2 * s], radius=radius * s, fill=fill)

    def shape(self, kind: int, cx: float, cy: float, r: float, fill: RGB, angle: float = 0.0) -> None:
        """A small marker: 0 disc, 1 square, 2 triangle, 3 cross."""
        if kind == 0:
            self.ellipse(cx, cy, r, r, fill)
        elif kind == 3:
            for a in (angle, angle + math.pi / 2):
                dx, dy = r * math.cos(a), r * math.sin(a)
                self.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], r * 0.7, fill)
        else:
            n = 4 if kind == 1 else 3
            self.poly([(cx + r * 1.2 * math.cos(angle + 2 * math.pi * k / n),
                        cy + r * 1.2 * math.sin(angle + 2 * math.pi * k / n)) for k in range(n)], fill)


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def _any_colour(rng: np.random.Generator) -> RGB:
    """A colour from the whole gamut: what varies within a species (bodies, clutter, backgrounds)."""
    return _hsv(rng.random(), rng.uniform(0.15, 0.95), rng.uniform(0.25, 0.98))


def _shade(c: RGB, f: float) -> RGB:
    return tuple(min(255, max(0, round(v * f))) for v in c)  # type: ignore[return-value]


# Species colour cues use these hues, which random bodies and clutter also take, so only *where* the colour
# sits (a cap, an eye ring) identifies the species, not *whether* it is in the picture.
_CUE_HUES = (0.0, 0.15, 0.35, 0.62)


class _Jitter:
    """Within-species variation of a part's size or position: v * (1 +- amount)."""

    def __init__(self, rng: np.random.Generator, amount: float) -> None:
        self.rng, self.amount = rng, amount

    def __call__(self, v: float) -> float:
        return v * (1.0 + self.rng.uniform(-self.amount, self.amount))

    def colour(self, hue_index: int) -> RGB:
        return _hsv(_CUE_HUES[hue_index] + self.rng.uniform(-0.03, 0.03), self.rng.uniform(0.7, 0.95),
                    self.rng.uniform(0.75, 1.0))


DrawFn = Callable[[_Pen, tuple[int, ...], np.random.Generator, _Jitter], None]


def _draw_bird(pen: _Pen, cues: tuple[int, ...], rng: np.random.Generator, j: _Jitter) -> None:
    cap, beak, stripes, tail = cues
    body = _any_colour(rng)
    dark, light = _shade(body, 0.55), _shade(body, 1.6)
    ty = j(0.55)
    if tail == 0:  # fan
        pen.poly([(0.3, ty - 0.03), (0.06, ty - 0.13), (0.06, ty + 0.1), (0.3, ty + 0.03)], dark)
    elif tail == 1:  # forked
        pen.poly([(0.3, ty - 0.03), (0.05, ty - 0.12), (0.17, ty), (0.05, ty + 0.12), (0.3, ty + 0.03)], dark)
    else:  # long and pointed
        pen.poly([(0.3, ty - 0.03), (0.02, ty + 0.06), (0.3, ty + 0.04)], dark)
    legs = (70, 60, 50)
    pen.line([(0.42, 0.66), (0.4, 0.84)], 0.018, legs)
    pen.line([(0.5, 0.66), (0.5, 0.84)], 0.018, legs)
    pen.ellipse(0.45, 0.55, j(0.24), j(0.14), body)
    wing_y = j(0.52)
    pen.ellipse(0.43, wing_y, 0.16, 0.075, dark)
    for k in range(stripes):
        x = 0.34 + 0.07 * k
        pen.line([(x, wing_y - 0.06), (x + 0.03, wing_y + 0.06)], 0.03, light)
    hx, hy, hr = 0.7, j(0.39), j(0.1)
    pen.ellipse(hx, hy, hr, hr, body)
    pen.chord(hx, hy, hr, 190, 350, j.colour(cap))
    beak_c = _shade((230, 160, 40), rng.uniform(0.5, 1.1))
    bx, by = hx + hr * 0.9, hy + 0.01
    length = j((0.07, 0.17, 0.11)[beak])
    if beak == 2:  # hooked: the tip bends down
        pen.poly([(bx, by - 0.035), (bx + length, by - 0.01), (bx + length, by + 0.06), (bx + length * 0.6, by + 0.01),
                  (bx, by + 0.03)], beak_c)
    else:
        pen.poly([(bx, by - 0.035), (bx + length, by), (bx, by + 0.035)], beak_c)
    pen.ellipse(hx + 0.035, hy - 0.01, 0.018, 0.018, (15, 15, 15))


def _draw_car(pen: _Pen, cues: tuple[int, ...], rng: np.random.Generator, j: _Jitter) -> None:
    rim, windows, light, stripes = cues
    body = _any_colour(rng)
    roof = j(0.27)
    pen.poly([(0.26, 0.46), (0.36, roof), (0.64, roof), (0.76, 0.46)], body)
    glass = _hsv(0.58 + rng.uniform(-0.05, 0.05), rng.uniform(0.1, 0.4), rng.uniform(0.55, 0.9))
    n = windows + 1
    pane = (0.64 - 0.36) / n
    for k in range(n):
        x1 = 0.36 + k * pane + 0.015
        x2 = x1 + pane - 0.03
        pen.poly([(x1 - (0.05 if k == 0 else 0), 0.44), (x1, roof + 0.03), (x2, roof + 0.03),
                  (x2 + (0.06 if k == n - 1 else 0), 0.44)], glass)
    pen.rect(0.08, 0.44, 0.92, j(0.66), body, radius=0.05)
    trim = _any_colour(rng)
    for k in range(stripes):
        y = 0.52 + 0.05 * k
        pen.line([(0.14, y), (0.86, y)], 0.022, trim)
    lamp = _hsv(0.14, rng.uniform(0.0, 0.4), rng.uniform(0.85, 1.0))
    pen.shape((0, 1, 2)[light], 0.875, 0.5, j(0.035), lamp, angle=math.pi)
    pen.rect(0.08, 0.47, 0.11, 0.52, (200, 20, 20))
    for wx in (0.27, 0.73):
        pen.ellipse(wx, 0.66, 0.1, 0.1, (25, 25, 25))
        metal = _hsv(0, 0, rng.uniform(0.55, 0.9))
        if rim == 0:  # solid hub
            pen.ellipse(wx, 0.66, 0.055, 0.055, metal)
        elif rim == 3:  # thin ring
            pen.ring(wx, 0.66, 0.06, 0.018, metal)
        else:  # 3 or 5 spokes
            spokes = 3 if rim == 1 else 5
            for k in range(spokes):
                a = 2 * math.pi * k / spokes
                pen.line([(wx, 0.66), (wx + 0.07 * math.cos(a), 0.66 + 0.07 * math.sin(a))], 0.018, metal)


def _draw_food(pen: _Pen, cues: tuple[int, ...], rng: np.random.Generator, j: _Jitter) -> None:
    topping, count, garnish, sauce = cues
    plate = _hsv(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.75, 1.0))
    pen.ellipse(0.5, 0.5, 0.45, 0.45, plate)
    pen.ring(0.5, 0.5, 0.4, 0.012, _shade(plate, 0.8))
    pen.ellipse(0.5, 0.5, j(0.34), j(0.34), _any_colour(rng))
    sauce_c = _any_colour(rng)
    if sauce == 1:  # zigzag
        pen.line([(0.25 + 0.05 * k, 0.42 + (0.07 if k % 2 else 0)) for k in range(11)], 0.02, sauce_c)
    elif sauce == 2:  # inner ring
        pen.ring(0.5, 0.5, j(0.14), 0.018, sauce_c)
    phase = rng.uniform(0, 2 * math.pi)
    item = _any_colour(rng)
    n = count + 3
    for k in range(n):
        a = phase + 2 * math.pi * k / n
        pen.shape(topping, 0.5 + 0.24 * math.cos(a), 0.5 + 0.24 * math.sin(a), j(0.05), item, angle=a)
    pen.ellipse(0.5, 0.5, j(0.06), j(0.06), j.colour(garnish))


def _draw_fish(pen: _Pen, cues: tuple[int, ...], rng: np.random.Generator, j: _Jitter) -> None:
    bands, dorsal, eye, tail = cues
    body = _any_colour(rng)
    fin = _shade(body, 0.6)
    if tail == 0:  # forked
        pen.poly([(0.22, 0.5), (0.05, 0.33), (0.12, 0.5), (0.05, 0.67)], fin)
    elif tail == 1:  # round
        pen.ellipse(0.13, 0.5, 0.1, 0.13, fin)
    else:  # square
        pen.poly([(0.24, 0.46), (0.06, 0.36), (0.06, 0.64), (0.24, 0.54)], fin)
    if dorsal == 0:  # rounded
        pen.chord(0.48, 0.36, 0.13, 180, 360, fin)
    elif dorsal == 1:  # spiky
        pen.poly([(0.36, 0.37), (0.4, 0.2), (0.46, 0.35), (0.5, 0.18), (0.56, 0.35), (0.6, 0.22), (0.64, 0.38)], fin)
    pen.ellipse(0.5, 0.5, j(0.3), j(0.16), body)
    band = _any_colour(rng)
    for k in range(bands):
        x = 0.4 + 0.09 * k
        pen.line([(x, 0.38), (x, 0.62)], 0.03, band)
    pen.ellipse(0.7, 0.46, j(0.04), j(0.04), j.colour(eye))
    pen.ellipse(0.7, 0.46, 0.018, 0.018, (10, 10, 10))


def _draw_plane(pen: _Pen, cues: tuple[int, ...], rng: np.random.Generator, j: _Jitter) -> None:
    engines, fin, stripe, nose = cues
    body = _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.5, 1.0))
    wing = _shade(body, 0.7)
    if fin == 0:  # swept
        pen.poly([(0.12, 0.47), (0.06, 0.25), (0.14, 0.25), (0.26, 0.47)], wing)
    elif fin == 1:  # square
        pen.poly([(0.1, 0.47), (0.1, 0.27), (0.2, 0.27), (0.24, 0.47)], wing)
    else:  # T-tail
        pen.poly([(0.13, 0.47), (0.13, 0.28), (0.19, 0.28), (0.23, 0.47)], wing)
        pen.rect(0.06, 0.26, 0.26, 0.3, wing)
    pen.rect(0.08, 0.44, j(0.86), 0.56, body, radius=0.05)
    if nose == 0:  # pointed
        pen.poly([(0.84, 0.44), (0.96, 0.51), (0.84, 0.56)], body)
    else:  # round
        pen.ellipse(0.86, 0.5, 0.06, 0.06, body)
    pen.line([(0.14, 0.48), (0.84, 0.48)], 0.02, j.colour(stripe))
    pen.poly([(0.42, 0.54), (0.58, 0.54), (0.46, 0.78), (0.4, 0.78)], wing)
    for k in range(engines + 1):
        pen.rect(0.42 + 0.07 * k, 0.6 + 0.05 * k, 0.5 + 0.07 * k, 0.64 + 0.05 * k, _shade(wing, 0.6), radius=0.02)


@dataclass(frozen=True)
class _Category:
    cues: tuple[int, ...]  # how many values each species-defining cue takes
    draw: DrawFn


CATEGORIES: dict[str, _Category] = {
    "birds": _Category((4, 3, 4, 3), _draw_bird),  # cap colour, beak, wing stripes, tail
    "cars": _Category((4, 3, 3, 3), _draw_car),  # rim style, windows, headlight shape, door stripes
    "food": _Category((4, 4, 4, 3), _draw_food),  # topping shape, topping count, garnish colour, sauce
    "fish": _Category((4, 3, 4, 3), _draw_fish),  # bands, dorsal fin, eye-ring colour, tail
    "planes": _Category((3, 3, 4, 2), _draw_plane),  # engines, tail fin, stripe colour, nose
}


def _n_combos(cat: _Category) -> int:
    return math.prod(cat.cues)


@functools.lru_cache(maxsize=64)
def _combos(seed: int, category: str) -> tuple[tuple[int, ...], ...]:
    """A category's cue combinations in a seeded order: the first `species_per_category` are the species."""
    combos = list(itertools.product(*(range(n) for n in CATEGORIES[category].cues)))
    order = np.random.default_rng([seed, 0, list(CATEGORIES).index(category)]).permutation(len(combos))
    return tuple(combos[i] for i in order)


def _species_combo(cfg: SynthConfig, index: int) -> tuple[int, ...]:
    """The cue values of the species that labelled image `index` shows."""
    species = index // cfg.images_per_species
    category = list(CATEGORIES)[species // cfg.species_per_category]
    return _combos(cfg.seed, category)[species % cfg.species_per_category]


def species_cues(cfg: SynthConfig) -> dict[str, tuple[int, ...]]:
    """The cue values that define each species of `cfg`, by class name (e.g. "birds/sp03")."""
    firsts = (k * cfg.images_per_species for k in range(cfg.categories * cfg.species_per_category))
    return {_item(cfg, i).label: _species_combo(cfg, i) for i in firsts}


def draw_object(category: str, cues: Sequence[int], rng: np.random.Generator, size: int,
                jitter: float = 0.0) -> Image.Image:
    """One object of `category` with the given cue values on a transparent `size` x `size` RGBA canvas.

    `rng` draws what varies within a species (colours); `jitter` is the relative size/position variation.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    spec = CATEGORIES[category].cues
    if len(cues) != len(spec) or not all(0 <= v < n for v, n in zip(cues, spec)):
        raise ValueError(f"{category} cues must be {len(spec)} values below {spec}, got {tuple(cues)}")
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    CATEGORIES[category].draw(_Pen(image), tuple(cues), rng, _Jitter(rng, jitter))
    return image


# --------------------------------------------------------------------------------------------- one image


@dataclass(frozen=True)
class _Item:
    index: int
    category: str
    label: str  # "" for distractors
    split: str
    relpath: str


def _item(cfg: SynthConfig, index: int) -> _Item:
    names = list(CATEGORIES)[: cfg.categories]
    width = max(6, len(str(cfg.num_images - 1)))
    ext = cfg.image_format
    if index >= cfg.num_labelled:
        return _Item(index, DISTRACTOR, "", "", f"images/{DISTRACTOR}/{index:0{width}d}.{ext}")
    species, instance = divmod(index, cfg.images_per_species)
    cat, sp = divmod(species, cfg.species_per_category)
    n_test = round(cfg.images_per_species * cfg.test_fraction)
    split = "test" if instance >= cfg.images_per_species - n_test else "train"
    label = f"{names[cat]}/sp{sp:0{max(2, len(str(cfg.species_per_category - 1)))}d}"
    return _Item(index, names[cat], label, split, f"images/{label}/{index:0{width}d}.{ext}")


def _background(rng: np.random.Generator, size: int, difficulty: float) -> Image.Image:
    """A two-colour gradient with random clutter shapes (more of them at higher difficulty)."""
    a, b = np.array(_any_colour(rng), np.float32), np.array(_any_colour(rng), np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = np.clip((xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle) + 0.5, 0, 1)[..., None]
    image = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8))
    pen = _Pen(image)
    for _ in range(rng.integers(0, 3) + round(10 * difficulty)):
        kind = rng.integers(0, 4)
        cx, cy, r = rng.random(), rng.random(), rng.uniform(0.03, 0.2)
        if kind == 0:
            pen.ellipse(cx, cy, r, r * rng.uniform(0.4, 1.0), _any_colour(rng))
        elif kind == 1:
            pen.line([(cx, cy), (cx + rng.uniform(-0.4, 0.4), cy + rng.uniform(-0.4, 0.4))],
                     rng.uniform(0.01, 0.04), _any_colour(rng))
        else:
            pen.shape(int(rng.integers(1, 4)), cx, cy, r * 0.6, _any_colour(rng), angle=rng.uniform(0, math.pi))
    return image


def render_image(cfg: SynthConfig, index: int) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """Draw image `index` of the benchmark `cfg`; returns it with the object's box (x1, y1, x2, y2) in pixels."""
    if not 0 <= index < cfg.num_images:
        raise IndexError(f"image index {index} out of range 0..{cfg.num_images - 1}")
    item = _item(cfg, index)
    rng = np.random.default_rng([cfg.seed, 1, index])
    d = cfg.difficulty
    if item.label:
        category, cues = item.category, _species_combo(cfg, index)
    else:  # a distractor: an object of some category with a cue combination no species has
        category = list(CATEGORIES)[rng.integers(0, cfg.categories)]
        unused = _combos(cfg.seed, category)[cfg.species_per_category:]
        cues = unused[rng.integers(0, len(unused))]

    # Draw at twice the size, then downsample: antialiased edges at no extra cost in the drawing code.
    big = 2 * cfg.image_size
    canvas = _background(rng, big, d)
    obj = draw_object(category, cues, rng, big, jitter=0.03 + 0.1 * d)
    obj = obj.rotate(rng.uniform(-1, 1) * (5 + 35 * d), resample=Image.Resampling.BICUBIC, expand=True)
    obj = obj.crop(obj.getchannel("A").getbbox())
    if rng.random() < 0.5:
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = rng.uniform(1.0 - 0.45 * d, 1.0) * 0.95 * big / max(obj.size)
    obj = obj.resize((max(1, round(obj.width * scale)), max(1, round(obj.height * scale))),
                     Image.Resampling.BILINEAR)
    x, y = int(rng.integers(0, big - obj.width + 1)), int(rng.integers(0, big - obj.height + 1))
    canvas.paste(obj, (x, y), obj)
    if rng.random() < 0.6 * d:  # an occluder over part of the object
        pen = _Pen(canvas)
        cx, cy = (x + rng.uniform(0, obj.width)) / big, (y + rng.uniform(0, obj.height)) / big
        r = rng.uniform(0.08, 0.18)
        pen.rect(cx - r, cy - r * rng.uniform(0.3, 1.0), cx + r, cy + r, _any_colour(rng))

    image = np.asarray(canvas.resize((cfg.image_size, cfg.image_size), Image.Resampling.BOX), np.float32)
    gains = 1.0 + rng.uniform(-0.3, 0.3, 3) * d  # coloured light
    brightness = rng.uniform(1.0 - 0.4 * d, 1.0 + 0.15 * d)
    image = image * gains * brightness + rng.normal(0.0, 2.0 + 6.0 * d, image.shape)
    out = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    box = tuple(float(min(max(v / 2, 0.0), cfg.image_size)) for v in (x, y, x + obj.width, y + obj.height))
    return out, box  # type: ignore[return-value]


def _render_chunk(cfg: SynthConfig, out_dir: Path, indices: range) -> list[list[str]]:
    rows = []
    for index in indices:
        item = _item(cfg, index)
        image, box = render_image(cfg, index)
        path = out_dir / item.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if cfg.image_format == "jpg":
            image.save(path, quality=92)
        else:
            image.save(path)
        rows.append([item.relpath, item.label, item.split, *(f"{v:.1f}" for v in box), item.category])
    return rows


# --------------------------------------------------------------------------------------------- the benchmark


def generate_benchmark(cfg: SynthConfig, out_dir: str | os.PathLike, workers: int | None = None,
                       progress: bool = True, force: bool = False) -> Path:
    """Render the benchmark into `out_dir` (images/ + manifest.csv + synth_config.yaml); returns the manifest.

    `workers` processes render in parallel (None: one per CPU; 1: in this process). The benchmark is rendered
    beside `out_dir` and moved into place when complete; a previous benchmark there is replaced, any other
    non-empty folder refused unless `force` (see `fgia.runtime.output_folder`).
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with output_folder(out_dir, SYNTH_KIND, force=force) as out:
        _render(cfg, out, workers, progress)
    return Path(out_dir) / "manifest.csv"


def _render(cfg: SynthConfig, out: Path, workers: int, progress: bool) -> None:
    from rich.progress import Progress

    total = cfg.num_images
    step = max(1, min(256, total // (workers * 8)))
    chunks = [range(i, min(i + step, total)) for i in range(0, total, step)]
    rows: list[list[str]] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"rendering {total} images", total=total)
        if workers == 1:
            for chunk in chunks:
                rows += _render_chunk(cfg, out, chunk)
                bar.advance(task, len(chunk))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(_render_chunk, itertools.repeat(cfg), itertools.repeat(out), chunks):
                    rows += result
                    bar.advance(task, len(result))

    with atomic_path(out / "manifest.csv") as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    save_yaml(cfg, out / "synth_config.yaml")
