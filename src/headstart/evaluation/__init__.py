"""The tutorial's evaluation (accuracy, number correct, confusion matrix) and the metrics training monitors."""
