"""Evaluation: metrics, reports and plots of a trained model."""
