"""The ImageNet colour statistics every model of the zoo was trained with.

RGB, on [0, 1] images: a network's input is ``(x / 255 - MEAN) / STD``
(:func:`hrseg_jax.data.transforms.normalize`; exports fold the same values
into their graphs).  Plain NumPy, so inference and the benchmark need no
OpenCV.
"""
import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
