"""The name an Airflow process reports as its hostname (``[core] hostname_callable``).

Airflow records the hostname of the process that ran each task instance. Two Celery workers on
one machine (or two containers sharing the host's network namespace) would both report the
machine's name; give each worker its own ``PEERSCALE_WORKER_NAME`` and point Airflow at this
function to tell them apart::

    AIRFLOW__CORE__HOSTNAME_CALLABLE=pipeline.common.worker_identity.hostname
    PEERSCALE_WORKER_NAME=worker-1

(Airflow 3.3 imports the value as a dotted path, ``package.module.function``.) Processes without
``PEERSCALE_WORKER_NAME`` report the fully qualified domain name, as Airflow does by default.
No Airflow import here: this runs inside every Airflow process, including the task runner.
"""

from __future__ import annotations

import os
import socket

ENV_VAR = "PEERSCALE_WORKER_NAME"


def hostname() -> str:
    """``PEERSCALE_WORKER_NAME`` if set, else the machine's fully qualified domain name."""
    name = os.environ.get(ENV_VAR, "").strip()
    return name or socket.getfqdn()
