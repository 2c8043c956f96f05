"""The grader: the VGG-16 regression model, its training (augmentation, balancing, resume),
its metrics and its evaluation on a dataset split.
"""
