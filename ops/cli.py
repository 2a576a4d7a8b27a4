"""The root of the command line; each group lives in its own module."""

from __future__ import annotations

import click

from ops.cli_audit import audit
from ops.cli_db import db
from ops.cli_evaluate import evaluate_cmd
from ops.cli_fuser import fuser
from ops.cli_jobs import jobs
from ops.cli_keys import keys
from ops.cli_models import models
from ops.cli_processes import dispatcher, worker
from ops.cli_queues import queues, workers
from ops.cli_ranker import ranker
from ops.cli_serve import serve
from ops.cli_tenants import tenants
from ops.embedded import run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """blendq: batch jobs through an ensemble of LLMs (generate, rank pairwise, fuse).

    Settings come from BLENDQ_* environment variables (see the README).
    """


jobs.add_command(evaluate_cmd)  # its own module: ops/cli_evaluate.py
for command in (db, jobs, models, worker, dispatcher, run, queues, workers, audit, ranker, fuser,
                keys, tenants, serve):
    cli.add_command(command)
