"""The audit of a dataset (``headstart audit``): duplicates and leaks, likely label mistakes, outliers, blanks."""
