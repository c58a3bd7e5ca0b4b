"""Helpers every layer may use: writing files safely, progress a person can watch, the device to run on."""
