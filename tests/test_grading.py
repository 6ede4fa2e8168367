import pytest

from pipeline.grading import CORRECT, INCORRECT, UNPARSED, answer_part, extract_answer, grade_completion, last_boxed


def test_last_boxed_counts_nested_braces():
    assert last_boxed(r"so \boxed{\frac{\sqrt{3}}{2}} done") == r"\frac{\sqrt{3}}{2}"
    assert last_boxed(r"\boxed{1} then \fbox{2}") == "2"
    assert last_boxed(r"\boxed{1} then \boxed{2") == "1"  # unbalanced last box
    assert last_boxed("no box") is None


def test_only_the_answer_part_is_graded():
    assert answer_part("<think>\\boxed{2}</think> nothing") == " nothing"
    assert grade_completion("2", "<think>\n\\boxed{2}\n</think>\n\nI do not know.").grade == UNPARSED
    assert grade_completion("2", "<think>\n\\boxed{3}\n</think>\n\n\\boxed{2}").grade == CORRECT


@pytest.mark.parametrize(
    "gold, completion, expected",
    [
        ("2", r"\boxed{2}", CORRECT),
        ("0.5", r"\boxed{\frac{1}{2}}", CORRECT),
        ("-1", r"The answer is \boxed{-1}.", CORRECT),
        ("3", r"\boxed{x=3}", CORRECT),
        ("7", "Answer: 7", CORRECT),
        ("20", "The answer is 20.", CORRECT),
        ("7", "The final answer is 8.", INCORRECT),
        ("7", "I have no idea", UNPARSED),
    ],
)
def test_grades(gold, completion, expected):
    assert grade_completion(gold, completion).grade == expected


def test_unparseable_gold_never_grades_correct():
    assert grade_completion("abc?", r"\boxed{abc?}").grade == UNPARSED


def test_extract_answer_prefers_the_box():
    assert extract_answer(r"The answer is 3. \boxed{4}") == "4"


def test_gold_as_a_worked_solution_uses_its_last_box():
    solution = r"We add: $1+1=2$. Checking again gives \boxed{\frac{4}{2}}."
    assert grade_completion(solution, r"\boxed{2}").grade == CORRECT
