"""The synthetic room: a procedurally textured scene rendered from labelled capture points.

It is what ``glueloc demo`` indexes and what the test suite runs on, so glueloc can be
tried and tested without anybody's photos. It sits beside the CLI, above the library
layers, and imports none of them.

* ``textures`` — the procedural textures of every surface.
* ``scene``    — the room's geometry and the ray-cast renderer (:class:`Scene`, :class:`Pose`).
* ``dataset``  — capture points and queries rendered to disk with their CSVs (:func:`write_dataset`).
"""

if __name__ != "glueloc.synthetic":  # the folder is not a top-level package: one name, one copy of each module
    raise ImportError(f"import glueloc.synthetic, not {__name__}: this folder installs under the glueloc package")

from glueloc.synthetic.dataset import SyntheticDataset, write_dataset
from glueloc.synthetic.scene import CAMERA_HEIGHT, HFOV_RADIANS, Pose, Scene

__all__ = ["CAMERA_HEIGHT", "HFOV_RADIANS", "Pose", "Scene", "SyntheticDataset", "write_dataset"]
