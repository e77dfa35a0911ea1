"""The renderer of synthetic faces: ``render(factors, resolution, neutral=False) -> uint8 image``, a pure
function of the factors (:mod:`idfer_jax.data.synthetic_factors`); the package overview is in
:mod:`idfer_jax.data.synthetic_faces`.

Model of a face
---------------
A head is a small set of ellipsoids in a head-centred frame (x to the viewer's right in a frontal view, y up,
z out of the face towards the camera): a cranium, a narrower jaw (their union gives the jaw line and chin),
a tilted nose, two ears, a neck and, for most subjects, a hair cap slightly larger than the cranium and cut
off below the hairline. The head is *rotated in 3D* (yaw, then pitch, then roll) and rendered by casting one
orthographic ray per sub-pixel against the ellipsoids, so a turned head shows real parallax, self-occlusion
(the nose hides the far cheek, an ear appears) and foreshortening. Shading is Lambertian with ambient light.

Facial features are painted, not modelled: the hit point of a ray in head coordinates gives frontal texture
coordinates ``(u, v) = (x, y)``, and the eyes (sclera, iris, pupil, lash lines, lid creases), brows, lips,
mouth interior and teeth, nostrils, creases (forehead, glabella, nose, nasolabial, crow's feet, chin) and
the hair are soft 2-D signed-distance shapes in ``(u, v)``. Because they are painted on the rotated surface,
they foreshorten and disappear with the surface that carries them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from idfer_jax.data.synthetic_factors import action_units, sample_example_factors  # noqa: F401

# Half-width of the visible square in head units (the head is about 2 units tall at scale 1).
_VIEW_HALF = 1.22
_SUPERSAMPLE = 2

_MATERIAL_NONE, _MATERIAL_FACE, _MATERIAL_NOSE, _MATERIAL_EAR, _MATERIAL_NECK, _MATERIAL_HAIR = range(6)


# --------------------------------------------------------------------------------------------------
# Geometry: ray casting against ellipsoids.
# --------------------------------------------------------------------------------------------------


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def head_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head-to-camera rotation for angles in degrees (yaw first, then pitch, then roll)."""
    # Rx(-pitch) so that a positive pitch lifts the nose (+z) towards +y, i.e. looks up.
    return (_rot_z(math.radians(roll)) @ _rot_x(-math.radians(pitch))
            @ _rot_y(math.radians(yaw)))


@dataclasses.dataclass
class _Ellipsoid:
    centre: np.ndarray
    axes: np.ndarray
    material: int
    rotation: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(3))  # local -> head


def _front_z(ellipsoids: list[_Ellipsoid], y: float) -> float:
    """Depth of the face surface on the mid-line at height ``y`` (axis-aligned ellipsoids only)."""
    best = -np.inf
    for e in ellipsoids:
        t = 1 - ((y - e.centre[1]) / e.axes[1]) ** 2
        if t > 0:
            best = max(best, e.centre[2] + e.axes[2] * math.sqrt(t))
    return best


def _head_ellipsoids(ident: Mapping[str, Any], au: Mapping[str, float]) -> list[_Ellipsoid]:
    a, b, c = ident['head_width'], ident['head_height'], ident['head_depth']
    jaw_shift = 0.07 * au['jaw_drop']
    cranium = _Ellipsoid(np.array([0.0, 0.12, 0.0]), np.array([a, b, c]), _MATERIAL_FACE)
    jaw_len = ident['jaw_length']
    jaw = _Ellipsoid(np.array([0.0, -0.28 - jaw_shift, 0.04]),
                     np.array([a * ident['jaw_width'], jaw_len, c * 0.9]), _MATERIAL_FACE)
    parts = [cranium, jaw]
    # Nose: a bridge tilted so the tip protrudes more than the root, plus a wider, flatter ellipsoid
    # for the tip and wings (alae); their normals blend with the face (see _cast).
    top = ident['eye_y'] - 0.02
    bottom = ident['nose_bottom']
    half_len = (top - bottom) / 2
    ny = (top + bottom) / 2
    prot = ident['nose_protrusion']
    nw = ident['nose_width']
    nz = _front_z(parts, ny)
    parts.append(_Ellipsoid(np.array([0.0, ny + 0.02, nz - 0.6 * prot]),
                            np.array([nw * 0.6, half_len, prot * 1.3]),
                            _MATERIAL_NOSE, _rot_x(-math.radians(24))))
    tip_z = _front_z(parts[:2], bottom + 0.06)
    parts.append(_Ellipsoid(np.array([0.0, bottom + 0.05, tip_z + prot * 0.1]),
                            np.array([nw, 0.055, prot * 0.7]), _MATERIAL_NOSE))
    es = ident['ear_size']
    for side in (-1.0, 1.0):
        parts.append(_Ellipsoid(np.array([side * a * 0.97, ident['eye_y'] - 0.12, -0.08]),
                                np.array([0.07, 0.2 * es, 0.12 * es]), _MATERIAL_EAR,
                                _rot_y(side * 0.35)))
    parts.append(_Ellipsoid(np.array([0.0, -1.0, -0.18]), np.array([0.46, 0.75, 0.45]),
                            _MATERIAL_NECK))
    if ident['hair_volume'] > 0:
        hv = ident['hair_volume']
        parts.append(_Ellipsoid(cranium.centre + np.array([0, 0.03, -0.02]),
                                np.array([a * hv, b * (hv + 0.02), c * hv]), _MATERIAL_HAIR))
    return parts


