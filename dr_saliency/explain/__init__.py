"""Explanations: saliency methods for a Keras grader (guided back-propagation and the
baselines), with the model surgery they need in one place.
"""
