"""Figures: matplotlib drawing functions that take plain data and return a Figure (never pyplot).

A toolbox every wing may draw with (training curves, ROC, FROC, saliency overlays); it reads no
files and imports no other wing.
"""
