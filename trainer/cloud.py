"""Cloud mode, as in the original system: a training request starts the configured EC2 GPU instance, and the
trainer running on that instance stops it when no work is left. Real boto3; AWS_ENDPOINT_URL points it at any
EC2-compatible endpoint (moto's server in the tests)."""

from __future__ import annotations

import logging
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from trainer.settings import CloudConfig

log = logging.getLogger(__name__)


class InstanceStartFailed(RuntimeError):
    """The instance could not be started; the message is the reason for the failure event."""


def ec2_client(cloud: CloudConfig) -> Any:
    # Few, quick retries: a training request should fail visibly rather than hang on an unreachable endpoint.
    cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    return boto3.client("ec2", region_name=cloud.region, endpoint_url=cloud.endpoint_url, config=cfg)


def instance_state(cloud: CloudConfig, client: Any | None = None) -> str:
    client = client or ec2_client(cloud)
    reply = client.describe_instances(InstanceIds=[cloud.instance_id])
    return reply["Reservations"][0]["Instances"][0]["State"]["Name"]


def start_instance(cloud: CloudConfig, wait_s: float = 300.0, client: Any | None = None) -> str:
    """Start the instance (a no-op when it already runs) and wait until it is running; returns its state."""
    client = client or ec2_client(cloud)
    try:
        state = instance_state(cloud, client)
        if state in ("running", "pending"):
            log.info("training instance already up", extra={"instance": cloud.instance_id, "state": state})
        else:
            if state in ("terminated", "shutting-down"):
                raise InstanceStartFailed(f"EC2 instance {cloud.instance_id} is {state} and cannot be started")
            client.start_instances(InstanceIds=[cloud.instance_id])
            log.info("training instance starting", extra={"instance": cloud.instance_id, "was": state})
        delay = 2
        client.get_waiter("instance_running").wait(
            InstanceIds=[cloud.instance_id],
            WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(wait_s // delay))})
        return instance_state(cloud, client)
    except InstanceStartFailed:
        raise
    except WaiterError as exc:
        raise InstanceStartFailed(f"EC2 instance {cloud.instance_id} did not reach running: {exc}") from exc
    except (ClientError, BotoCoreError, IndexError, KeyError) as exc:
        raise InstanceStartFailed(f"could not start EC2 instance {cloud.instance_id}: {exc}") from exc


def stop_instance(cloud: CloudConfig, client: Any | None = None) -> str:
    """Stop the instance (the trainer on it calls this when idle); returns the state EC2 reports."""
    client = client or ec2_client(cloud)
    reply = client.stop_instances(InstanceIds=[cloud.instance_id])
    state = reply["StoppingInstances"][0]["CurrentState"]["Name"]
    log.info("training instance stopping", extra={"instance": cloud.instance_id, "state": state})
    return state
