"""How KAFKA_BROKERS, KAFKA_BOOTSTRAP_SERVERS and KAFKA_REPLICATION_FACTOR shape the local cluster and every
client; and that a stack keeps the number of nodes it was created with."""

from __future__ import annotations

import pytest

from localsystem.stack import StackError, with_recorded_brokers
from sightscan.config import Settings


def test_one_node_by_default():
    s = Settings.from_env({})
    assert s.kafka_nodes == [("127.0.0.1", 9092, 9093)]
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert (s.replication_factor, s.min_insync_replicas) == (1, 1)


def test_three_nodes_from_the_first_ports_and_every_broker_for_the_clients():
    s = Settings.from_env({"KAFKA_BROKERS": "3"})
    assert s.kafka_nodes == [("127.0.0.1", 9092, 9093), ("127.0.0.1", 9094, 9095), ("127.0.0.1", 9096, 9097)]
    assert s.bootstrap_servers == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    assert (s.replication_factor, s.min_insync_replicas) == (3, 2)


def test_listed_brokers_are_used_as_listed():
    s = Settings.from_env({"KAFKA_BROKERS": "3", "KAFKA_BOOTSTRAP_SERVERS": "h:1,h:5,h:9",
                           "KAFKA_CONTROLLER_PORT": "2"})
    assert [n[1:] for n in s.kafka_nodes] == [(1, 2), (5, 4), (9, 6)]
    assert s.bootstrap_servers == "h:1,h:5,h:9"
    client = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "a:9092,b:9092,c:9092", "KAFKA_REPLICATION_FACTOR": "3"})
    assert client.bootstrap_servers == "a:9092,b:9092,c:9092"  # a client of a cluster it did not start
    assert (client.replication_factor, client.min_insync_replicas) == (3, 2)


def test_a_stack_keeps_its_number_of_nodes(tmp_path):
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "brokers").write_text("3")
    assert with_recorded_brokers(Settings.from_env({"SIGHTSCAN_HOME": str(tmp_path)})).kafka_brokers == 3
    with pytest.raises(StackError, match="created with 3 Kafka node"):
        with_recorded_brokers(Settings.from_env({"SIGHTSCAN_HOME": str(tmp_path), "KAFKA_BROKERS": "5"}))
