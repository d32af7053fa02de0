import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector import ins

TEST = ins.INS_NIR_TEST


# Keys published with the INSi test fixtures and the ANS CDA examples (dmp-spec-notes §5).
@pytest.mark.parametrize(
    "nir13, key",
    [
        ("297022A020778", 78),  # Corse-du-Sud
        ("180032B020401", 23),  # Haute-Corse
        ("2360663220836", 56),
        ("2090763220834", 39),
        ("2790351215189", 89),
        ("2070585756270", 97),  # N mod 97 == 0: the key is 97, never 00
    ],
)
def test_nir_key_matches_published_examples(nir13, key):
    assert ins.nir_key(nir13) == key
    assert ins.check_ins(f"{nir13}{key:02d}", TEST) is None


def test_corsica_is_not_the_same_as_its_digits():
    # 2A counts as 19, 2B as 18: not 20, nor the letters' code points.
    assert ins.nir_key("297022A020778") == 97 - 2970219020778 % 97
    assert ins.nir_key("297022B020778") == 97 - 2970218020778 % 97
    assert ins.nir_key("297022A020778") != ins.nir_key("2970220020778")


def test_key_below_ten_is_written_with_two_digits():
    nir13 = next(f"1800175{n:03d}123" for n in range(1000) if ins.nir_key(f"1800175{n:03d}123") < 10)
    key = ins.nir_key(nir13)
    assert ins.check_ins(f"{nir13}{key:02d}", TEST) is None
    assert ins.check_ins(f"{nir13}{key}", TEST) == "INS matricule has 14 characters, expected 15"


@pytest.mark.parametrize(
    "matricule, oid, expected",
    [
        (None, TEST, "INS matricule is missing"),
        ("", TEST, "INS matricule is missing"),
        ("279035121518989", None, "INS OID is missing"),
        ("279035121518989", "1.2.250.1.213.1.4.2", "not an INS OID"),  # legacy INS-C
        ("27903512151898", TEST, "has 14 characters"),
        ("2790351215189890", TEST, "has 16 characters"),
        ("297022a02077878", TEST, "characters other than digits"),  # lowercase Corsica
        ("2970A2202077878", TEST, "characters other than digits"),  # letter outside the département
        ("29702 A02077878", TEST, "characters other than digits"),
        ("2970222C0207778", TEST, "characters other than digits"),
        ("27903512151898X", TEST, "characters other than digits"),
        ("279035121518990", TEST, "key does not verify"),
        ("279035121518900", TEST, "key does not verify"),
        ("579035121518989", TEST, "first character must be"),
        ("000000000000097", TEST, "first character must be"),  # all zeros (key 97 verifies)
        ("٢٧٩٠٣٥١٢١٥١٨٩٨٩", TEST, "characters other than digits"),  # non-ASCII digits
    ],
)
def test_check_ins_reasons(matricule, oid, expected):
    reason = ins.check_ins(matricule, oid)
    assert reason is not None and expected in reason
    if matricule:
        assert matricule not in reason  # never the value itself


@pytest.mark.parametrize("oid", sorted(ins.INS_OIDS))
def test_every_ins_oid_is_accepted(oid):
    assert ins.check_ins("279035121518989", oid) is None


@pytest.mark.parametrize("first", list("123478"))
def test_accepted_first_digits(first):
    nir13 = first + "790351215189"
    assert ins.check_ins(f"{nir13}{ins.nir_key(nir13):02d}", TEST) is None


@pytest.mark.parametrize("bad", ["279035121518", "27903512151898", "297022a020778", "29702 A020778"])
def test_nir_key_rejects_malformed_input(bad):
    with pytest.raises(ValueError):
        ins.nir_key(bad)


def test_ins_cx():
    assert ins.ins_cx("279035121518989", TEST) == "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"


nirs = st.builds(
    lambda sex, middle, dept, tail: sex + middle + dept + tail,
    st.sampled_from("123478"),
    st.text("0123456789", min_size=4, max_size=4),
    st.sampled_from(["2A", "2B", "75", "99", "01", "97"]),
    st.text("0123456789", min_size=6, max_size=6),
)


@given(nirs, st.integers(min_value=0, max_value=99))
def test_only_the_computed_key_verifies(nir13, other):
    key = ins.nir_key(nir13)
    assert 1 <= key <= 97
    assert ins.check_ins(f"{nir13}{key:02d}", TEST) is None
    if other != key:
        assert ins.check_ins(f"{nir13}{other:02d}", TEST) == "INS matricule key does not verify"


@given(nirs, st.integers(min_value=0, max_value=12), st.sampled_from("0123456789"))
def test_a_single_changed_digit_is_detected(nir13, position, digit):
    # mod 97 detects every single-digit substitution (97 is prime, 10^k is never 0 mod 97)
    if position in (5, 6) or nir13[position] == digit:
        return
    key = ins.nir_key(nir13)
    changed = nir13[:position] + digit + nir13[position + 1 :]
    if changed[0] in ins.SEX_DIGITS:
        assert ins.check_ins(f"{changed}{key:02d}", TEST) == "INS matricule key does not verify"
