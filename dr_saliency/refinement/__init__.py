"""Iterative saliency map refinement: the loop, the erase step (binarise + inpaint), the
result type, the HDF5 result store and running the loop over a dataset. No TensorFlow.
"""
