"""The ground floor: argument checks, saliency-map arithmetic and the TensorFlow boundary.
Every wing may use it; it uses none of them.
"""
