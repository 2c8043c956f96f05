"""Figures and reports: matplotlib figures (data in, Figure out), the Figure-1 panels of a
refine run and the Markdown reports. No TensorFlow.
"""
