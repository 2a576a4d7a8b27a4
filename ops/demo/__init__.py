"""The offline demo: models that install from PyPI and the demo ranker's generated data.

Kept out of ``workers`` so that a production worker never imports it; ``manage.py models
install-demo``, ``ranker demo-data`` and the benchmarks use it.
"""
