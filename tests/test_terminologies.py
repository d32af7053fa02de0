"""The DMP's tables vendored in schemas/ans-terminologies/ (ASS_X16, JDV_J57, JDV_J59), read at run time."""

import pytest

from connector.payload import activity, codes


def test_the_vendored_tables_are_whole_with_their_versions():
    counts = {name: (len(t.rows), t.version) for name, t in
              ((n, codes.dmp_terminology(n)) for n in (codes.CLASS_MAP, codes.CLASS_CODES, codes.CONTENT_TYPES))}
    assert counts == {"ASS_X16": (109, "20240927120000"), "JDV_J57": (12, "20230922120000"),
                      "JDV_J59": (101, "20260928120000")}


def test_every_class_ass_x16_gives_is_in_j57():
    for row in codes.dmp_terminology(codes.CLASS_MAP).rows:
        assert codes.class_code(row["class_code"]) is not None, row


def test_j59_lookups_by_code_and_code_system():
    assert [c.code_system for c in codes.content_types("11")] == ["1.2.250.1.213.1.6.1.128", "1.2.250.1.213.2.2"]
    assert codes.is_content_type("04", "1.2.250.1.213.2.2") and not codes.is_content_type("04", "1.2.250.1.71.4.2.4")
    assert codes.content_types("SA01") == [] and codes.content_types(None) == []


@pytest.mark.parametrize("value, code", [("I", "03"), ("O", "07"), ("R", "19"), ("N", "97"), (" 04 ", "04")])
def test_activity_spellings(value, code):
    assert activity.content_type(value).code == code


def test_an_activity_quoted_in_a_message_is_cut():
    with pytest.raises(activity.ActivityError) as err:
        activity.content_type("X" * 500)
    assert len(str(err.value)) < 120
