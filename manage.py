#!/usr/bin/env python
"""blendq's one command-line entry: ``python manage.py --help`` lists every group."""

from ops.cli import cli

if __name__ == "__main__":
    cli()
