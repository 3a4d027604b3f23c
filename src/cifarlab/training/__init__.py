"""Training: the training loops (Keras fit, the fast loop), numeric precision, checkpoints, the run writer."""
