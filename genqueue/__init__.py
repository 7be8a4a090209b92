"""genqueue: a distributed job queue for batch text generation.

The modules of this package are the shared contract every room imports (errors, params,
settings, protocol, broker, formats, the result line, worker options); they import no
room. The rooms install as subpackages: genqueue.storage, .scheduler and .worker (the
services), genqueue.client and .cli (the entry points). See docs/architecture.md.
"""

__version__ = "0.1.0"
