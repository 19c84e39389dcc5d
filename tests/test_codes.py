"""Normalising and classifying scanned codes and bill numbers."""

import re

import pytest
from helpers import refusal_of

from bagtrack import codes


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sb12345\r\n", "SB12345"),
        ("\tSB12345", "SB12345"),
        ("SB1\r2\n3\t45", "SB12345"),
        ("\u200bSB12345\ufeff", "SB12345"),
        ("SB\u200b12\ufeff345", "SB12345"),
        ("   abc123  ", "ABC123"),
        (" \u00a0abc123\u00a0 ", "ABC123"),
        ("MiXeD9", "MIXED9"),
        (None, ""),
    ],
)
def test_normalise_drops_control_and_format_characters_trims_and_upper_cases(raw, expected):
    assert codes.normalise(raw) == expected


def test_inner_spaces_are_kept_and_make_the_code_invalid(app):
    refusal = refusal_of(codes.classify, "SB 12345")
    assert refusal.code == "invalid_qr"
    assert refusal.status == 400


@pytest.mark.parametrize("raw", ["", "   ", "\r\n", "\u200b\ufeff\t"])
def test_nothing_left_after_normalising_is_invalid_qr(app, raw):
    refusal = refusal_of(codes.classify, raw)
    assert refusal.code == "invalid_qr"
    assert "No code was scanned" in refusal.message


def test_length_is_counted_after_normalising(app):
    app.config["BAGTRACK_CHILD_QR"] = re.compile(r"^[A-Z0-9]+$")
    sixty_four = "A" * 64
    assert codes.classify(sixty_four + "\r\n\u200b").value == sixty_four
    refusal = refusal_of(codes.classify, "A" * 65)
    assert refusal.code == "invalid_qr"
    assert "at most 64 characters" in refusal.message
    assert codes.classify("a").value == "A"


@pytest.mark.parametrize("raw", ["SB\uff11\uff12\uff13\uff14\uff15", "SB12345\u0661", "\uff21\uff22\uff23123"])
def test_patterns_match_ascii_only(app, raw):
    refusal = refusal_of(codes.classify, raw)
    assert refusal.code == "invalid_qr"


def test_non_ascii_look_alikes_do_not_upper_case_into_a_code(app):
    # str.upper() makes "S" of the long s (U+017F) and "FI" of the fi ligature (U+FB01).
    assert refusal_of(codes.classify, "\u017fb12345").code == "invalid_qr"
    assert refusal_of(codes.classify, "\ufb01le1234").code == "invalid_qr"


def test_default_patterns_classify_parent_and_child(app):
    assert codes.classify("sb00001") == codes.Code("SB00001", "parent")
    assert codes.classify("SB1234") == codes.Code("SB1234", "child")  # four digits: not a parent code
    assert codes.classify("SB123456") == codes.Code("SB123456", "child")
    assert codes.classify("ABCD") == codes.Code("ABCD", "child")
    assert codes.classify("A" * 20).kind == "child"


@pytest.mark.parametrize("raw", ["ABC", "A" * 21, "AB-123", "ABC_123", "\u00c4BCD"])
def test_neither_parent_nor_child_is_invalid_qr_with_the_expected_formats(app, raw):
    refusal = refusal_of(codes.classify, raw)
    assert refusal.code == "invalid_qr"
    assert refusal.message.startswith("This is not a bag code")
    assert "A parent bag code looks like SB00001, a child bag code looks like C0012345." in refusal.message
    assert "^" not in refusal.message and "\\d" not in refusal.message


def test_an_example_the_pattern_refuses_is_left_out(app):
    app.config["BAGTRACK_CHILD_QR_EXAMPLE"] = "no-such-code"
    refusal = refusal_of(codes.classify, "AB-123")
    assert refusal.message == "This is not a bag code: AB-123. A parent bag code looks like SB00001."


def test_require_kind_refuses_the_other_kind(app):
    refusal = refusal_of(codes.require_kind, "ABC123", "parent")
    assert (refusal.code, refusal.status) == ("wrong_kind", 409)
    assert refusal.message == "ABC123 is a child bag code; a parent bag is needed here."
    refusal = refusal_of(codes.require_kind, "sb12345", "child")
    assert refusal.message == "SB12345 is a parent bag code; a child bag is needed here."
    assert codes.require_kind("sb12345\n", "parent").value == "SB12345"


def test_custom_patterns_from_app_config(make_app):
    custom = make_app(BAGTRACK_PARENT_QR=re.compile(r"^P\d{3}$"), BAGTRACK_CHILD_QR=r"^K\d{2,6}$")
    with custom.app_context():
        assert codes.classify("p123") == codes.Code("P123", "parent")
        assert codes.classify("k12") == codes.Code("K12", "child")
        refusal = refusal_of(codes.classify, "SB12345")
        assert refusal.code == "invalid_qr"
        # The default examples do not fit these patterns: no wrong example is shown.
        assert refusal.message == "This is not a bag code: SB12345. Check that the label's code was read whole."
    with make_app(BAGTRACK_PARENT_QR=r"^P\d{3}$", BAGTRACK_PARENT_QR_EXAMPLE="P001").app_context():
        assert refusal_of(codes.classify, "SB-1").message.endswith(", a child bag code looks like C0012345.")
        message = refusal_of(codes.classify, "SB-1").message
        assert message.startswith("This is not a bag code: SB-1. A parent bag code looks like P001")


def test_custom_patterns_are_matched_in_ascii_mode(make_app):
    custom = make_app(BAGTRACK_PARENT_QR=re.compile(r"^P\d{3}$"), BAGTRACK_CHILD_QR=r"^K\d{2,6}$")
    with custom.app_context():
        assert refusal_of(codes.classify, "P\uff11\uff12\uff13").code == "invalid_qr"
        assert refusal_of(codes.classify, "K\uff11\uff12").code == "invalid_qr"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("b-1", "B-1"), (" bill-2024-0001\r\n", "BILL-2024-0001"), ("\u200b7\ufeff", "7"), ("A" * 50, "A" * 50)],
)
def test_bill_no_is_normalised_like_a_qr(raw, expected):
    assert codes.normalise_bill_no(raw) == expected


@pytest.mark.parametrize("raw", ["", "  ", None, "A" * 51, "B 1", "B_1", "B/1", "B\uff11", "\u00c4-1"])
def test_bad_bill_no_is_invalid_bill_no(raw):
    refusal = refusal_of(codes.normalise_bill_no, raw)
    assert (refusal.code, refusal.status) == ("invalid_bill_no", 400)
    assert refusal.message == "A bill number is 1 to 50 characters of A-Z, 0-9 and '-'."
