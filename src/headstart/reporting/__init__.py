"""Pictures and pages: matplotlib plots and the Jinja2 HTML reports (templates/).

Drawing only: the numbers come from the layers above.
"""
