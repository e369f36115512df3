"""The local system: the stack (PostgreSQL, Kafka, Connect), the supervisor, the offline demo and the `sightscan`
command. It sits above the services and starts them as processes; nothing in the shared core (`sightscan/`) or in
a service folder imports it (tests/core/test_layers.py checks).
"""