def _hairline(x: np.ndarray, y: np.ndarray, z: np.ndarray, ident: Mapping[str, Any]) -> np.ndarray:
    """Height of the hairline above a surface point, as a function of the angle around the head."""
    theta = np.abs(np.arctan2(x, z))  # 0 at the face, pi at the back
    front = ident['hairline'] - ident['widows_peak'] * np.exp(-(theta / 0.12) ** 2)
    # Recede a little at the temples, come down as sideburns in front of the ears, lower at the back.
    temple = 0.08 * np.exp(-((theta - 0.75) / 0.25) ** 2)
    side = np.clip((theta - 0.8) / 0.5, 0, 1)
    back = np.clip((theta - 1.6) / 1.0, 0, 1)
    # Long hair falls lower at the sides and the back (down to the jaw for the longest).
    drop = 0.05 + 0.75 * ident['hair_length']
    h = front + temple - side * (front + drop) - back * (0.3 + 0.2 * ident['hair_length'])
    return h


def _has_hair(x: np.ndarray, y: np.ndarray, z: np.ndarray, ident: Mapping[str, Any]) -> np.ndarray:
    """Whether a point of the scalp carries hair (everything above the hairline, but for a bald
    subject only a band around the sides and the back)."""
    above = y > _hairline(x, y, z, ident)
    if ident['hair_volume'] > 0:
        return above
    theta = np.abs(np.arctan2(x, z))
    return above & (y < 0.3 + 0.1 * np.cos(theta)) & (theta > 1.1)


