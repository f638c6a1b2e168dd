import pytest

from cotdistill.answers import extract_flexible, extract_strict, is_correct, normalize


@pytest.mark.parametrize("text, expected", [
    ("So she has 5 + 3 = 8. The answer is 8.", "8"),
    ("Total: $1,200 in all.\n#### 1,200", "1,200"),
    ("The final answer is: -3.5 degrees", "-3.5"),
    ("The answer is 12. Wait, 7 * 2 = 14. The answer is 14.", "14"),
    ("I think it is 42", None),
])
def test_strict_reads_only_an_explicit_final_answer(text, expected):
    assert extract_strict(text) == expected


def test_flexible_takes_the_last_number_anywhere():
    assert extract_flexible("5 + 3 = 8 so 8 apples, maybe") == "8"
    assert extract_flexible("The answer is 8. Also 9 people were there") == "9"
    assert extract_flexible("no digits here") is None


@pytest.mark.parametrize("predicted, gold", [
    ("1,000", "1000"), ("$18", "18"), ("18.0", "18"), ("-4", "-4"), ("0.50", "0.5"), ("7.", "7"), ("50%", "50"),
])
def test_numbers_compare_by_value(predicted, gold):
    assert is_correct(predicted, gold)


@pytest.mark.parametrize("predicted, gold", [("17", "18"), ("-18", "18"), ("18.5", "18"), (None, "18"), ("abc", "1")])
def test_different_numbers_are_wrong(predicted, gold):
    assert not is_correct(predicted, gold)


def test_yes_no_and_choice_letters():
    assert extract_strict("Birds can fly. The answer is Yes.", "yesno") == "Yes"
    assert is_correct("Yes", "yes", "yesno") and is_correct("true", "yes", "yesno")
    assert not is_correct("no", "yes", "yesno")
    assert extract_strict("Option (C) fits. The answer is (C).", "choice") == "C"
    assert extract_flexible("I pick B over A, so (D)", "choice") == "D"
    assert is_correct("(c)", "C", "choice")


def test_normalize_gives_one_form_per_value():
    assert normalize("1,000.00") == normalize("$1000") == "1000"
    assert normalize("2.50") == "2.5"
