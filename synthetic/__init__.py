"""The synthetic room: a procedurally textured scene rendered from labelled capture points.

It is what ``glueloc demo`` indexes and what the test suite runs on, so glueloc can be
tried and tested without anybody's photos. It sits beside the CLI, above the library
layers, and imports none of them.

* ``scene`` — the room, its textures, the ray-cast renderer and the dataset writer.
"""

if __name__ != "glueloc.synthetic":  # the folder is not a top-level package: one name, one copy of each module
    raise ImportError(f"import glueloc.synthetic, not {__name__}: this folder installs under the glueloc package")

from glueloc.synthetic.scene import CAMERA_HEIGHT, HFOV_RADIANS, Pose, Scene, SyntheticDataset, write_dataset

__all__ = ["CAMERA_HEIGHT", "HFOV_RADIANS", "Pose", "Scene", "SyntheticDataset", "write_dataset"]
