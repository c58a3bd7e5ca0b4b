"""Measured advice before training: which strategy (the transfer-learning rules) and which input size."""
