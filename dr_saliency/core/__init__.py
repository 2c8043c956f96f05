"""The ground floor: argument checks, typed errors, saliency-map arithmetic and the TensorFlow
boundary. Every wing may use it; it uses none of them.
"""
