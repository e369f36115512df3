"""Unit tests: Vision polygons to normalised boxes, landmark names to sights, labeller settings."""

from __future__ import annotations

import pytest

from consumers.boxes import normalise_box
from consumers.matching import SightMatcher, normalise, similarity
from consumers.settings import LabellerSettings
from sightscan.config import ConfigError


def test_pixel_polygon_becomes_a_box_in_0_1():
    box = normalise_box([(64, 48), (320, 48), (320, 240), (64, 240)], 640, 480)
    assert box == pytest.approx((0.1, 0.1, 0.5, 0.5))


def test_rotated_polygon_takes_its_bounding_box():
    box = normalise_box([(100, 50), (200, 100), (150, 200), (50, 150)], 400, 400)
    assert box == pytest.approx((50 / 400, 50 / 400, 200 / 400, 200 / 400))


def test_missing_coordinates_are_zero_as_in_proto3_json():
    # Vision leaves x or y out when it is 0: {"y": 10} is (0, 10).
    box = normalise_box([(None, 10), (100, None), (100, 40), (None, 40)], 200, 100)
    assert box == pytest.approx((0.0, 0.0, 0.5, 0.4))


def test_box_is_clipped_to_the_image():
    box = normalise_box([(-20, -10), (700, -10), (700, 300), (-20, 300)], 640, 480)
    assert box == pytest.approx((0.0, 0.0, 1.0, 300 / 480))


@pytest.mark.parametrize("vertices", [
    [(10, 10), (10, 10), (10, 10), (10, 10)],           # a point
    [(10, 10), (300, 10), (300, 10), (10, 10)],         # a horizontal line
    [(700, 10), (800, 10), (800, 90), (700, 90)],       # wholly right of a 640-wide image
    [],                                                  # no polygon
])
def test_degenerate_boxes_are_skipped(vertices):
    assert normalise_box(vertices, 640, 480) is None


def test_normalised_vertices_are_taken_as_they_are():
    box = normalise_box([(0.25, 0.2), (0.75, 0.2), (0.75, 0.9), (0.25, 0.9)], 640, 480, normalised=True)
    assert box == pytest.approx((0.25, 0.2, 0.75, 0.9))


def test_zero_sized_image_is_an_error():
    with pytest.raises(ValueError, match="positive"):
        normalise_box([(0, 0), (1, 1)], 0, 480)


# Matching ------------------------------------------------------------------------------------------------------


def test_normalise_drops_case_accents_punctuation_and_expands_saint():
    assert normalise("  St. Anselm’s   CATHÉDRALE!") == "saint anselms cathedrale"
    assert normalise("Notre-Dame de Paris") == normalise("notre dame de paris")


SIGHTS = {1: "St. Anselm's Cathedral", 2: "Eiffel Tower", 3: "Old Tower", 4: "Old Gate", 5: "Royal Palace",
          6: "Royal Pagoda", 7: "Cathedral of Notre-Dame de Paris"}


@pytest.mark.parametrize(("description", "sight_id", "how"), [
    ("Saint Anselms Cathedral", 1, "exact"),        # abbreviation, possessive, case
    ("EIFFEL  TOWER", 2, "exact"),                  # case and blanks
    ("Eiffel Towr", 2, "fuzzy"),                    # misspelt
    ("Tour Eiffel", 2, "fuzzy"),                    # French word order
    ("Royal Pagode", 6, "fuzzy"),
    ("Notre Dame de Paris", 7, "words"),            # all its words in one sight's name
    ("Royal Palace Gardens", None, "new"),          # a different place sharing two words
    ("Old Tower Bridge", None, "new"),
    ("Golden Lighthouse", None, "new"),
    ("Tower", None, "new"),                         # one generic word matches nothing
])
def test_landmark_names_match_sights(description, sight_id, how):
    match = SightMatcher(SIGHTS).match(description)
    assert (match.sight_id, match.how) == (sight_id, how)


def test_similar_but_different_sights_stay_apart():
    assert similarity(normalise("Royal Palace"), normalise("Royal Pagoda")) < 0.85
    assert similarity(normalise("North Tower"), normalise("North Gate")) < 0.85


def test_mid_merges_names_in_other_languages():
    matcher = SightMatcher({10: "Cologne Cathedral"}, mids={"/m/01n4w": 10})
    assert matcher.match("Kölner Dom", "/m/01n4w").sight_id == 10
    # Without the mid there is nothing in common to go on: a new sight.
    assert matcher.match("Kölner Dom").sight_id is None


def test_add_remembers_a_new_sight_and_its_mid():
    matcher = SightMatcher({})
    assert matcher.match("Vision Fountain", "/m/x").sight_id is None
    matcher.add(42, "Vision Fountain", "/m/x")
    assert matcher.match("vision fountain").sight_id == 42
    assert matcher.match("Fontaine", "/m/x").sight_id == 42


# Settings ------------------------------------------------------------------------------------------------------


def test_backend_auto_is_vision_with_an_endpoint_or_credentials_else_weak():
    assert LabellerSettings.from_env({}).active_backend == "weak"
    assert LabellerSettings.from_env({"GOOGLE_VISION_ENDPOINT": "http://127.0.0.1:1"}).active_backend == "vision"
    assert LabellerSettings.from_env({"GOOGLE_APPLICATION_CREDENTIALS": "/k.json"}).active_backend == "vision"
    assert LabellerSettings.from_env({"GOOGLE_APPLICATION_CREDENTIALS": "/k.json",
                                      "LABELLER_BACKEND": "weak"}).active_backend == "weak"


@pytest.mark.parametrize(("name", "value"), [("VISION_BATCH_SIZE", "17"), ("VISION_TIMEOUT_S", "0"),
                                             ("GOOGLE_VISION_ENDPOINT", "127.0.0.1:8765"),
                                             ("LABELLER_BACKEND", "magic")])
def test_malformed_settings_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        LabellerSettings.from_env({name: value})


def test_readme_lists_every_labeller_setting_with_its_default():
    from pathlib import Path

    from consumers.settings import describe

    readme = (Path(__file__).resolve().parents[2] / "consumers" / "README.md").read_text()
    for name, default, _ in describe():
        assert f"| `{name}` | {default} |".replace("|  |", "| |") in readme, name
