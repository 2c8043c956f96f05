"""Figures: matplotlib drawings that take plain data and return a Figure (never pyplot), for every
wing to draw with (training curves, ROC, FROC, saliency overlays). Reads no files; uses only core.
"""
