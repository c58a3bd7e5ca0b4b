"""The ``headstart`` command: options declared once, commands that call the Python API, console output."""
