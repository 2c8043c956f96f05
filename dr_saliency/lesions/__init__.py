"""Lesion evaluation: saliency map -> scored candidates -> lesion-level FROC per stage and
lesion type, with bootstrap intervals. No TensorFlow.
"""
