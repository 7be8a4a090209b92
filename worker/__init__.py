"""genqueue.worker."""
