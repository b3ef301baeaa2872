"""What every binary does first, after flag parsing and before any TensorFlow work."""

from __future__ import annotations

import logging as py_logging


def setup() -> None:
    """GPU memory growth (must precede device initialization) and a quieter TensorFlow log.

    TensorFlow's own Python INFO lines (saver sharding timings, SavedModel signature renames)
    are dropped so that the project's progress lines stand out; its warnings and errors stay.
    """
    import tensorflow as tf

    from samplernn_tf import distribute
    distribute.enable_gpu_memory_growth()
    tf.get_logger().setLevel(py_logging.WARNING)
