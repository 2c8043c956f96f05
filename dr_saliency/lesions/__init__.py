"""Lesion evaluation: saliency map -> scored candidates -> lesion-level FROC of s_0 and S per stage
and lesion type, with bootstrap intervals; its reports and the Figure-1 example panels.
"""
