"""Rasteriser backend: moderngl on a headless EGL context (Mesa llvmpipe on CPU, or a GPU driver).

Per view two draws: a 4x MSAA colour pass (premultiplied linear RGBA, resolved, then un-premultiplied and
converted to sRGB on the CPU) and a single-sample geometry pass (world normal + view-axis depth at each
pixel centre, which also gives the mask), so depth and normals are never averaged across edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import moderngl
import numpy as np

from triflow3d.assets.types import Asset, MeshPart
from triflow3d.cameras import Rig, opengl_projection
from triflow3d.conventions import srgb_to_linear
from triflow3d.render import shading as R

MSAA_SAMPLES = 4
GL_SRGB8_ALPHA8 = 0x8C43  # textures are sRGB: the sampler linearises before filtering

_VERTEX = """
#version 330
uniform mat4 mvp;
in vec3 in_pos; in vec3 in_normal; in vec2 in_uv; in vec4 in_color;
out vec3 v_pos; out vec3 v_normal; out vec2 v_uv; out vec4 v_color;
void main() {
    gl_Position = mvp * vec4(in_pos, 1.0);
    v_pos = in_pos; v_normal = in_normal; v_uv = in_uv; v_color = in_color;
}
"""

_FRAGMENT = f"""
#version 330
uniform sampler2D tex;
uniform vec4 base_color;     // linear
uniform vec3 cam_pos;
uniform vec3 view_axis;      // unit, camera -> scene
uniform bool geometry_pass;
in vec3 v_pos; in vec3 v_normal; in vec2 v_uv; in vec4 v_color;
out vec4 f_out;
void main() {{
    vec4 albedo = base_color * v_color * texture(tex, v_uv);
    if (albedo.a < {R.ALPHA_CUTOFF}) discard;
    vec3 n = v_normal;
    if (dot(n, n) < 1e-12) n = cross(dFdx(v_pos), dFdy(v_pos));  // no vertex normals: flat shading
    n = normalize(n);
    if (dot(n, cam_pos - v_pos) < 0.0) n = -n;  // double-sided: normals face the viewer
    if (geometry_pass) {{
        f_out = vec4(n, dot(v_pos - cam_pos, view_axis));
    }} else {{
        f_out = vec4(albedo.rgb * ({R.AMBIENT} + {R.DIFFUSE} * abs(dot(n, view_axis))), 1.0);
    }}
}}
"""


@dataclass
class _GpuPart:
    vao: moderngl.VertexArray
    resources: tuple  # buffers / textures to release with the part
    texture: moderngl.Texture
    base_color: tuple[float, float, float, float]  # linear


class EGLRenderer:
    """Renders assets with OpenGL 3.3 on a standalone EGL context (created once per renderer)."""

    name = "egl"

    def __init__(self) -> None:
        self.ctx = moderngl.create_standalone_context(backend="egl")
        self.prog = self.ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
        self.white = self.ctx.texture((1, 1), 4, b"\xff\xff\xff\xff")
        self._targets: dict[int, tuple[moderngl.Framebuffer, ...]] = {}

    def render(self, asset: Asset, rig: Rig, size: int) -> R.RenderOutput:
        parts = [self._upload(p) for p in asset.parts if len(p.faces) > 0]
        try:
            views = [self._render_view(parts, c2w, rig.fov_deg, size) for c2w in rig.c2w.double().numpy()]
        finally:
            for p in parts:
                for r in p.resources:
                    r.release()
        rgba, geom = (np.stack(x) for x in zip(*views, strict=True))  # (N, S, S, 4) each
        depth = geom[..., 3].astype(np.float32)
        mask = depth > 0
        normal = np.where(mask[..., None], geom[..., :3], 0.0).astype(np.float32)
        return R.RenderOutput(
            rgba=R.finish_rgba(rgba), depth=np.where(mask, depth, 0.0), normal=normal, mask=mask
        )

    def _upload(self, part: MeshPart) -> _GpuPart:
        v = len(part.vertices)
        normals = part.normals if part.normals is not None else np.zeros((v, 3), np.float32)
        uv = part.uv if part.has_texture else np.zeros((v, 2), np.float32)
        colors = part.vertex_colors if part.vertex_colors is not None else np.ones((v, 4), np.float32)
        colors = np.concatenate([srgb_to_linear(colors[:, :3]), colors[:, 3:]], axis=1)
        data = np.concatenate([part.vertices, normals, uv, colors], axis=1).astype("f4")  # (V, 12)
        vbo = self.ctx.buffer(np.ascontiguousarray(data).tobytes())
        ibo = self.ctx.buffer(np.ascontiguousarray(part.faces, dtype="u4").tobytes())
        attrs = ("in_pos", "in_normal", "in_uv", "in_color")
        vao = self.ctx.vertex_array(
            self.prog, [(vbo, "3f 3f 2f 4f", *attrs)], index_buffer=ibo, index_element_size=4
        )
        resources: tuple = (vao, vbo, ibo)
        tex = self.white
        if part.has_texture:
            tex = _upload_texture(self.ctx, part.texture)
            resources += (tex,)
        base = tuple(srgb_to_linear(np.asarray(part.base_color[:3]))) + (float(part.base_color[3]),)
        return _GpuPart(vao=vao, resources=resources, texture=tex, base_color=base)

    def _framebuffers(self, size: int) -> tuple[moderngl.Framebuffer, ...]:
        """(msaa colour, resolved colour, geometry) framebuffers for ``size``, created once."""
        if size not in self._targets:
            ctx, s = self.ctx, (size, size)
            msaa = ctx.framebuffer(
                ctx.renderbuffer(s, 4, samples=MSAA_SAMPLES, dtype="f4"),
                ctx.depth_renderbuffer(s, samples=MSAA_SAMPLES),
            )
            resolved = ctx.framebuffer(ctx.renderbuffer(s, 4, dtype="f4"))
            geometry = ctx.framebuffer(ctx.renderbuffer(s, 4, dtype="f4"), ctx.depth_renderbuffer(s))
            self._targets[size] = (msaa, resolved, geometry)
        return self._targets[size]

    def _render_view(self, parts: list[_GpuPart], c2w: np.ndarray, fov: float, size: int):
        """One camera -> premultiplied linear RGBA (S, S, 4) and (normal, depth) (S, S, 4), row 0 = top."""
        msaa, resolved, geometry = self._framebuffers(size)
        proj = opengl_projection(fov, R.NEAR, R.FAR).double().numpy()
        mvp = proj @ np.linalg.inv(c2w)
        self.prog["mvp"].write(mvp.T.astype("f4").tobytes())  # GLSL matrices are column-major
        self.prog["cam_pos"].value = tuple(c2w[:3, 3])
        self.prog["view_axis"].value = tuple(-c2w[:3, 2])
        self.ctx.enable(moderngl.DEPTH_TEST)
        self.ctx.disable(moderngl.CULL_FACE)
        out = []
        for fbo, geometry_pass in ((msaa, False), (geometry, True)):
            fbo.use()
            fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
            self.prog["geometry_pass"].value = geometry_pass
            for p in parts:
                self.prog["base_color"].value = p.base_color
                p.texture.use(0)
                p.vao.render(moderngl.TRIANGLES)
            if not geometry_pass:
                self.ctx.copy_framebuffer(resolved, msaa)
                fbo = resolved
            img = np.frombuffer(fbo.read(components=4, dtype="f4"), dtype=np.float32)
            out.append(img.reshape(size, size, 4)[::-1])  # GL rows start at the bottom
        return out[0], out[1]


def _upload_texture(ctx: moderngl.Context, image: np.ndarray) -> moderngl.Texture:
    """(H, W, 4) uint8, row 0 = top. Uploaded as is: GL's t = 0 is then the top row, which is exactly
    the glTF convention of MeshPart.uv (v = 0 is the top), so no flip is needed on either side."""
    h, w = image.shape[:2]
    tex = ctx.texture(
        (w, h), 4, np.ascontiguousarray(image, dtype=np.uint8).tobytes(), internal_format=GL_SRGB8_ALPHA8
    )
    tex.build_mipmaps()
    tex.filter = (moderngl.LINEAR_MIPMAP_LINEAR, moderngl.LINEAR)
    return tex