def _cast(xs: np.ndarray, ys: np.ndarray, rot: np.ndarray, scale: float, offset: np.ndarray,
          parts: list[_Ellipsoid], ident: Mapping[str, Any]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Casts one orthographic ray (along -z) per pixel of the grid ``ys x xs`` (camera coordinates).

    A head point h appears at camera point ``scale * rot @ h + offset``. Returns, per pixel (flattened
    row-major), the material hit first, the hit point and the unit normal, in head coordinates.
    """
    n_rows, n_cols = ys.size, xs.size
    n = n_rows * n_cols
    best_t = np.full(n, np.inf)
    part = np.full(n, -1)  # index into ``parts`` of the nearest hit
    # Ray origins are affine in the pixel coordinates: h = x' rot[0] + y' rot[1] + z0 rot[2], where
    # (x', y') = ((x, y) - offset) / scale, and all rays share the direction -rot[2].
    xp = (xs - offset[0]) / scale
    yp = (ys - offset[1]) / scale
    z0 = 5.0 / scale
    direction = -rot[2]
    for k, e in enumerate(parts):
        # Only rays inside the bounding box of the ellipsoid's (orthographic) image can hit it.
        to_cam = rot @ e.rotation * e.axes
        centre = scale * rot @ e.centre + offset
        ext = scale * np.linalg.norm(to_cam[:2], axis=1)
        c0, c1 = np.searchsorted(xs, [centre[0] - ext[0], centre[0] + ext[0]])
        # ys decreases with the row index.
        r0, r1 = n_rows - np.searchsorted(ys[::-1], [centre[1] + ext[1], centre[1] - ext[1]])
        if c1 <= c0 or r1 <= r0:
            continue
        inv = e.rotation / e.axes  # head vector -> local unit-sphere coordinates: v @ inv
        a0 = (z0 * rot[2] - e.centre) @ inv
        bx = rot[0] @ inv
        by = rot[1] @ inv
        dl = direction @ inv
        # Local origin ol = a0 + x' bx + y' by, so the quadratic's coefficients in t are
        # polynomials in (x', y') that broadcast from 1-D arrays (no per-ray 3-vectors needed).
        x = xp[None, c0:c1]
        y = yp[r0:r1, None]
        qa = dl @ dl
        qb = 2 * ((a0 @ dl) + x * (bx @ dl) + y * (by @ dl))
        qc = ((a0 @ a0 - 1) + x * (2 * a0 @ bx + x * (bx @ bx))
              + y * (2 * a0 @ by + y * (by @ by)) + (2 * bx @ by) * x * y)
        disc = qb * qb - 4 * qa * qc
        t = np.where(disc > 0, (-qb - np.sqrt(np.maximum(disc, 0))) / (2 * qa), np.inf).ravel()
        idx = (np.arange(r0, r1)[:, None] * n_cols + np.arange(c0, c1)[None, :]).ravel()
        if e.material == _MATERIAL_HAIR:
            hit = np.flatnonzero(np.isfinite(t))
            p = (xp[idx[hit] % n_cols, None] * rot[0] + yp[idx[hit] // n_cols, None] * rot[1]
                 + z0 * rot[2] + t[hit, None] * direction)
            keep = p[:, 1] > _hairline(p[:, 0], p[:, 1], p[:, 2], ident) + 0.02
            t[hit[~keep]] = np.inf
        closer = t < best_t[idx]
        best_t[idx[closer]] = t[closer]
        part[idx[closer]] = k
    materials = np.array([_MATERIAL_NONE] + [e.material for e in parts], np.int8)
    material = materials[part + 1]
    hit = np.flatnonzero(part >= 0)
    points = np.zeros((n, 3))
    points[hit] = (xp[hit % n_cols, None] * rot[0] + yp[hit // n_cols, None] * rot[1]
                   + z0 * rot[2] + best_t[hit, None] * direction)
    normal = np.zeros((n, 3))
    # The skin parts (cranium, jaw, nose) are a union of ellipsoids, whose normals jump at the
    # creases where they meet. Blending every skin part's normal with weight exp(-f / k), f >= 0 being
    # how far outside that part the hit point is, shades them as one smooth surface.
    skin = np.flatnonzero((material == _MATERIAL_FACE) | (material == _MATERIAL_NOSE))
    blended = np.zeros((skin.size, 3))
    for e in parts:
        if e.material in (_MATERIAL_FACE, _MATERIAL_NOSE):
            pl = ((points[skin] - e.centre) @ e.rotation) / e.axes
            radius = np.linalg.norm(pl, axis=1)
            weight = np.exp(-np.maximum(radius - 1, 0) / 0.05)
            blended += weight[:, None] * _unit((pl / e.axes) @ e.rotation.T)
    normal[skin] = _unit(blended)
    for k, e in enumerate(parts):
        if e.material not in (_MATERIAL_FACE, _MATERIAL_NOSE):
            own = np.flatnonzero(part == k)
            pl = ((points[own] - e.centre) @ e.rotation) / e.axes
            normal[own] = _unit((pl / e.axes) @ e.rotation.T)
    return material, points, normal


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------------------------------
# Texture: soft 2-D shapes painted in frontal (u, v) = (x, y) head coordinates.
# --------------------------------------------------------------------------------------------------


def _fill(dist: np.ndarray, aa: float) -> np.ndarray:
    """Coverage of a shape given a signed distance (negative inside), anti-aliased over ``aa``."""
    return np.clip(0.5 - dist / aa, 0.0, 1.0)


def _blob(dx: np.ndarray, dy: np.ndarray, sx: float, sy: float) -> np.ndarray:
    return np.exp(-((dx / sx) ** 2 + (dy / sy) ** 2))


def _over(col: np.ndarray, alpha: np.ndarray, rgb: Any) -> None:
    """Composite ``rgb`` (a colour or per-pixel colours) over ``col`` in place."""
    alpha = alpha[:, None]
    col *= 1 - alpha
    col += alpha * np.asarray(rgb)


def _darken(col: np.ndarray, amount: np.ndarray) -> None:
    col *= (1 - np.clip(amount, 0, 1))[:, None]


def _segment_dist(px: np.ndarray, py: np.ndarray, ax: float, ay: float, bx: float, by: float
                  ) -> np.ndarray:
    vx, vy = bx - ax, by - ay
    t = np.clip(((px - ax) * vx + (py - ay) * vy) / (vx * vx + vy * vy), 0, 1)
    return np.hypot(px - ax - t * vx, py - ay - t * vy)


def _mouth_curves(ident: Mapping[str, Any], au: Mapping[str, float]) -> dict[str, float]:
    """Mouth shape parameters after the action units (used by the painter)."""
    mw = ident['mouth_width'] * (1 + 0.25 * au['lip_stretch'] + 0.14 * au['lip_corner_pull']
                                 - 0.12 * au['lip_press'] - 0.14 * au['jaw_drop'])
    corner = (0.11 * au['lip_corner_pull'] - 0.09 * au['lip_corner_depress']
              - 0.012 * au['lip_stretch'])
    thin = 1 - 0.6 * au['lip_press'] - 0.25 * au['lip_stretch']
    return {
        'half_width': mw,
        'corner': corner,
        'open_upper': 0.014 * au['lips_part'] + 0.05 * au['upper_lip_raise'] + 0.025 * au['jaw_drop'],
        'open_lower': (0.012 * au['lips_part'] + 0.11 * au['jaw_drop'] + 0.012 * au['lip_stretch']
                       - 0.012 * au['chin_raise']),
        'upper_lip': ident['upper_lip'] * thin,
        'lower_lip': ident['lower_lip'] * thin * (1 - 0.2 * au['chin_raise']),
        'centre_y': ident['mouth_y'] + 0.015 * au['chin_raise'],
    }


def _paint_face(u: np.ndarray, v: np.ndarray, ident: Mapping[str, Any], au: Mapping[str, float],
                gaze: tuple[float, float], aa: float) -> np.ndarray:
    """Albedo of the front of the head at texture coordinates (u, v)."""
    skin = np.asarray(ident['skin_rgb'])
    hair = np.asarray(ident['hair_rgb'])
    col = np.tile(skin, (u.shape[0], 1))
    ax = np.abs(u)  # the face is symmetric: paint one side in |u|
    side = np.sign(u)
    crease = ident['crease_depth']

    # Cheeks: a little redder; raised and highlighted by AU6/AU12.
    ex, ey = ident['eye_x'], ident['eye_y']
    cheek = _blob(ax - ex - 0.02, v - (ey - 0.26 + 0.04 * au['cheek_raise']), 0.14, 0.1)
    col *= 1 + (cheek * (0.04 + 0.1 * au['cheek_raise'] + 0.05 * au['lip_corner_pull']))[:, None] \
        * np.array([0.6, -0.15, -0.15])
    col *= (1 + 0.1 * cheek * (au['cheek_raise'] + au['lip_corner_pull']))[:, None]

    # Eye sockets are slightly shaded (a painted stand-in for the orbit's ambient occlusion).
    _darken(col, 0.14 * _blob(ax - ex, v - ey - 0.03, 0.2, 0.12))

    # Forehead wrinkles (AU1 in the middle, AU2 at the sides).
    brow_y = ey + ident['brow_gap']
    fw = (au['brow_inner_raise'] * np.exp(-(u / 0.18) ** 2)
          + au['brow_outer_raise'] * np.exp(-((ax - 0.3) / 0.18) ** 2))
    for k in range(3):
        yk = brow_y + 0.13 + 0.07 * k + 0.03 * au['brow_outer_raise'] + 0.02 * np.cos(u * 3)
        _darken(col, (0.45 * fw) * _fill(np.abs(v - yk) - 0.007, aa) * (ax < 0.5))

    # Glabella furrows (AU4).
    fur = _fill(np.abs(ax - 0.045) - 0.006, aa) * (v > ey) * (v < brow_y + 0.12)
    _darken(col, 0.5 * au['brow_lower'] * fur)

    # Nose-bridge wrinkles (AU9) also show on the head between the eyes.
    for yk in (ey - 0.0, ey - 0.045):
        _darken(col, 0.5 * au['nose_wrinkle'] * _fill(np.abs(v - yk) - 0.006, aa) * (ax < 0.08))

    # Nasolabial folds: from the nose wing to beyond the mouth corner, deepened by AU9/10/12.
    mouth = _mouth_curves(ident, au)
    y0 = ident['nose_bottom'] + 0.04
    x0 = ident['nose_width'] + 0.03
    y1 = mouth['centre_y'] - 0.06 + 0.03 * au['lip_corner_pull']
    x1 = mouth['half_width'] + 0.05 + 0.03 * au['lip_corner_pull']
    t = np.clip((y0 - v) / (y0 - y1), 0, 1)
    xf = x0 + (x1 - x0) * t ** 0.7
    in_range = (v < y0) & (v > y1)
    fold = _fill(np.abs(ax - xf) - 0.008, aa) * in_range * np.sin(np.pi * t) ** 0.5
    _darken(col, (crease + 0.5 * au['lip_corner_pull'] + 0.4 * au['upper_lip_raise']
                  + 0.3 * au['nose_wrinkle']) * fold)

    # Crow's feet (AU6).
    cx, cy = ex + ident['eye_width'] + 0.03, ey
    for ang in (-0.5, 0.0, 0.5):
        dist = _segment_dist(ax, v, cx, cy, cx + 0.06 * math.cos(ang), cy + 0.06 * math.sin(ang))
        _darken(col, 0.45 * au['cheek_raise'] * _fill(dist - 0.005, aa))

    # Chin: mentolabial sulcus below the lower lip, deepened by AU17.
    chin_y = mouth['centre_y'] - mouth['open_lower'] - mouth['lower_lip'] - 0.06
    _darken(col, (0.08 + 0.3 * au['chin_raise']) * _blob(u, v - chin_y, 0.1, 0.025))
    # AU17 also wrinkles the chin boss (a dimpled, darker patch).
    _darken(col, 0.25 * au['chin_raise'] * _blob(u, v - chin_y + 0.09, 0.09, 0.05)
            * (0.6 + 0.4 * np.cos(80 * u) * np.sin(80 * v)))

    _paint_eyes(col, ax, v, side, ident, au, gaze, aa)
    _paint_brows(col, ax, v, ident, au, hair, aa)
    if ident['facial_hair']:
        _paint_facial_hair(col, u, v, ident, mouth, hair, aa)
    _paint_mouth(col, u, v, ident, mouth, au, aa)
    if ident['glasses']:
        _paint_glasses(col, ax, v, ident, aa)
    return col


def _paint_facial_hair(col: np.ndarray, u: np.ndarray, v: np.ndarray, ident: Mapping[str, Any],
                       mouth: Mapping[str, float], hair: np.ndarray, aa: float) -> None:
    kind = ident['facial_hair']
    ax = np.abs(u)
    mw = mouth['half_width']
    top_lip = mouth['centre_y'] + mouth['open_upper'] + mouth['upper_lip']
    # The moustache sits on the upper lip, so it rises with it (AU10) and follows the corners.
    moustache = np.maximum.reduce([
        v - (top_lip + 0.075 - 0.03 * (ax / mw) ** 2),
        top_lip - 0.005 + 0.6 * mouth['corner'] * (ax / mw) ** 2 - v,
        ax - mw - 0.03,
    ])
    region = _fill(moustache, aa * 2)
    if kind in (1, 3):
        # Beard: the lower face below a line that runs from the chin, past the mouth corners, up
        # the cheeks to the sideburns.
        knots = [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]
        heights = [mouth['centre_y'], mouth['centre_y'], ident['nose_bottom'] - 0.04,
                   ident['nose_bottom'] + 0.04, ident['eye_y'] - 0.1, ident['eye_y'] - 0.05]
        region = np.maximum(region, _fill(v - np.interp(ax, knots, heights), aa * 4))
    density = 0.35 if kind == 1 else 0.9
    grain = 0.85 + 0.15 * np.cos(210 * u) * np.sin(190 * v)
    _over(col, density * region, hair[None, :] * grain[:, None])


def _paint_glasses(col: np.ndarray, ax: np.ndarray, v: np.ndarray, ident: Mapping[str, Any],
                   aa: float) -> None:
    ex, ey = ident['eye_x'], ident['eye_y'] + 0.01
    gw, gh = ident['eye_width'] * 1.45, ident['eye_height'] * 1.6 + 0.04
    ring = np.abs(np.hypot((ax - ex) / gw, (v - ey) / gh) - 1) * gh - 0.008
    bridge = np.maximum(np.abs(v - ey - 0.03) - 0.008, ax - (ex - gw * 0.95))
    arm = np.maximum(np.abs(v - ey - 0.03) - 0.007, ex + gw * 0.95 - ax)
    frame = _fill(np.minimum.reduce([ring, bridge, arm]), aa)
    _over(col, frame, ident['frame_rgb'])
    # A faint lens reflection.
    lens = _fill((np.hypot((ax - ex) / gw, (v - ey) / gh) - 1) * gh, aa)
    col += (0.06 * lens * np.clip(v - ey + 0.5 * (ax - ex), 0, 0.1) * 10)[:, None]


def _paint_eyes(col: np.ndarray, ax: np.ndarray, v: np.ndarray, side: np.ndarray,
                ident: Mapping[str, Any], au: Mapping[str, float], gaze: tuple[float, float],
                aa: float) -> None:
    ex, ey, ew, eh = ident['eye_x'], ident['eye_y'], ident['eye_width'], ident['eye_height']
    dx = ax - ex  # positive towards the outer corner
    dy = v - ey - ident['eye_tilt'] * dx
    box = (np.abs(dx) < ew * 1.6) & (np.abs(dy) < eh * 4 + 0.05)
    if not box.any():
        return
    idx = np.flatnonzero(box)
    dx, dy, sd = dx[idx], dy[idx], side[idx]
    sub = col[idx]
    up = eh * (1 + 0.75 * au['upper_lid_raise'] - 0.35 * au['lid_tighten'] - 0.55 * au['lid_droop']
               - 0.15 * au['cheek_raise'])
    lo = eh * 0.75 * (1 + 0.3 * au['upper_lid_raise'] - 0.5 * au['lid_tighten']
                      - 0.6 * au['cheek_raise'])
    prof = np.clip(1 - (dx / ew) ** 2, 0, None)
    # Upper lid peaks nearer the inner corner, as in real eyes.
    y_up = up * prof ** 0.55 * (1 - 0.15 * dx / ew)
    y_lo = -lo * prof ** 0.8
    inside = _fill(np.maximum.reduce([dy - y_up, y_lo - dy, np.abs(dx) - ew]), aa)
    # Lid crease and upper lid skin above the lashes (the crease rises with AU5).
    crease_y = y_up + 0.03 + 0.012 * au['upper_lid_raise']
    _darken(sub, 0.25 * _fill(np.abs(dy - crease_y) - 0.004, aa) * (np.abs(dx) < ew * 0.95))
    # Infraorbital shadow under the lower lid, stronger when the cheek pushes up.
    _darken(sub, (0.1 + 0.3 * au['cheek_raise']) * _fill(np.abs(dy - y_lo + 0.022) - 0.006, aa)
            * (np.abs(dx) < ew * 0.8))
    sclera = np.array([0.93, 0.91, 0.88]) * (0.75 + 0.25 * prof[:, None] ** 0.5)
    _over(sub, inside, sclera)
    gx, gy = gaze
    ix = dx - gx * ew * 0.45 * sd  # gaze moves both irises the same way in u
    iy = dy - gy * eh
    r = np.hypot(ix, iy)
    ri = ident['iris_radius']
    iris = np.asarray(ident['iris_rgb']) * (0.55 + 0.45 * np.clip(1 - r / ri, 0, 1) ** 0.3)[:, None]
    _over(sub, _fill(r - ri, aa) * inside, iris)
    _over(sub, _fill(r - ri * 0.42, aa) * inside, (0.03, 0.03, 0.03))
    _over(sub, _fill(np.hypot(ix + 0.3 * ri, iy - 0.3 * ri) - ri * 0.2, aa) * inside * 0.7,
          (1.0, 1.0, 1.0))
    # Lash line: thick on the upper lid, thin on the lower.
    lash = np.abs(dy - y_up - 0.004) - (0.007 + 0.006 * np.clip(dx / ew, 0, 1))
    _over(sub, _fill(lash, aa) * (np.abs(dx) < ew * 1.05), (0.08, 0.06, 0.05))
    _over(sub, 0.5 * _fill(np.abs(dy - y_lo) - 0.003, aa) * (np.abs(dx) < ew), (0.3, 0.2, 0.18))
    col[idx] = sub


def _paint_brows(col: np.ndarray, ax: np.ndarray, v: np.ndarray, ident: Mapping[str, Any],
                 au: Mapping[str, float], hair: np.ndarray, aa: float) -> None:
    ex, ey, ew = ident['eye_x'], ident['eye_y'], ident['eye_width']
    inner = ex - ew * 0.95 - 0.04 * au['brow_lower']
    length = ident['brow_length'] + 0.03 * au['brow_lower']
    s = (ax - inner) / length
    sc = np.clip(s, 0, 1)
    base = ey + ident['brow_gap']
    yb = (base + ident['brow_arch'] * np.sin(np.pi * (0.15 + 0.85 * sc))
          + 0.11 * au['brow_inner_raise'] * (1 - sc) ** 1.5
          + 0.07 * au['brow_outer_raise'] * (0.3 + 0.7 * sc)
          - 0.1 * au['brow_lower'] * (1 - 0.6 * sc))
    # Knitted (lowered) brows bunch up and look heavier.
    half = ident['brow_thickness'] * (1 - 0.45 * sc) * (1 + 0.3 * au['brow_lower']) / 2 + 0.004
    dist = np.maximum(np.abs(v - yb) - half, np.maximum(-s, s - 1) * length)
    _over(col, 0.92 * _fill(dist, aa), hair * 0.75)


def _paint_mouth(col: np.ndarray, u: np.ndarray, v: np.ndarray, ident: Mapping[str, Any],
                 m: Mapping[str, float], au: Mapping[str, float], aa: float) -> None:
    mw = m['half_width']
    box = (np.abs(u) < mw * 1.3) & (np.abs(v - m['centre_y']) < 0.3)
    if not box.any():
        return
    idx = np.flatnonzero(box)
    x, y = u[idx] / mw, v[idx] - m['centre_y']
    sub = col[idx]
    xc = np.clip(np.abs(x), 0, 1)
    prof = np.clip(1 - x * x, 0, None)
    y_c = m['corner'] * xc ** 2
    # AU10 lifts the upper lip more beside the mid-line (the snarl), so use a flatter profile.
    y_ui = y_c + m['open_upper'] * prof ** 0.6
    y_li = y_c - m['open_lower'] * prof ** 0.8
    bow = 1 - 0.3 * np.exp(-(x / 0.12) ** 2)  # Cupid's bow
    y_uo = y_ui + m['upper_lip'] * prof ** 0.5 * bow
    y_lo = y_li - m['lower_lip'] * prof ** 0.6
    edge = (np.abs(x) - 1) * mw
    lips = _fill(np.maximum.reduce([y - y_uo, y_lo - y, edge]), aa)
    lip_rgb = np.asarray(ident['lip_rgb'])
    # Lower lip a little lighter (it catches the light).
    lip_col = np.where((y < y_c)[:, None], lip_rgb * 1.08, lip_rgb)
    _over(sub, lips, np.clip(lip_col, 0, 1))
    interior = _fill(np.maximum.reduce([y - y_ui, y_li - y, edge]), aa * 0.7)
    _over(sub, interior, (0.22, 0.06, 0.07))
    teeth_u = _fill(np.maximum.reduce([y - y_ui, y_ui - 0.045 - y, (np.abs(x) - 0.8) * mw]), aa)
    teeth_l = _fill(np.maximum.reduce([y - y_li - 0.02, y_li - y, (np.abs(x) - 0.6) * mw]), aa)
    _over(sub, np.maximum(teeth_u, teeth_l) * interior, (0.9, 0.88, 0.8))
    # The lip junction is a dark line even when the mouth is closed (more so when pressed).
    _darken(sub, (0.45 + 0.3 * au['lip_press']) * _fill(np.abs(y - y_c) - 0.004, aa)
            * (np.abs(x) < 1.04))
    col[idx] = sub


# --------------------------------------------------------------------------------------------------
# Rendering.
# --------------------------------------------------------------------------------------------------


def _background(factors: Mapping[str, Any], resolution: int) -> np.ndarray:
    r = resolution
    grid = (np.arange(r) + 0.5) / r - 0.5
    yy, xx = np.meshgrid(-grid, grid, indexing='ij')
    ang = math.radians(factors['background_angle'])
    t = np.clip(0.5 + (xx * math.cos(ang) + yy * math.sin(ang)) * 1.2, 0, 1)[..., None]
    bg = (1 - t) * np.asarray(factors['background_a']) + t * np.asarray(factors['background_b'])
    noise = np.random.default_rng(factors['noise_seed']).normal(0, 1, (r, r, 3))
    return bg + noise * factors['noise_std']


def render(factors: Mapping[str, Any], resolution: int, neutral: bool = False) -> np.ndarray:
    """Renders one face as an (R, R, 3) uint8 RGB image.

    Args:
      factors: an example's factors, as returned by :func:`sample_example_factors` (any of them may be
        edited, e.g. the pose, to render a counterfactual).
      resolution: the side R of the square image.
      neutral: render the same face with every action unit at zero (same subject, pose, light and
        background), i.e. the image's ground-truth neutral face.
    """
    ident = factors['identity']
    au = action_units(factors, neutral=neutral)
    parts = _head_ellipsoids(ident, au)

    n = resolution * _SUPERSAMPLE
    xs = ((np.arange(n) + 0.5) / n * 2 - 1) * _VIEW_HALF
    ys = -xs  # row 0 is the top of the image
    scale = factors['scale']
    rot = head_rotation(factors['yaw'], factors['pitch'], factors['roll'])
    # The head's origin sits a little above the image centre so that chin and hair both fit.
    offset = np.array([factors['shift_x'] * _VIEW_HALF, factors['shift_y'] * _VIEW_HALF + 0.02, 0])
    material, points, normals = _cast(xs, ys, rot, scale, offset, parts, ident)

    albedo = np.zeros((n * n, 3))
    aa = 2 * _VIEW_HALF / n / scale  # one sub-pixel, in head units
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    is_head = material == _MATERIAL_FACE
    face = np.flatnonzero(is_head & (z > 0.05))
    if face.size:
        albedo[face] = _paint_face(x[face], y[face], ident, au,
                                   (factors['gaze_x'], factors['gaze_y']), aa)
    rest = np.flatnonzero(is_head & (z <= 0.05))
    albedo[rest] = ident['skin_rgb']
    skin = np.asarray(ident['skin_rgb'])
    nose = np.flatnonzero(material == _MATERIAL_NOSE)
    if nose.size:
        albedo[nose] = _paint_nose(x[nose], y[nose], normals[nose], ident, au, aa)
    albedo[material == _MATERIAL_EAR] = skin * np.array([1.0, 0.9, 0.88])
    albedo[material == _MATERIAL_NECK] = skin * 0.9
    # Hair: the cap, and the scalp above the hairline (the only hair of a bald subject).
    hair = np.asarray(ident['hair_rgb'])
    scalp = is_head & _has_hair(x, y, z, ident)
    hairy = np.flatnonzero(scalp | (material == _MATERIAL_HAIR))
    if hairy.size:
        theta = np.arctan2(x[hairy], z[hairy])
        # Every texture is even in x, so that a subject is exactly mirror-symmetric.
        strands = 1 + 0.12 * np.cos(theta * 55) * np.cos(3 * y[hairy])
        albedo[hairy] = hair * strands[:, None]

    # Light direction in camera coordinates (towards the light); azimuth > 0 lights from the right.
    azimuth = math.radians(factors['light_azimuth'])
    elevation = math.radians(factors['light_elevation'])
    light = np.array([math.sin(azimuth) * math.cos(elevation), math.sin(elevation),
                      math.cos(azimuth) * math.cos(elevation)])
    ncam = normals @ rot.T
    lambert = np.clip(ncam @ light, 0, None)
    shade = factors['ambient'] + factors['light_strength'] * lambert
    colour = albedo * shade[:, None]

    hit = (material != _MATERIAL_NONE).astype(np.float64)
    r = resolution
    ss = _SUPERSAMPLE
    premult = (colour * hit[:, None]).reshape(r, ss, r, ss, 3).mean(axis=(1, 3))
    alpha = hit.reshape(r, ss, r, ss).mean(axis=(1, 3))[..., None]
    image = premult + (1 - alpha) * _background(factors, r)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def _paint_nose(u: np.ndarray, v: np.ndarray, normals: np.ndarray, ident: Mapping[str, Any],
                au: Mapping[str, float], aa: float) -> np.ndarray:
    col = np.tile(np.asarray(ident['skin_rgb']) * np.array([1.02, 0.98, 0.98]), (u.shape[0], 1))
    for yk in (ident['eye_y'] - 0.0, ident['eye_y'] - 0.045, ident['eye_y'] - 0.09):
        _darken(col, 0.5 * au['nose_wrinkle'] * _fill(np.abs(v - yk) - 0.006, aa))
    # Nostrils: dark ellipses on the underside of the tip; AU9/AU10 flare them.
    flare = 1 + 0.4 * au['nose_wrinkle'] + 0.2 * au['upper_lip_raise']
    nw = ident['nose_width']
    dist = np.hypot((np.abs(u) - 0.45 * nw) / (0.32 * nw * flare),
                    (v - ident['nose_bottom'] - 0.035) / 0.022) - 1
    under = np.clip(-normals[:, 1] * 2, 0, 1)
    _over(col, _fill(dist * 0.02, aa) * under, (0.15, 0.07, 0.06))
    return col


