"""Serving: using a trained model on new images (prediction, HTTP service, export)."""
