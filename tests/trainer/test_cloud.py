"""Cloud mode against moto's EC2 server: real boto3 over HTTP."""

from __future__ import annotations

import boto3
import pytest

from sightscan.config import Settings
from trainer import cloud
from trainer.settings import CloudConfig, load


def _new_instance(endpoint: str, stopped: bool = True) -> str:
    ec2 = boto3.client("ec2", region_name="eu-central-1", endpoint_url=endpoint)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge")
    instance_id = instance["Instances"][0]["InstanceId"]
    if stopped:
        ec2.stop_instances(InstanceIds=[instance_id])
    return instance_id


def test_settings_enable_cloud_mode_only_when_instance_configured(aws_env):
    assert load(Settings.from_env({}), {}).cloud is None
    ts = load(Settings.from_env({}), {"MTS_EC2_INSTANCE_ID": "i-0123", "AWS_REGION": "eu-west-1",
                                      "AWS_ENDPOINT_URL": aws_env})
    assert ts.cloud == CloudConfig("i-0123", "eu-west-1", aws_env)


def test_start_then_stop_a_stopped_instance(aws_env):
    cfg = CloudConfig(_new_instance(aws_env), "eu-central-1", aws_env)
    assert cloud.instance_state(cfg) == "stopped"
    assert cloud.start_instance(cfg, wait_s=30) == "running"
    assert cloud.start_instance(cfg, wait_s=30) == "running"  # idempotent: a second request finds it up
    assert cloud.stop_instance(cfg) in ("stopping", "stopped")
    assert cloud.instance_state(cfg) == "stopped"


def test_unknown_instance_fails_to_start_with_reason(aws_env):
    cfg = CloudConfig("i-00000000000000000", "eu-central-1", aws_env)
    with pytest.raises(cloud.InstanceStartFailed, match="i-00000000000000000"):
        cloud.start_instance(cfg, wait_s=4)


def test_terminated_instance_fails_to_start_with_reason(aws_env):
    instance_id = _new_instance(aws_env, stopped=False)
    boto3.client("ec2", region_name="eu-central-1", endpoint_url=aws_env).terminate_instances(
        InstanceIds=[instance_id])
    cfg = CloudConfig(instance_id, "eu-central-1", aws_env)
    with pytest.raises(cloud.InstanceStartFailed, match="terminated"):
        cloud.start_instance(cfg, wait_s=4)


def test_unreachable_endpoint_fails_to_start_with_reason(aws_env):
    cfg = CloudConfig("i-0123", "eu-central-1", "http://127.0.0.1:9")
    with pytest.raises(cloud.InstanceStartFailed, match="could not start"):
        cloud.start_instance(cfg, wait_s=4)
