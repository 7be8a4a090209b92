"""genqueue.scheduler."""
