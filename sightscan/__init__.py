"""SightScan's shared core: configuration, event schemas, topics, Kafka clients and the warehouse access layer.

Every service (streams, producers, consumers, trainer, gateway) imports these; none keeps its own copy. The core
imports no service and nothing of the local system (localsystem/); tests/core/test_layers.py checks.
"""

__version__ = "0.3.0"  # pyproject.toml's version; CHANGELOG.md says what each release changed
