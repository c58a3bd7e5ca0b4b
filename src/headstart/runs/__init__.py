"""The run folder: its files, its lock, and reading its checkpoints back into a model."""
