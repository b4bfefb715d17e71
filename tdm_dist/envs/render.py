"""Offscreen pictures of environments: one body per PNG, and the overview sheet of the walker families.

MuJoCo renders offscreen through EGL (GPU machines) or OSMesa (software, any machine); which one is
chosen by ``MUJOCO_GL`` when mujoco is first imported, so set it before importing ``tdm_dist.envs``.
"""

from __future__ import annotations

import os
from pathlib import Path

import mujoco
import numpy as np

from tdm_dist.errors import ConfigError

WIDTH, HEIGHT = 480, 360  # pixels of one picture


def _renderer(model, width: int, height: int) -> mujoco.Renderer:
    """A renderer, or ``ConfigError`` saying how to get one: mujoco raises many kinds of errors here."""
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
    model.vis.global_.offheight = max(model.vis.global_.offheight, height)
    try:
        return mujoco.Renderer(model, height, width)
    except Exception as e:  # no display, no EGL device, no libOSMesa: each fails differently
        backend = os.environ.get("MUJOCO_GL", "(unset: glfw, which needs a display)")
        raise ConfigError(
            f"no offscreen renderer with MUJOCO_GL={backend} ({type(e).__name__}: {e}); "
            "set MUJOCO_GL=egl on a machine with a GPU, or MUJOCO_GL=osmesa with OSMesa installed "
            "(apt-get install libosmesa6)"
        ) from None


def picture(env, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """RGB image [height, width, 3] uint8 of an ``Env``'s current state, the camera framing the whole body."""
    model, data = env.physics.model.ptr, env.physics.data.ptr
    mujoco.mj_forward(model, data)
    bodies = [g for g in range(model.ngeom) if model.geom_bodyid[g] > 0]  # leave out the floor and the world
    centre = data.xipos[1] if not bodies else data.geom_xpos[bodies].mean(0)
    extent = max((np.linalg.norm(data.geom_xpos[g] - centre) + model.geom_rbound[g] for g in bodies), default=1.0)
    camera = mujoco.MjvCamera()
    camera.lookat[:] = centre
    camera.distance = 1.0 + 2.2 * extent
    camera.azimuth, camera.elevation = 135.0, -25.0
    renderer = _renderer(model, width, height)
    try:
        renderer.update_scene(data, camera)
        return renderer.render().copy()
    finally:
        renderer.close()


def save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def overview_sheet(pictures: dict[str, list[tuple[str, np.ndarray]]], path: Path) -> None:
    """One column per family, one row per body, like the paper's Fig. 3; ``pictures``: family -> [(name, image)]."""
    from matplotlib.figure import Figure

    rows = max(len(images) for images in pictures.values())
    fig = Figure(figsize=(3.2 * len(pictures), 2.5 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, len(pictures), squeeze=False)
    for col, (family, images) in enumerate(pictures.items()):
        axes[0, col].set_title(family, fontsize=14)
        for row in range(rows):
            ax = axes[row, col]
            ax.set_axis_off()
            if row < len(images):
                name, image = images[row]
                ax.imshow(image)
                ax.text(0.5, -0.02, name, transform=ax.transAxes, ha="center", va="top", fontsize=8)
    fig.suptitle("The procedural walker universe (paper §4.3.2, Fig. 3)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
