"""genqueue: a distributed job queue for batch text generation.

This package is the public face (CLI, Python client, settings). It stays light to import:
the scheduler, storage and worker subpackages are imported lazily where needed.
"""

__version__ = "0.1.0"
