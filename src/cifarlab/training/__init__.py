"""Training: recipes, numeric precision and the training loop."""
