"""Training on Lightning: the module, callbacks, the Trainer, ``fit``, the frozen pass computed once,
augmented views, schedule, weight averaging, the learning-rate finder, loggers and DDP."""
