"""Offline weak labels through `python -m consumers serve`, and `sightscan label CITY` against the local server."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from consumers import cli
from tests.support.labelling import (
    add_image,
    costs_of,
    isolated,
    labels_of,
    publish,
    seed_city,
)
from tests.support.vision_server import box_landmark
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
GOOGLE_VARS = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_VISION_ENDPOINT", "LABELLER_BACKEND")


def test_offline_service_writes_weak_labels_from_the_crawl_query(migrated, label_city, tmp_path):
    settings = isolated(migrated)
    city = seed_city(settings, label_city)
    upload = add_image(settings, city, city.images[0].data + b"uploaded without a sight", None)
    env = {k: v for k, v in os.environ.items() if k not in GOOGLE_VARS}  # no keys: the offline default
    env.update(settings.env(), SIGHTSCAN_LOG_FORMAT="json", LABELLER_GROUP_ID=f"{settings.topic_prefix}-offline")
    log_path = tmp_path / "labeller.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "consumers", "serve"], cwd=ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
        try:
            publish(settings, city, [i.id for i in city.images] + [upload])
            wait_until(lambda: len(labels_of(settings, city.id)) == len(city.images), timeout=60,
                       what="weak labels (see the labeller log)")
            wait_until(lambda: "labelling command done" in log_path.read_text(), timeout=30, what="the summary")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
    assert code == 0
    rows = labels_of(settings, city.id)
    assert [(r.image_id, r.sight, r.box, r.score, r.labeller, r.weak) for r in rows] == [
        (i.id, i.sight, (0, 0, 1, 1), None, "weak-query", True) for i in city.images]
    assert costs_of(settings, city.id).calls_spent == 0  # nothing was sent anywhere
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    started = next(entry for entry in lines if entry["msg"].startswith("labeller backend"))
    assert started["backend"] == "weak-query" and "offline" in started["reason"]
    left = next(entry for entry in lines if entry["msg"].startswith("images left unlabelled"))
    assert left["image_ids"] == [upload]  # reported, not silently dropped
    done = next(entry for entry in lines if entry["msg"] == "labelling command done")
    assert (done["weak"], done["left_unlabelled"], done["labelled_images"]) == (len(city.images), 1, 12)


def test_label_command_labels_unlabelled_images_with_progress(migrated, label_city, vision_server, monkeypatch,
                                                              capsys):
    settings = isolated(migrated)
    city = seed_city(settings, label_city)
    for img in city.images[:6]:
        vision_server.fake.know_image(img.data, [box_landmark(img.sight.upper(), img.pixel_box)])
    vision_server.fake.fail_next(503)  # the command retries too
    for k in GOOGLE_VARS:
        monkeypatch.delenv(k, raising=False)
    for k, v in {**settings.env(), "GOOGLE_VISION_ENDPOINT": vision_server.endpoint, "VISION_BATCH_SIZE": "5",
                 "LABELLER_BACKOFF_S": "0.05"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(cli.slog, "setup", lambda *a, **kw: None)  # keep pytest's log capture

    assert cli.main(["label", city.name]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["city"] == city.name and summary["labelled_images"] == 12
    assert (summary["landmark_labels"], summary["no_landmark"], summary["sent_to_vision"]) == (6, 6, 12)
    assert "labelling 12 images" in err and "12/12 images" in err and "retrying" in err
    assert [r.status for r in vision_server.fake.requests] == [503, 200, 200, 200]  # 5 + 5 + 2 images
    assert len({r.image_id for r in labels_of(settings, city.id)}) == 12

    # Again: nothing left to label, nothing sent.
    assert cli.main(["label", str(city.id), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr()[0])["requested"] == 0
    assert len(vision_server.fake.requests) == 4


def test_label_parser_plugs_into_the_sightscan_command():
    parser = argparse.ArgumentParser(prog="sightscan")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["label", "Paris", "--limit", "3"])
    assert (args.city, args.limit, args.func) == ("Paris", 3, cli.run_label)
