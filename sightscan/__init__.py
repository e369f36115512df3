"""SightScan's shared core: configuration, event schemas, the warehouse access layer and the local stack.

Every service (streams, producers, consumers, trainer, gateway) imports these; none keeps its own copy.
"""

__version__ = "0.1.0"
