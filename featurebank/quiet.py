"""Importing Keras without TensorFlow's start-up log lines (oneDNN, CUDA probing) on the user's terminal."""

from __future__ import annotations

import os
import sys


def import_keras():
    """``import keras`` with stderr silenced at the file-descriptor level during TensorFlow's start-up.

    TensorFlow's C++ logging writes before TF_CPP_MIN_LOG_LEVEL is read, so the environment cannot
    silence it. Import errors still propagate normally once stderr is restored.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (some notebooks): import plainly
        import keras

        return keras
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return keras
