"""Durable asynchronous jobs: records and stores (``record``, ``store``, ``store_sqlite``,
``store_redis``) and the domain's job manager (``manager``)."""
from .manager import JobExpired, JobManager, JobNotFound, JobNotReady, JobResult
from .record import STATUSES, JobRecord

__all__ = ["JobExpired", "JobManager", "JobNotFound", "JobNotReady", "JobRecord", "JobResult", "STATUSES"]
