"""genqueue.storage."""
