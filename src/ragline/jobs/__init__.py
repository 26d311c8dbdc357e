"""Ingestion jobs behind one protocol (:class:`Jobs`): :class:`JobQueue` runs them in
this process (the embedded default), :class:`DistributedJobs` as parts that every worker
process of a cluster takes. Which one a deployment gets is decided in one place,
:func:`ragline.backend.build_backend`."""

from .contract import SYSTEM, TERMINAL, JobInput, Jobs, allowed_path, load_inputs, missing_job
from .distributed import DistributedJobs
from .local import JobQueue

__all__ = [
    "SYSTEM",
    "TERMINAL",
    "DistributedJobs",
    "JobInput",
    "JobQueue",
    "Jobs",
    "allowed_path",
    "load_inputs",
    "missing_job",
]
