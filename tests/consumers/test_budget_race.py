"""The cost cap with two labellers racing on one city, and across a restart."""

from __future__ import annotations

from consumers.service import LabellerService
from tests.support.labelling import (
    add_image,
    costs_of,
    isolated,
    labeller_settings,
    labels_of,
    publish,
    running,
    seed_city,
)
from tests.support.vision_server import box_landmark
from tests.support.waiting import wait_until

CAP = 5


def test_two_labellers_never_spend_more_than_the_cap_and_a_restart_keeps_it(migrated, label_city, vision_server):
    settings = isolated(migrated, max_google_vision_calls_per_new_city=CAP)
    city = seed_city(settings, label_city)  # 12 images, cap 5
    fake = vision_server.fake
    fake.latency_s = 0.05  # long enough for the two labellers' requests to overlap
    for img in city.images:
        fake.know_image(img.data, [box_landmark(img.sight, img.pixel_box)])
    ids = [i.id for i in city.images]

    # Two labellers in different consumer groups: both get every request (as `sightscan label` beside the
    # service would, or a second deployment), with 2 images per Vision request so budget is reserved often.
    first = LabellerService(settings, labeller_settings(vision_server.endpoint, group_id=f"{settings.topic_prefix}-a",
                                                        batch_size=2))
    second = LabellerService(settings, labeller_settings(vision_server.endpoint, group_id=f"{settings.topic_prefix}-b",
                                                         batch_size=2))
    with running(first), running(second):
        for seq, start in enumerate(range(0, 12, 4), 1):
            publish(settings, city, ids[start:start + 4], seq=seq)
        wait_until(lambda: first.worker.handled == 3 and second.worker.handled == 3, what="both labellers done")

    rows = labels_of(settings, city.id)
    costs = costs_of(settings, city.id)
    assert costs.calls_spent <= CAP and fake.images_received <= CAP
    assert costs.calls_spent == fake.images_received == CAP  # the budget was used, not wasted
    # Every image labelled once: by Vision while the budget lasted, then by its query sight (weak), never twice.
    assert sorted(r.image_id for r in rows) == sorted(ids)
    assert sum(r.labeller == "google-vision" for r in rows) == CAP
    weak = [r for r in rows if r.labeller == "weak-query"]
    assert len(weak) == 12 - CAP and all(r.weak and r.box == (0, 0, 1, 1) for r in weak)
    assert costs.images_over_budget == 12 - CAP

    # A restart: a new labeller instance reads the spent budget from the warehouse; nothing more goes to Vision.
    fake.latency_s = 0.0
    crawled = add_image(settings, city, city.images[0].data + b"another copy", "Market Arch")
    uploaded = add_image(settings, city, city.images[1].data + b"an upload", None)
    restarted = LabellerService(settings, labeller_settings(vision_server.endpoint,
                                                            group_id=f"{settings.topic_prefix}-c"))
    summary = restarted.handle({"request_id": f"label-{city.id}-4", "city_id": city.id,
                                "image_ids": [crawled, uploaded]})
    restarted.labeller.close()
    restarted.worker.consumer.close()
    assert fake.images_received == CAP and costs_of(settings, city.id).calls_spent == CAP
    assert (summary["over_budget"], summary["weak"], summary["left_unlabelled"]) == (2, 1, 1)
    new_rows = {r.image_id: r for r in labels_of(settings, city.id) if r.image_id in (crawled, uploaded)}
    assert new_rows[crawled].sight == "Market Arch" and new_rows[crawled].weak
    # The upload has no query sight: nothing true to write, so it stays unlabelled (and counted as over budget).
    assert uploaded not in new_rows
    assert costs_of(settings, city.id).images_over_budget == 12 - CAP + 2
