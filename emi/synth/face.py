"""A rendered face: a person's resting face most of the time, expressions only within the clip's episodes.

Who the person is (skin, hair, face shape, resting expression) and where they record (background, light, framing)
stay the same in all their clips, up to small changes; idle head motion, blinks, the mouth moving while talking
and sensor noise are drawn per clip. What sets a person's clips apart is the expression.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from emi.synth.latent import FACE_CONTROLS

SUPERSAMPLE = 2  # draw at 2x and box-downsample: cheap anti-aliasing
SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 96], [161, 102, 70], [110, 70, 50]]
)
HAIR_COLOURS = np.array([[30, 25, 20], [90, 60, 35], [160, 120, 70], [200, 170, 110], [120, 40, 25], [60, 60, 60]])
C = {name: i for i, name in enumerate(FACE_CONTROLS)}
BLINK_S = 0.15  # one blink, closed to open


@dataclass(frozen=True)
class Identity:
    """What a person looks like, in every clip of theirs."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    width: float  # face width relative to the average face
    eye_gap: float  # eye centres' distance from the midline, in face half-widths
    brow: float  # brow thickness, in face half-heights

    @staticmethod
    def sample(rng: np.random.Generator) -> Identity:
        skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.integers(-12, 13, 3)
        hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] + rng.integers(-8, 9, 3)
        return Identity(
            skin=tuple(int(c) for c in np.clip(skin, 0, 255)),
            hair=tuple(int(c) for c in np.clip(hair, 0, 255)),
            width=float(rng.uniform(0.88, 1.12)),
            eye_gap=float(rng.uniform(0.33, 0.43)),
            brow=float(rng.uniform(0.025, 0.045)),
        )


@dataclass(frozen=True)
class Setting:
    """Where a person records (one webcam, one room): background, light and framing, the same in all their clips
    up to small per-clip changes (``FaceStyle.sample``)."""

    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    light_angle: float
    light_strength: float
    center: tuple[float, float]
    scale: float  # a webcam close-up: the face fills most of the frame
    roll_deg: float

    @staticmethod
    def sample(rng: np.random.Generator) -> Setting:
        bg = rng.integers(20, 235, (2, 3))
        return Setting(
            background=(tuple(int(c) for c in bg[0]), tuple(int(c) for c in bg[1])),
            light_angle=float(rng.uniform(0, 2 * np.pi)),
            light_strength=float(rng.uniform(0.0, 0.35)),
            center=(float(rng.uniform(0.44, 0.56)), float(rng.uniform(0.5, 0.6))),
            scale=float(rng.uniform(1.05, 1.35)),
            roll_deg=float(rng.uniform(-8, 8)),
        )


@dataclass(frozen=True)
class FaceStyle:
    """One clip's look: the person's identity and setting, and what changes from clip to clip."""

    identity: Identity
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    light_angle: float
    light_strength: float
    center: tuple[float, float]
    scale: float
    roll_deg: float
    motion_hz: float
    phase: float
    idle_motion: float  # head motion when nothing is expressed
    sensor_noise: float

    @staticmethod
    def sample(rng: np.random.Generator, identity: Identity, setting: Setting) -> FaceStyle:
        """The person's setting with this clip's small changes: the camera nudged, the light drifted."""
        shift = rng.integers(-6, 7, 3)
        bg = tuple(tuple(int(c) for c in np.clip(np.array(colour) + shift, 0, 255)) for colour in setting.background)
        return FaceStyle(
            identity=identity,
            background=bg,
            light_angle=float(setting.light_angle + rng.normal(0, 0.1)),
            light_strength=float(np.clip(setting.light_strength + rng.normal(0, 0.03), 0, 0.4)),
            center=(float(setting.center[0] + rng.normal(0, 0.012)), float(setting.center[1] + rng.normal(0, 0.012))),
            scale=float(setting.scale * np.exp(rng.normal(0, 0.03))),
            roll_deg=float(setting.roll_deg + rng.normal(0, 2.0)),
            motion_hz=float(rng.uniform(0.3, 1.2)),
            phase=float(rng.uniform(0, 2 * np.pi)),
            idle_motion=float(rng.uniform(0.05, 0.2)),
            sensor_noise=float(rng.uniform(1.0, 5.0)),
        )


