"""sightscan.names: one normalisation for city and sight names (pure unit tests, no stack)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sightscan.names import MAX_KEY_CHARS, MAX_NAME_CHARS, BadName, clean_name, name_key, nameable

PLAIN = "Hiddenbürg"
NFC = unicodedata.normalize("NFC", PLAIN)
NFD = unicodedata.normalize("NFD", PLAIN)


@pytest.mark.parametrize("raw", [
    "Hiddenburg\n", "\tHiddenburg", "Hiddenburg\r", "\r\nHiddenburg\r\n", " Hiddenburg ", "Hiddenburg\u00a0",
    "Hiddenburg\u2028", "\u3000Hiddenburg", "Hiddenburg\u200b", "\ufeffHiddenburg", "Hiddenburg\x00",
])
def test_blanks_and_invisibles_around_are_dropped(raw: str) -> None:
    assert clean_name(raw) == "Hiddenburg"
    assert name_key(raw) == name_key("Hiddenburg") == "hiddenburg"


def test_nfc_and_nfd_are_one_name() -> None:
    assert NFC != NFD
    assert clean_name(NFD) == NFC
    assert name_key(NFD) == name_key(NFC)


@pytest.mark.parametrize("raw, display", [
    ("Hidden\u200bburg", "Hiddenburg"),        # zero-width space inside
    ("Hidden\u200dburg", "Hiddenburg"),        # zero-width joiner
    ("Hidden\u00adburg", "Hiddenburg"),        # soft hyphen
    ("Hidden\u202eburg", "Hiddenburg"),        # right-to-left override
    ("Hidden\u2066burg\u2069", "Hiddenburg"),  # bidi isolates
    ("Hidden\x00burg", "Hiddenburg"),          # NUL: psycopg2 refuses it in a literal
    ("Hidden\x07burg", "Hiddenburg"),          # other control characters
    ("Hiddenburg\u3164", "Hiddenburg"),        # Hangul filler: default-ignorable, though a letter (Lo)
    ("Hidden\u034fburg", "Hiddenburg"),        # combining grapheme joiner
    ("Hiddenburg\ufe0f", "Hiddenburg"),        # variation selector
])
def test_format_and_control_characters_are_removed(raw: str, display: str) -> None:
    assert clean_name(raw) == display
    assert name_key(raw) == name_key(display)


def test_full_width_letters_are_plain_letters() -> None:
    assert clean_name("Ｈｉｄｄｅｎｂｕｒｇ") == "Hiddenburg"
    assert name_key("ＨＩＤＤＥＮＢＵＲＧ") == name_key("hiddenburg")


def test_case_folds_beyond_lower_case() -> None:
    assert name_key("STRASSE") == name_key("Straße") == name_key("strasse")
    assert name_key("ΣΊΣΥΦΟΣ") == name_key("σίσυφος") == name_key("σίσυφοσ")
    assert clean_name("Straße") == "Straße"  # the display form keeps the case as typed


def test_inner_blanks_collapse_and_whitespace_becomes_a_space() -> None:
    assert clean_name("  Cdc \t\n  Town ") == "Cdc Town"
    assert clean_name("Rio\u00a0de\u2003Janeiro") == "Rio de Janeiro"
    assert clean_name("Old\nTower") == "Old Tower"  # a line break is a blank, not nothing


@pytest.mark.parametrize("raw", ["", " ", "\n\t\r", "\u200b", "\u202e", "\ufeff\u200d", "\x00", "\u200b \u200b"])
def test_names_with_nothing_printable_are_refused(raw: str) -> None:
    with pytest.raises(BadName, match="printable"):
        clean_name(raw)
    with pytest.raises(BadName):
        name_key(raw)
    assert not nameable(raw)


@pytest.mark.parametrize("raw", ["A\ud800B", "\udfff", "Lisbon\udc80"])
def test_lone_surrogates_are_refused(raw: str) -> None:
    with pytest.raises(BadName, match="is not valid Unicode"):
        clean_name(raw)
    with pytest.raises(BadName, match="is not valid Unicode"):
        name_key(raw)


def test_length_limit_counts_the_clean_name() -> None:
    assert MAX_NAME_CHARS == 200
    assert clean_name("a" * 200) == "a" * 200
    assert clean_name(" " + "a" * 200 + "\u200b" * 50 + "\n") == "a" * 200  # what is removed does not count
    with pytest.raises(BadName, match="at most 200 characters"):
        clean_name("a" * 201)
    with pytest.raises(BadName, match="at most 200"):
        name_key("a" * (MAX_KEY_CHARS + 1))


def test_a_key_of_a_long_expanding_name_is_itself_a_valid_name_key() -> None:
    # Case folding lengthens "ß" to "ss": the key of a 200-character name can be longer than 200.
    key = name_key("ß" * 200)
    assert len(key) == 400
    assert name_key(key) == key


def test_messages_are_for_people() -> None:
    for raw in ("", "\u200b", "A\ud800B", "x" * 300):
        with pytest.raises(BadName) as info:
            clean_name(raw)
        message = str(info.value)
        assert message and "BadName" not in message and "Error" not in message
    assert issubclass(BadName, ValueError)  # callers that caught ValueError for an empty name still do


def test_non_text_is_refused() -> None:
    with pytest.raises(BadName):
        clean_name(None)  # type: ignore[arg-type]


# Properties -----------------------------------------------------------------------------------------------

_FORMAT = st.sampled_from(["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e", "\u202a",
                           "\u2066", "\u061c", "\u180e"])
_names = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)


def _or_bad(fn, raw: str) -> str | None:
    try:
        return fn(raw)
    except BadName:
        return None


@given(_names)
def test_both_forms_are_idempotent(raw: str) -> None:
    clean = _or_bad(clean_name, raw)
    if clean is not None:
        assert clean_name(clean) == clean
    key = _or_bad(name_key, raw)
    if key is not None:
        assert name_key(key) == key
        assert name_key(clean) == key


@given(_names, _FORMAT, st.integers(min_value=0))
def test_an_inserted_format_character_changes_nothing(raw: str, invisible: str, at: int) -> None:
    at %= len(raw) + 1
    assert _or_bad(name_key, raw[:at] + invisible + raw[at:]) == _or_bad(name_key, raw)


@given(_names)
def test_unicode_forms_change_nothing(raw: str) -> None:
    key = _or_bad(name_key, raw)
    for form in ("NFC", "NFD", "NFKC", "NFKD"):
        assert _or_bad(name_key, unicodedata.normalize(form, raw)) == key


@given(_names)
def test_the_clean_form_has_no_invisible_characters_nor_outer_blanks(raw: str) -> None:
    clean = _or_bad(clean_name, raw)
    if clean is None:
        return
    assert clean == clean.strip() and "  " not in clean
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in clean)
    assert all(c == " " or not c.isspace() for c in clean)
