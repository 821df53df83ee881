"""Offscreen multi-view rendering of :class:`~triflow3d.assets.types.Asset` objects.

Two backends behind one interface, with the same shading model so their outputs agree:

- ``egl``: moderngl on a headless EGL context (Mesa llvmpipe on CPU), 4x MSAA, mipmapped textures.
- ``raycast``: trimesh + embreex CPU ray caster, 2x2 supersampled; needs no GL at all.

``make_renderer("auto")`` tries EGL and falls back to the ray caster with a one-line warning.
Heavy imports (moderngl, embreex) happen only when a backend is built. The output type, the renderer
protocol and the shading model both backends share are :mod:`triflow3d.render.shading`'s. See
``docs/rendering.md``.
"""

from __future__ import annotations

import warnings
from typing import Literal

from triflow3d.render.shading import Renderer, RenderOutput

Backend = Literal["auto", "egl", "raycast"]
BACKENDS: tuple[str, ...] = ("auto", "egl", "raycast")


def make_renderer(backend: Backend = "auto") -> Renderer:
    """Build a renderer; ``auto`` prefers EGL and falls back to the ray caster (with a warning)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend in ("auto", "egl"):
        try:
            from triflow3d.render.raster import EGLRenderer

            return EGLRenderer()
        except Exception as e:  # no libEGL, no driver, no moderngl: any of them means "no GL here"
            if backend == "egl":
                raise RuntimeError(f"cannot create a headless EGL context: {e}") from e
            warnings.warn(
                f"EGL unavailable ({type(e).__name__}: {e}); using the CPU ray caster", stacklevel=2
            )
    from triflow3d.render.raycast import RaycastRenderer

    return RaycastRenderer()


__all__ = ["BACKENDS", "Backend", "RenderOutput", "Renderer", "make_renderer"]