def blinks(rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
    """Per-frame eyelid closure in [0, 1]: a blink every 2-6 s at random."""
    closed = np.zeros_like(times)
    t, end = rng.uniform(0.2, 3.0), (times[-1] if times.size else 0.0)
    while t < end:
        closed = np.maximum(closed, np.clip(1 - np.abs(times - t) / (BLINK_S / 2), 0, 1))
        t += rng.uniform(2.0, 6.0)
    return closed


def _background(style: FaceStyle, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    a, b = (np.array(c, dtype=np.float32) for c in style.background)
    mix = (y[..., None] * 0.7 + x[..., None] * 0.3).astype(np.float32)
    return a * (1 - mix) + b * mix


def _lighting(style: FaceStyle, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    grad = x * np.cos(style.light_angle) + y * np.sin(style.light_angle)
    return (1.0 + 2 * style.light_strength * grad)[..., None].astype(np.float32)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 36, start=0.0, stop=2 * np.pi):
    t = np.linspace(start, stop, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _quad(p0, p1, p2, n: int = 16) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t**2 * np.asarray(p2)


class FaceRenderer:
    """Renders frames of one clip: ``renderer(t, controls, talk, blink)`` -> H×W×3 uint8, where ``talk`` (0-1) opens
    the mouth with the voice's loudness and ``blink`` (0-1) closes the eyes."""

    def __init__(self, style: FaceStyle, size: int, rng: np.random.Generator, occlusion: bool = False):
        self.style, self.size, self.rng = style, size, rng
        self.big = size * SUPERSAMPLE
        self.bg = _background(style, size)
        self.light = _lighting(style, size)
        self.occluder = None
        if occlusion:  # a hand/object over the expressive centre of the face, for the whole clip
            colour = tuple(int(c) for c in rng.integers(40, 200, 3))
            top = rng.uniform(-0.75, -0.45)
            self.occluder = (colour, top, rng.uniform(0.55, 0.85))

    def _to_px(self, pts: np.ndarray, cx: float, cy: float, roll: float) -> list[tuple[float, float]]:
        rx, ry = 0.30 * self.style.scale * self.style.identity.width, 0.38 * self.style.scale
        c, s = np.cos(roll), np.sin(roll)
        u, v = pts[:, 0] * rx, pts[:, 1] * ry
        x = cx + c * u - s * v
        y = cy + s * u + c * v
        return [(float(a), float(b)) for a, b in zip(x * self.big, y * self.big)]

    def __call__(self, t: float, ctl: np.ndarray, talk: float = 0.0, blink: float = 0.0) -> np.ndarray:
        st = self.style
        img = Image.new("RGBA", (self.big, self.big), (0, 0, 0, 0))
        draw = ImageDraw.Draw(img)
        wobble = np.sin(2 * np.pi * st.motion_hz * t + st.phase)
        motion = max(ctl[C["head_motion"]], 0.0) + st.idle_motion
        cx = st.center[0] + 0.02 * motion * np.sin(np.pi * st.motion_hz * t)
        cy = st.center[1] + 0.035 * motion * wobble + 0.03 * max(ctl[C["head_tilt"]], 0)
        roll = np.deg2rad(st.roll_deg + 7 * motion * wobble + 10 * ctl[C["head_tilt"]])
        px = lambda pts: self._to_px(np.asarray(pts, dtype=float), cx, cy, roll)  # noqa: E731

        blush = float(np.clip(ctl[C["cheek_raise"]], 0, 1))
        self._head(draw, px, blush)
        self._eyes(draw, px, ctl, blush, blink)
        self._brows(draw, px, ctl)
        self._mouth(draw, px, ctl, talk)
        if self.occluder is not None:
            colour, top, bottom = self.occluder
            draw.polygon(px([(-0.95, top), (0.95, top), (0.95, bottom), (-0.95, bottom)]), fill=colour)

        face = img.reduce(SUPERSAMPLE)
        rgba = np.asarray(face, dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        frame = self.bg * (1 - alpha) + rgba[..., :3] * alpha
        frame = frame * self.light + self.rng.normal(0, st.sensor_noise, frame.shape)
        return np.clip(frame, 0, 255).astype(np.uint8)

    def _crease(self, amount: float) -> tuple[int, int, int]:
        """A skin fold's colour: darker skin, the deeper the fold."""
        return tuple(int(c * (1 - 0.45 * min(amount, 1.0))) for c in self.style.identity.skin)

    def _head(self, draw: ImageDraw.ImageDraw, px, blush: float) -> None:
        who = self.style.identity
        draw.polygon(px(_ellipse(0, -0.12, 1.08, 1.0, start=np.pi, stop=2 * np.pi)), fill=who.hair)
        draw.polygon(px(_ellipse(0, 0, 1, 1, n=48)), fill=who.skin)
        # cheeks redden and lift with cheek raise
        cheek = tuple(int(who.skin[i] * (1 - 0.45 * blush) + (230, 90, 90)[i] * 0.45 * blush) for i in range(3))
        for side in (-1, 1):
            draw.polygon(px(_ellipse(side * 0.5, 0.22 - 0.1 * blush, 0.2, 0.13)), fill=cheek)
        draw.line(px([(0, -0.05), (-0.06, 0.2), (0.04, 0.22)]), fill=self._crease(1.0), width=max(1, self.big // 80))

    def _eyes(self, draw: ImageDraw.ImageDraw, px, ctl: np.ndarray, blush: float, blink: float) -> None:
        # openness offsets a neutral aperture; cheek raise narrows from below (Duchenne)
        aperture = float(np.clip(0.5 + 0.6 * ctl[C["eye_open"]] - 0.3 * blush, 0.06, 1.3)) * (1 - 0.9 * blink)
        for side in (-1, 1):
            ex, ey = side * self.style.identity.eye_gap, -0.12
            h = 0.05 + 0.11 * aperture
            draw.polygon(px(_ellipse(ex, ey, 0.2, h)), fill=(245, 245, 245))
            pr = min(0.075, h * 0.9)
            draw.polygon(px(_ellipse(ex, ey, pr, pr * 1.2 if h > pr else h * 0.9)), fill=(35, 30, 30))
            if blush > 0.2:  # crow's feet beside a smiling eye
                draw.line(px(_quad((side * 0.62, -0.18), (side * 0.7, -0.12), (side * 0.62, -0.05), 6)),
                          fill=self._crease(blush), width=max(1, self.big // 100))

    def _brows(self, draw: ImageDraw.ImageDraw, px, ctl: np.ndarray) -> None:
        # raise lifts both ends and wrinkles the forehead; furrow lowers, pulls in the inner ends and creases
        # between them; inner raise tilts them (the oblique "sad" brows)
        who = self.style.identity
        raise_, furrow = ctl[C["brow_raise"]], max(ctl[C["brow_furrow"]], 0)
        inner_up = max(ctl[C["brow_inner_raise"]], 0)
        for side in (-1, 1):
            inner = (side * (0.14 + 0.06 * (1 - furrow)), -0.42 - 0.2 * raise_ + 0.18 * furrow - 0.22 * inner_up)
            outer = (side * 0.6, -0.44 - 0.2 * raise_ + 0.02 * furrow + 0.05 * inner_up)
            mid = ((inner[0] + outer[0]) / 2, min(inner[1], outer[1]) - 0.05)
            curve = _quad(inner, mid, outer, 10)
            band = np.concatenate([curve + [0, -who.brow], curve[::-1] + [0, who.brow]])
            draw.polygon(px(band), fill=tuple(int(c * 0.8) for c in who.hair))
        width = max(1, self.big // 100)
        if raise_ > 0.2:
            for y in (-0.66, -0.76):
                draw.line(px(_quad((-0.4, y), (0, y - 0.05), (0.4, y), 8)), fill=self._crease(raise_), width=width)
        if furrow > 0.2:
            for x in (-0.05, 0.05):
                draw.line(px([(x, -0.42), (x * 0.6, -0.3)]), fill=self._crease(furrow), width=width)

    def _mouth(self, draw: ImageDraw.ImageDraw, px, ctl: np.ndarray, talk: float) -> None:
        # corners follow smile/frown, opening follows mouth_open and the voice, lip press thins and narrows;
        # an open mouth shows the upper teeth, a smile deepens the folds from nose to mouth corners
        smile, press = ctl[C["smile"]], min(max(ctl[C["lip_press"]], 0), 1)
        opening = max(0.015, (0.36 * max(ctl[C["mouth_open"]], 0) + 0.12 * talk) * (1 - 0.6 * press))
        half_w = 0.3 * (1 + 0.25 * max(smile, 0) - 0.25 * press)
        my, corner = 0.5, 0.5 - 0.22 * smile
        left, right = (-half_w, corner), (half_w, corner)
        upper = _quad(left, (0, my - opening / 2 + 0.04 * smile), right)
        lower = _quad(right, (0, my + opening / 2 + 0.14 * max(smile, 0) + 0.02), left)
        lip = (150, 60, 60) if press < 0.5 else (120, 70, 70)
        draw.polygon(px(np.concatenate([upper, lower])), fill=(70, 20, 25), outline=lip)
        gap = opening + 0.14 * max(smile, 0)
        if gap > 0.06:  # teeth under the upper lip
            edge = my - opening / 2 + 0.04 * smile + min(gap, 0.2) * 0.45
            teeth = _quad((-0.75 * half_w, corner + 0.01), (0, edge), (0.75 * half_w, corner + 0.01))
            draw.polygon(px(np.concatenate([upper[3:-3], teeth[::-1]])), fill=(236, 232, 222))
        draw.line(px(upper), fill=lip, width=max(1, int(self.big * (0.02 - 0.012 * press))))
        if smile > 0.2:
            for side in (-1, 1):
                fold = _quad((side * 0.16, 0.2), (side * (half_w + 0.06), 0.3),
                             (side * (half_w + 0.04), corner + 0.08), 8)
                draw.line(px(fold), fill=self._crease(smile), width=max(1, self.big // 90))
