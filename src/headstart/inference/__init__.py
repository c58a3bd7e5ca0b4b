"""Using a trained model: predict, export, serve. Nothing here imports Lightning or the training layer."""
