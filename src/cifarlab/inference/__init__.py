"""Prediction, test-time augmentation and the test-set lookup, below evaluation, serving and training.

Everything that turns a trained model and images into probabilities lives here, so that
``evaluation`` (metrics, reports), ``serving`` (files, HTTP, export) and ``training`` (the
run's final test pass) share one implementation and none imports another for it.
"""
