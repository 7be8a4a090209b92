"""genqueue.worker.engines."""
