"""Fundus images and data: field-of-view geometry, the synthetic generator, the dataset
layouts and the preprocessing job. numpy/OpenCV/scipy only, no TensorFlow.
"""
