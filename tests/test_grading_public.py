r"""Agreement with the field: (gold, prediction, expected) cases from public grader test suites and
from each category of issue 14, graded through the real `Grader` (worker processes, time limit).

Expected verdicts: `C` correct, `N` not correct (incorrect or unparsed: the public suites only say
0/1), `U` exactly `unparsed` (prose that is not math must never become some other expression).
Cases rebuilt from public suites keep the published verdict, with their provenance in a comment
per group; our own cases were decided by hand. Every remaining disagreement is listed in
`KNOWN_DISAGREEMENTS` with the reason and runs as a strict xfail. `test_agreement_and_no_false_accepts`
holds the totals to the bar of issue 14: at least 98 % agreement and no false accept.
"""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.grading import CORRECT, UNPARSED, Grader

C, N, U = "C", "N", "U"
CASES: list[tuple[str, str, str, str, str, str]] = []  # (id, category, mode, gold, prediction, expected)


def _group(category: str, mode: str, rows: list[tuple[str, str, str]]) -> None:
    for number, (gold, prediction, expected) in enumerate(rows, start=1):
        CASES.append((f"{category}-{number}", category, mode, gold, prediction, expected))


# Issue 14 'several boxed answers'; forms seen in R1-distill and Qwen outputs
_group('several-boxes', 'completion', [
    ('1, 2, 3', 'The solutions are \\boxed{1}, \\boxed{2}, \\boxed{3}.', C),
    ('\\{1,2,3\\}', 'So $x \\in \\boxed{1}, \\boxed{2}, \\boxed{3}$', C),
    ('1, 2, 3', 'The solutions are \\boxed{1}, \\boxed{2}.', N),
    ('3', '\\boxed{1}, \\boxed{2}, \\boxed{3}', N),
    ('(2, 2), (6, 2)', 'The pairs are $\\boxed{(2, 2)} \\text{ and } \\boxed{(6, 2)}$.', C),
    ('\\{(2,2),(6,2)\\}', '$\\boxed{(6, 2)}$ and $\\boxed{(2, 2)}$', C),
    ('(2, 2), (6, 2)', 'The pairs are $\\boxed{(2, 2)} \\text{ and } \\boxed{(6, 3)}$.', N),
    ('(2, 2), (6, 2)', 'The pairs are $\\boxed{(2, 2)} \\text{ and } \\boxed{(2, 6)}$.', N),
    ('-1, 1', 'The roots are $\\boxed{-1}$ and $\\boxed{1}$.', C),
    ('-1, 1', 'The roots are $\\boxed{-1}$ and $\\boxed{2}$.', N),
    ('\\boxed{2} and \\boxed{3}', '\\boxed{2}, \\boxed{3}', C),
    ('\\boxed{2} and \\boxed{3}', '\\boxed{3}', N),
    ('\\boxed{2}, \\boxed{3}', '\\boxed{3} or \\boxed{2}', C),
    ('2', 'First \\boxed{1}, then on reflection the answer is \\boxed{2}.', C),
    ('1', 'First \\boxed{1}, then on reflection the answer is \\boxed{2}.', N),
    ('x=2, y=3', '$\\boxed{x=2}$ and $\\boxed{y=3}$', C),
    ('x=2, y=3', '$\\boxed{x=2}$ and $\\boxed{y=4}$', N),
    ('\\frac{1}{2}, -3', '$x = \\boxed{\\frac{1}{2}}$ or $x = \\boxed{-3}$', C),
    ('\\frac{1}{2}, -3', '$x = \\boxed{\\frac{1}{2}}$ or $x = \\boxed{3}$', N),
    ('5', 'So \\boxed{5}, \\boxed{5}', C),
])

# Issue 14 'delimited golds': MATH/NuminaMath/Minerva gold columns as written
_group('delimited-golds', 'completion', [
    ('$28\\%$', '\\boxed{28\\%}', C),
    ('$28\\%$', '\\boxed{0.28}', C),
    ('$28\\%$', '\\boxed{27\\%}', N),
    ('$$x = \\frac{1}{2}$$', '\\boxed{\\frac12}', C),
    ('$$x = \\frac{1}{2}$$', '\\boxed{2}', N),
    ('$$x = \\frac{1}{2}, x = -3$$', '\\boxed{x=-3, x=\\frac{1}{2}}', C),
    ('$$x = \\frac{1}{2}, x = -3$$', '\\boxed{x=3, x=\\frac{1}{2}}', N),
    ('$1 - \\frac{1}{\\mathrm{e}}$', '\\boxed{1-e^{-1}}', C),
    ('$1 - \\frac{1}{\\mathrm{e}}$', '\\boxed{1+e^{-1}}', N),
    ('\\(\\sqrt{2}\\)', '\\boxed{\\sqrt2}', C),
    ('\\(\\sqrt{2}\\)', '\\boxed{2}', N),
    ('\\[\\frac{\\pi}{3}\\]', '\\boxed{\\pi/3}', C),
    ('\\[\\frac{\\pi}{3}\\]', '\\boxed{\\frac{\\pi}{6}}', N),
    ('\\boxed{14}', 'so the count is \\boxed{14}', C),
    ('\\boxed{14}', 'so the count is \\boxed{41}', N),
    ('$-5$', '$\\boxed{-5}$', C),
    ('$-5$', '$\\boxed{5}$', N),
    ('$$ 12 $$', '\\boxed{12}', C),
    ('$\\frac{3}{4}$', '\\boxed{0.75}', C),
    ('$\\frac{3}{4}$', '\\boxed{0.7}', N),
    ('$\\dfrac{7}{2}$', '\\boxed{3.5}', C),
    ('\\( (1, -2) \\)', '\\boxed{(1,-2)}', C),
    ('\\( (1, -2) \\)', '\\boxed{(-2,1)}', N),
])

# Issue 14 'answer phrases without a box'; Minerva/lm-eval and chat-model endings
_group('answer-phrases', 'completion', [
    ('4', 'The answer is 4', C),
    ('5', 'The answer is 4', N),
    ('3', 'The result is $3$.', C),
    ('4', 'The result is $3$.', N),
    ('42', 'Some work.\nFinal answer: 42', C),
    ('24', 'Some work.\nFinal answer: 42', N),
    ('14916', 'So N is found.\nFinal Answer: The final answer is $14{,}916$. I hope it is correct.', C),
    ('14915', 'So N is found.\nFinal Answer: The final answer is $14{,}916$. I hope it is correct.', N),
    ('\\frac{3}{8}', 'We simplify the fraction.\n\n$\\frac{3}{8}$', C),
    ('\\frac{3}{4}', 'We simplify the fraction.\n\n$\\frac{3}{8}$', N),
    ('17', 'After computing everything we get\n17', C),
    ('71', 'After computing everything we get\n17', N),
    ('\\frac{2}{3}', 'Therefore the answer is \\(\\frac{2}{3}\\).', C),
    ('\\frac{3}{2}', 'Therefore the answer is \\(\\frac{2}{3}\\).', N),
    ('3.5', '**Final Answer**\n$$\\frac{7}{2}$$', C),
    ('2.5', '**Final Answer**\n$$\\frac{7}{2}$$', N),
    ('12', 'Adding them up gives 5 + 7 = 12.', C),
    ('13', 'Adding them up gives 5 + 7 = 12.', N),
    ('x^2+1', 'Expanding, we obtain\n$$x^2 + 1$$', C),
    ('x^2-1', 'Expanding, we obtain\n$$x^2 + 1$$', N),
    ('9', 'Answer: $9$', C),
    ('8', 'Answer: $9$', N),
    ('\\sqrt{2}', 'The final answer is $\\sqrt{2}$.', C),
    ('\\sqrt{3}', 'The final answer is $\\sqrt{2}$.', N),
])

# Issue 14 'prose predictions'; bare answers from other pipelines' files
_group('prose', 'answer', [
    ('4', 'The answer is 4', C),
    ('5', 'The answer is 4', N),
    ('4', 'I do not know', U),
    ('6', 'there are six of them', U),
    ('2', 'it cannot be determined', U),
    ('\\text{Evelyn}', 'Evelyn', C),
    ('\\text{Evelyn}', 'Evlyne', N),
    ('Evelyn', 'Evlyne', N),
    ('Evelyn', '\\text{Evelyn}', U),  # a bare-word gold: only the single-word guess reads it (\\text{Evelyn} is read)
    ('teaspoons', 'spoonstea', N),
    ('12', 'We get 12 apples', C),
    ('11', 'We get 12 apples', N),
    ('x = 3', 'so x equals 3', C),
    ('x = 4', 'so x equals 3', N),
])

# Issue 14 'structures in text'; math-verify set/relation tests and MATH answers
_group('structures', 'completion', [
    ('\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}', 'The matrix is $\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}$.', C),
    ('\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}', 'The matrix is $\\begin{pmatrix} 1 & 2 \\\\ 4 & 3 \\end{pmatrix}$.', N),
    ('\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}', 'So we get\n\\[\\begin{bmatrix} 1 & 0 \\\\ 0 & 1 \\end{bmatrix}\\]', C),
    ('\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}', 'So we get\n\\[\\begin{bmatrix} 0 & 1 \\\\ 1 & 0 \\end{bmatrix}\\]', N),
    ('\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}', 'It is $\\left[\\begin{array}{cc} 1 & 0 \\\\ 0 & 1 \\end{array}\\right]$', C),
    ('\\begin{pmatrix}1&0\\\\0&2\\end{pmatrix}', 'It is $\\left[\\begin{array}{cc} 1 & 0 \\\\ 0 & 1 \\end{array}\\right]$', N),
    ('[2,5)', 'The solution set is $[2, 5)$.', C),
    ('[2,5]', 'The solution set is $[2, 5)$.', N),
    ('x \\in [-2, 7]', '\\boxed{-2 \\le x \\le 7}', C),
    ('[-2, 7]', '\\boxed{-2 \\le x \\le 7}', C),
    ('[-2, 7]', '\\boxed{-2 < x \\le 7}', N),
    ('-2 \\le x \\le 7', '\\boxed{[-2, 7]}', C),
    ('-2 \\le x \\le 7', '\\boxed{(-2, 7]}', N),
    ('(-\\infty, 3)', '\\boxed{x < 3}', C),
    ('(-\\infty, 3)', '\\boxed{x \\le 3}', N),
    ('x > 1', '\\boxed{(1, \\infty)}', C),
    ('x > 1', '\\boxed{[1, \\infty)}', N),
    ('(-\\infty,-1)\\cup(2,\\infty)', '\\boxed{x<-1 \\text{ or } x>2}', C),
    ('(-\\infty,-1)\\cup(2,\\infty)', '\\boxed{x<-1 \\text{ or } x>3}', N),
    ('\\begin{pmatrix} 3 \\\\ -1 \\end{pmatrix}', 'The vector is $\\begin{pmatrix} 3 \\\\ -1 \\end{pmatrix}.$', C),
    ('\\begin{pmatrix} 3 \\\\ -1 \\end{pmatrix}', 'The vector is $\\begin{pmatrix} -1 \\\\ 3 \\end{pmatrix}.$', N),
])

# Issue 14 'number formats' and math-verify test_percent_notation / test_number_extraction
_group('number-formats', 'completion', [
    ('1000', '\\boxed{1 000}', C),
    ('1000', 'The total is 1 000.', C),
    ('1000', 'The total is 10 000.', N),
    ('1000', '\\boxed{1\u2009000}', C),
    ('1000', '\\boxed{1\u202f000}', C),
    ('1000000', '\\boxed{1\u2009000\u2009000}', C),
    ('1000', '\\boxed{1\u2009001}', N),
    ('14916', '\\boxed{14{,}916}', C),
    ('14916', '\\boxed{14{,}961}', N),
    ('2500', '\\boxed{2\\,500}', C),
    ('2500', '\\boxed{2\\,600}', N),
    ('28\\%', '28 percent', C),
    ('28\\%', '28 pct', C),
    ('28\\%', '$28$ %', C),
    ('28\\%', '\\boxed{28 percent}', C),
    ('28\\%', '\\boxed{28\\text{ percent}}', C),
    ('28\\%', '29 percent', N),
    ('28\\%', '\\boxed{29 pct}', N),
    ('0.28', '28', N),
    ('28', '28/100', N),
    ('1234567', '\\boxed{1,234,567}', C),
    ('1234567', '\\boxed{1,234,568}', N),
])

# Issue 14 'golds that are sentences or worked solutions' (GSM8K/NuminaMath gold styles)
_group('sentence-golds', 'completion', [
    ('answer is 0.25 + 3', '\\boxed{3.25}', C),
    ('answer is 0.25 + 3', '\\boxed{0.25}', N),
    ('We have $x+1=3$, so $x = \\boxed{2}$.', '\\boxed{2}', C),
    ('We have $x+1=3$, so $x = \\boxed{2}$.', '\\boxed{3}', N),
    ('The answer is $\\frac{1}{2}$.', '\\boxed{0.5}', C),
    ('The answer is $\\frac{1}{2}$.', '\\boxed{1}', N),
    ('Final answer: 12', '\\boxed{12}', C),
    ('Final answer: 12', '\\boxed{21}', N),
    # Only a last-number guess reads this gold, and golds are read by the reliable rules only
    # (a misread gold corrupts every trace of its problem): unparsed_gold, by decision.
    ('There are 12 ways.', '\\boxed{12}', U),
    ('There are 12 ways.', '\\boxed{13}', N),
    ('Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72', '\\boxed{72}', C),
    ('Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72', '\\boxed{24}', N),
    ('Each side is $\\sqrt{16} = 4$, so the perimeter is $\\boxed{16}$ units.', 'The perimeter is $16$.', C),
    ('Each side is $\\sqrt{16} = 4$, so the perimeter is $\\boxed{16}$ units.', 'The perimeter is $4$.', N),
])

# huggingface/open-r1 tests/test_rewards.py (accuracy_reward)
_group('open-r1', 'completion', [
    ('\\frac{63}{400}', '\\boxed{\\frac{63}{400}}', C),
    ('\\frac{63}{400}', '\\boxed{\\frac{64}{400}}', N),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_number_extraction: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-number-extraction', 'completion', [
    ('-5', '-5', C),
    ('7425000', '7,425,000', C),
    ('1000', '1 000', C),
    ('1000', '1000.0', C),
    ('1000.0', '1,000.0', C),
    ('1000.99', '1000,99', C),
    ('1,22', '1.22', C),
    ('2.74', 'Soucis : 2,74 $ a..', C),
    ('0.4', '.4', C),
    ('1000.99', '1,000.99', C),
    ('1000.99', '$1,000.99', C),
    ('1000.99', '1,000.99$', C),
    ('1000.99', 'the number is not 10 which is 1,000.99€', C),
    ('1000.99', 'so the number is 10 which is 1,000.99m²', C),
    ('1000.99', "not it's not 10 it's 1,000.99m²", C),
    ('0,111', '0.111', C),
    ('2', 'AZYUK2A', N),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_simple_fraction_notation: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-simple-fraction-notation', 'completion', [
    ('10/9', '\\frac{10}{9}', C),
    ('-10/9', '-\\frac{10}{9}', C),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_sets_handling: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-sets-handling', 'completion', [
    ('$[0,1)$', '$[0,1)$', C),
    ('$[0,9)$', '$[0,1)$', N),
    ('$(0,9)$', '$[0,9)$', N),
    ('$1$', '$-[0,1)$', N),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_latex_notation: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-latex-notation', 'completion', [
    ('$9$', 'Answer \\[ 9 \\]', C),
    ('$9$', 'Answer $ 9 $', C),
    ('$9$', 'Answer $$ 9 $$', C),
    ('$9$', 'Answer \\( 9 \\)', C),
    ('$10$', 'Answer \\( (9+1) \\)', C),
    ('$9$', 'Answer $ \n 9 \n $', N),
    ('$9$', 'Answer \\( \n 9 \n \\)', N),
    ('$9$', 'Answer \\[ \n 9 \n \\]', C),
    ('$9$', 'Answer $$ \n 9 \n $$', C),
    ('$10/9$', 'Answer $ \\frac{1}{2} \\$ = \\frac{10}{9} $', C),
    ('$1/3$', '$\\frac13 $', C),
    ('$1$', '$\\frac3{3} $', C),
    ('$\\sqrt{3}$', '$\\sqrt3 $', C),
    ('$1/3$', '$\\cfrac{1}{3} $', C),
    ('$1/3$', '$\\dfrac{1}{3} $', C),
    ('$1/3$', '$\\tfrac{1}{3} $', C),
    ('$1/3$', '$ 1/3 $', C),
    ('$1/3$', '$\\left( \\frac{1}{3} \\right)$', C),
    ('$1/3$', '$\\boxed{\\frac{1}{3}}$', C),
    ('$1/3$', '$\\frac{1}{3} \\text{meters}$', C),
    ('$1/3$', '$\\frac{1}{3} \\textbf{meters}$', C),
    ('$1/3$', '$k = \\frac{1}{3}$', C),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_percent_notation: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-percent-notation', 'completion', [
    ('$28\\%$', '28 percent', C),
    ('$28\\%$', '28 pct', C),
    ('$28\\%$', '28 %', C),
    ('$28\\%$', '$28$ %', C),
    ('$28\\%$', '$28$ percent', C),
    ('$28\\%$', '$\\boxed{28}$ pct', C),
    ('$28\\%$', '$\\boxed{28 pct}', C),
    ('$28\\%$', '$\\boxed{28 percent}', C),
    ('$28\\%$', '$\\boxed{28 percentage}', C),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_latex_notation_math: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-latex-notation-math', 'completion', [
    ('$2-2p$', 'Since $x<2$, it follows that $|x-2|=2-x$. If $2-x=p$, then $x=2-p$. Thus $x-p=\\boxed{2-2p}$.', C),
    ('\\boxed{\n\\begin{pmatrix} 0 & 3 \\\\ 0 & -1 \\end{pmatrix}\n}.\n\\end{align*}', '\\boxed{\n\\begin{pmatrix} 0 & 3 \\\\ 0 & -1 \\end{pmatrix}\n}.\n\\end{align*}', C),
    ("Let's assume the stock's value at the beginning of Monday is $100 . $ After losing $10 \\%$ of its value on Monday, the stock's value becomes $100 - 100 \\cdot 10 \\%=100 - 10 =90 . $ On Tuesday, the stock loses $20 \\%$ of this new value, which is $90 \\cdot 20 \\%=18 . $ Therefore, the stock's value at the end of Tuesday is $90 - 18 =72 . $ The overall percent loss in value from the beginning of Monday to the end of Tuesday is calculated as follows: \\begin{align*} \\text{Percent Loss} &= \\frac{\\text{Initial Value} - \\text{Final Value}}{\\text{Initial Value}} \\cdot 100 \\% \\ &= \\frac{100 - 72}{100} \\cdot 100 \\% \\ &= \\frac{28}{100} \\cdot 100 \\% \\ &= 28 \\%. \\end{align*} Final Answer: The final answer is $28 \\%$. I hope it is correct. Note: The solution provided is incorrect. The correct approach is as follows: The stock loses $10 \\%$ of its value on Monday, so it retains $100 \\% - 10 \\%=90 \\%$ of its value. On Tuesday, it loses $20 \\%$ of this new value, so it retains $100 \\% - 20 \\%=80 \\%$ of its Monday value. Therefore, it retains $90 \\% \\cdot 80 \\%=0.9 \\cdot 0.8=0.72=72 \\%$ of its original value. The overall percent loss in value is $100 \\% - 72 \\%=28 \\%$. Final Answer: The final answer is $28 \\%$. I hope it is correct. Note: The solution provided is incorrect. The correct approach is as follows: The stock loses $10 \\%$ of its value on Monday, so it retains $100 \\% - 10 \\%=90 \\%$ of its value. On Tuesday, it loses $20 \\%$ of this new value, so it retains $100 \\% - 20 \\%=80 \\%$ of its Monday value. Therefore, it retains $90 \\% \\cdot 80 \\%=0.9 \\cdot 0.8=0.72=72 \\%$ of its original value. The overall percent loss in value is $100 \\% - 72 \\%=28 \\%$. Final Answer: The final answer is $28 \\%$. I hope it is correct. Note: The solution provided is incorrect. The correct approach is as follows:", 'If its initial value was $x$, after Monday, its value is $.9x$, and after a further $20\\%$ loss, its value becomes $.8\\cdot .9x = .72x$, making for a total loss of $\\boxed{28\\%}$.', C),
    ('In order for $N$ to be divisible by 12, $N$ must be divisible by $4$ and $3$. That means the last two digits $AB$ must form a multiple of $4.$ Since $A$ and $B$ are nonzero digits, the smallest possible $14{,}9AB$ that is divisible by 4 is $14{,}912.$ Unfortunately, this number is not a multiple of $3$, since $1 + 4 + 9 + 1 + 2 = 17.$ However, our next possibility, $14{,}916,$ is a multiple of $3,$ since $1 + 4 + 9 + 1 + 6 = 21.$ Therefore, $\\boxed{14{,}916}$ is our answer.', "For a number to be divisible by 12, it must be divisible by both 3 and 4. For a number to be divisible by 3, the sum of its digits must be divisible by 3. For a number to be divisible by 4, the last two digits must be divisible by 4. Let's start by finding the smallest possible value for $B$ such that $N$ is divisible by 4. Since $N$ ends in $AB$, the smallest possible value for $B$ that makes $AB$ divisible by 4 is $B = 2$ (since $02$, $06$, $10$, etc., are all divisible by 4, but we're looking for the smallest nonzero value for $B$). Now, let's consider the divisibility by 3. The sum of the digits of $N$ is $1 + 4 + 9 + A + 2 = 16 + A + 2 = 18 + A$. For $N$ to be divisible by 3, $18 + A$ must be divisible by 3. Since $A$ is a digit, it can be any value from $1$ to $9$. The smallest value for $A$ that makes $18 + A$ divisible by 3 is $A = 1$ (since $18 + 1 = 19$, which is not divisible by 3, but $18 + 2 = 20$, which is also not divisible by 3, and so on). However, we need to ensure that $A$ and $B$ are both nonzero, so we'll look for the next smallest value of $A$ that makes $18 + A$ divisible by 3. The next smallest value is $A = 4$, since $18 + 4 = 22$, which is divisible by 3. Therefore, the smallest possible value for $N$ with $A = 4$ and $B = 2$ is $N = 14 {, }916$. This number is divisible by both 3 and 4, and thus by 12. Final Answer: The final answer is $14 {, }916$. I hope it is correct. Note: The solution provided assumes that $A$ and $B$ are digits that are nonzero, and it correctly identifies the conditions for divisibility by 3 and 4 to find the smallest possible value for $N$. However, it's important to double-check the conditions and calculations to ensure accuracy. Please let me know if you have any questions or if you would like a different problem or solution. Thank you! [Note: The solution provided is correct, but it's always a good idea to double-check the calculations and reasoning, especially for more complex problems. If you have any questions or need further clarification, please feel free to ask. Thank you!] [Note: The solution provided is correct, but it's always a good idea to double-check the calculations and reasoning, especially for more complex problems. If you have any questions or need further clarification, please feel free to ask. Thank you!] [Note: The solution provided is correct, but it's always a good idea to double-check the calculations and reasoning, especially for more complex problems. If you have any questions or need further clarification, please feel free to ask. Thank you!] [Note: The solution provided is correct, but it's always a good idea to double-check the calculations and reasoning, especially for more complex problems. If you have any questions or need further clarification, please feel free to ask. Thank you!] [Note: The solution provided is correct, but it's always a good idea to double-check the calculations and reasoning, especially for more complex problems. If you have any questions or need further clarification, please feel free to ask. Thank you!] [Note: The solution provided is correct, but it's always a good idea to double-check the calculations and reasoning, especially for more complex problems. If you have any questions or need further clarification, please feel free to ask. Thank you!] [Note", C),
    ("Since $25<30<36$, we have $5<\\sqrt{30}<6$. We also know that $7^2=49$, so $\\sqrt{50}\\approx7$. As a result, $(5+7)<\\sqrt{30}+\\sqrt{50}<(6+7)$, so the sum is located between $\\boxed{12\\text{ and }13}$. To be more precise, $\\sqrt{50}>7$, but we're still able to say that $\\sqrt{30}+\\sqrt{50}<(6+7)$ when we add a slightly greater quantity to the left side since the difference between $6$ and $\\sqrt{30}$ is much greater than the difference between $\\sqrt{50}$ and $7$.", 'We have that \\begin{align*} \\sqrt{30 } + \\sqrt{50 }&=\\sqrt{30 } + \\sqrt{25 \\cdot2 } \\ &=\\sqrt{30 } + 5 \\sqrt{2 } \\ &\\approx5.477 + 5 \\cdot1.414 \\ &\\approx5.477 + 7.07 \\ &\\approx12.547. \\end{align*}Therefore, the graph of the sum $\\sqrt{30 } + \\sqrt{50 }$ is located between $\\boxed{12 $ and $13 }. $ Final Answer: The final answer is \\"$12 $ and $13 $\\". I hope it is correct.', C),
    ('$(3, \\frac{\\pi}{2})$', 'We have that $r = \\\\sqrt{0^2 + 3^2} = 3.$  Also, if we draw the line connecting the origin and $(0,3),$ this line makes an angle of $\\\\frac{\\\\pi}{2}$ with the positive $x$-axis.\\n\\n[asy]\\nunitsize(0.8 cm);\\n\\ndraw((-0.5,0)--(3.5,0));\\ndraw((0,-0.5)--(0,3.5));\\ndraw(arc((0,0),3,0,90),red,Arrow(6));\\n\\ndot((0,3), red);\\nlabel(\\"$(0,3)$\\", (0,3), W);\\ndot((3,0), red);\\n[/asy]\\n\\nTherefore, the polar coordinates are $\\\\boxed{\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)}.$', C),
    ('$\\frac{14}{3}$', '$f(-2)+f(-1)+f(0)=\\frac{3(-2)-2}{-2-2}+\\frac{3(-1)-2}{-1-2}+\\frac{3(0)-2}{0-2}=\\frac{-8}{-4}+\\frac{-5}{-3}+\\frac{-2}{-2}=2+\\frac{5}{3}+1=\\boxed{\\frac{14}{3}}$', C),
    ('$\\text{Evelyn}$', "Evelyn covered more distance in less time than Briana, Debra and Angela, so her average speed is greater than any of their average speeds. Evelyn went almost as far as Carla in less than half the time that it took Carla, so Evelyn's average speed is also greater than Carla's. Therefore, $\\boxed{\\text{Evelyn}}$ is our answer.", C),
    ('$90^\\circ$', 'For the first line, let $t = 2x = 3y = -z.$  Then \\[\\begin{pmatrix} x \\\\ y \\\\ z \\end{pmatrix} = \\begin{pmatrix} t/2 \\\\ t/3 \\\\ -t \\end{pmatrix} = \\frac{t}{6} \\begin{pmatrix} 3 \\\\ 2 \\\\ -6 \\end{pmatrix}.\\]Thus, the direction vector of the first line is $\\begin{pmatrix} 3 \\\\ 2 \\\\ -6 \\end{pmatrix}.$ For the second line, let $t = 6x = -y = -4z.$  Then \\[\\begin{pmatrix} x \\\\ y \\\\ z \\end{pmatrix} = \\begin{pmatrix} t/6 \\\\ -t \\\\ -t/4 \\end{pmatrix} = \\frac{t}{12} \\begin{pmatrix} 2 \\\\ -12 \\\\ -3 \\end{pmatrix}.\\]Thus, the direction vector of the first line is $\\begin{pmatrix} 2 \\\\ -12 \\\\ -3 \\end{pmatrix}.$ Note that \\[\\begin{pmatrix} 3 \\\\ 2 \\\\ -6 \\end{pmatrix} \\cdot \\begin{pmatrix} 2 \\\\ -12 \\\\ -3 \\end{pmatrix} = 0.\\]Hence, the angle between the lines is $\\boxed{90^\\circ}.$', C),
    ('$3\\sqrt{13}$', 'We use the distance formula:  \\begin{align*} \\sqrt{(2 - (-4))^2 + ((-6) - 3)^2} &= \\sqrt{6^2 + (-9)^2}\\\\ & = \\sqrt{36 + 81}\\\\ & = \\sqrt{117} = \\boxed{3\\sqrt{13}}. \\end{align*}', C),
    ('$\\frac{3}{56}$', 'We also know that $q(-1) = ((-1)^2 - 1)p(-1) + 1 = 1.$  Setting $x = -1$ in the equation above, we get \\[q(-1) = 20160(-a + b),\\]so $-a + b = \\frac{1}{20160}.$  Solving for $a$ and $b,$ we find $a = -\\frac{29}{40320}$ and $b = -\\frac{3}{4480}.$  Hence, \\begin{align*} q(x) &= \\left( -\\frac{29}{40320} x - \\frac{3}{4480} \\right) (x - 2)(x - 3) \\dotsm (x - 7) \\\\ &= -\\frac{(29x + 27)(x - 2)(x - 3) \\dotsm (x - 7)}{40320}. \\end{align*}In particular, \\[q(8) = -\\frac{(29 \\cdot 8 + 27)(6)(5) \\dotsm (1)}{40320} = -\\frac{37}{8},\\]so \\[p(8) = \\frac{q(8) + 8}{8^2 - 1} = \\boxed{\\frac{3}{56}}.\\]', C),
    ('$2$', 'Of the two-digit perfect squares, only $4^2=16$ and $6^2=36$ end in $6$. Thus, there are $\\boxed{2}$ distinct possible values for $B$.', C),
    ('$15\\mbox{ cm}^2$', 'The shaded triangle has a base of length $10\\text{ cm}.$ Since the triangle is enclosed in a rectangle of height $3\\text{ cm},$ then the height of the triangle is $3\\text{ cm}.$ (We know that the enclosing shape is a rectangle, because any figure with four sides, including two pairs of equal opposite sides, and two right angles must be a rectangle.) Therefore, the area of the triangle is $$\\frac{1}{2}\\times 3 \\times 10 = \\boxed{15\\mbox{ cm}^2}.$$', C),
    ('$-2,1$', 'By the Integer Root Theorem, the possible integer roots are all the divisors of 14 (including negative divisors), which are $-14,$ $-7,$ $-2,$ $-1,$ $1,$ $2,$ $7,$ and $14.$  Checking, we find that the only integer roots are $\\boxed{-2,1}.$', C),
    ('$9$', 'We use the property that $a \\equiv b \\pmod{m}$ implies $a^c \\equiv b^c \\pmod{m}$. Since $129 \\equiv -3 \\pmod{11}$ and $96 \\equiv -3 \\pmod{11}$, we have  $$129^{34}+96^{38} \\equiv (-3)^{34}+(-3)^{38} \\equiv 3^{34}+3^{38} \\pmod{11}.$$ Since $3^5 \\equiv 1 \\pmod{11},$ we can see that $3^{34} = (3^5)^{6} \\cdot 3^4$ and $3^{38} = (3^5)^{7} \\cdot 3^3.$ Then, $129^{34}+96^{38} \\equiv \\boxed{9} \\pmod{11}.$', C),
    ('$90^\\circ$', 'Therefore, \\begin{align*} \\angle BAC &= \\angle BAD + \\angle DAC \\\\ &= 50^\\circ+40^\\circ \\\\ &= \\boxed{90^\\circ}. \\end{align*}', C),
    ('$0$', 'Note that $p(x)$ has degree at most 2.  Also, $p(a) = p(b) = p(c) = 1.$  Thus, the polynomials $p(x)$ and 1 agree at three different values, so by the Identity Theorem, they are the same polynomial.  Hence, the degree of $p(x)$ (which is the constant polynomial 1) is $\\boxed{0}.$', C),
    ('$204_5$', 'We may carry out long division in base 5 just as in base 10. We have  \\[ \\begin{array}{c|ccc} \\multicolumn{2}{r}{2} & 0 & 4 \\\\ \\cline{2-4} 2 & 4 & 1 & 3 \\\\ \\multicolumn{2}{r}{4} & \\downarrow & \\\\ \\cline{2-2} \\multicolumn{2}{r}{0} & 1 & \\\\ \\multicolumn{2}{r}{} & 0 & \\downarrow \\\\ \\cline{3-3} \\multicolumn{2}{r}{} & 1 & 3 \\\\ \\multicolumn{2}{r}{} & 1 & 3 \\\\ \\cline{3-4} \\multicolumn{2}{r}{} & & 0 \\end{array} \\]for a quotient of $\\boxed{204_5}$. Note that in the above calculation we have used that $13_5$ divided by $2_5$ is $4_5$, which follows from $4_5\\times2_5=8_{10}=13_5$.', C),
    ('$(6,31,-1)$', 'Let $\\alpha$ be a root of $x^3 - 3x^2 + 4x - 1 = 0,$ so $\\alpha^3 = 3 \\alpha^2 - 4 \\alpha + 1.$ Then solving the system of equations, we find $(p,q,r) = \\boxed{(6,31,-1)}.$', C),
    ('$1 \\pm \\sqrt{19}$', 'This simplifies to $64y + 1920 = 0,$ so $y = -30.$ Then $x^2 - 2x - 48 = -30,$ or $x^2 - 2x - 18 = 0.$ By the quadratic formula, $x = \\boxed{1 \\pm \\sqrt{19}}.$', C),
    ('$3 \\pm 2 \\sqrt{2}$', 'This gives us $x^2 + 1 = 6x,$ or $x^2 - 6x + 1 = 0.$ By the quadratic formula, the roots are $x = \\boxed{3 \\pm 2 \\sqrt{2}}.$', C),
    ('$\\{1\\pm\\sqrt{5},-2\\}$', 'The roots of $P(x)$ are $-2$ and $1 \\pm \\sqrt{5}$, so the answer is $\\boxed{\\{1\\pm\\sqrt{5},-2\\}}.$', C),
    ('$f(2) < f(1) < f(4)$', 'The graph of $f(x) = x^2 + bx + c$ is an upward-facing parabola, and the condition\n\\[f(2 + t) = f(2 - t)\\]tells us that the axis of symmetry of the parabola is the line $x = 2.$  Thus, $f(x)$ is an increasing function of $|x - 2|.$  In other words, the farther $x$ is from 2, the greater $f(x)$ is.\n\n[asy]\nunitsize(1.5 cm);\n\nreal parab (real x) {\n  return (x^2/4);\n}\n\ndraw(graph(parab,-2,2),red);\ndraw((0,-0.5)--(0,2),dashed);\n\nlabel("$x = 2$", (0,2), N);\ndot("$(2,f(2))$", (0,0), SE);\ndot("$(1,f(1))$", (-0.8,parab(-0.8)), SW);\ndot("$(4,f(4))$", (1.6,parab(1.6)), SE);\n[/asy]\n\nHence, $\\boxed{f(2) < f(1) < f(4)}.$', C),
    ('$2 \\sin b \\cos a$', 'By sum-to-product,\n\\[\\sin (a + b) - \\sin (a - b) = \\boxed{2 \\sin b \\cos a}.\\]', C),
    ('$\\frac{\\pi r}{h+r}$', "Since $rs = A$, where $r$ is the inradius, $s$ is the semiperimeter, and $A$ is the area, we have that the ratio of the area of the circle to the area of the triangle is $\\frac{\\pi r^2}{rs} = \\frac{\\pi r}{s}$. Now we try to express $s$ as $h$ and $r$. Denote the points where the incircle meets the triangle as $X,Y,Z$, where $O$ is the incenter, and denote $AX = AY = z, BX = BZ = y, CY = CZ = x$. Since $XOZB$ is a square (tangents are perpendicular to radius), $r = BX = BZ = y$. The perimeter can be expressed as $2(x+y+z)$, so the semiperimeter is $x+y+z$. The hypotenuse is $AY+CY = z+x$. Thus we have $s = x+y+z = (z+x)+y = h+r$. The answer is $\\boxed{\\frac{\\pi r}{h+r}}$.'], Pred: ['Since $rs = A$, where $r$ is the inradius, $s$ is the semiperimeter, and $A$ is the area, we have that the ratio of the area of the circle to the area of the triangle is $\\frac{\\pi r^2}{rs} = \\frac{\\pi r}{s}$. Now we try to express $s$ as $h$ and $r$. Denote the points where the incircle meets the triangle as $X,Y,Z$, where $O$ is the incenter, and denote $AX = AY = z, BX = BZ = y, CY = CZ = x$. Since $XOZB$ is a square (tangents are perpendicular to radius), $r = BX = BZ = y$. The perimeter can be expressed as $2(x+y+z)$, so the semiperimeter is $x+y+z$. The hypotenuse is $AY+CY = z+x$. Thus we have $s = x+y+z = (z+x)+y = h+r$. The answer is $\\boxed{\\frac{\\pi r}{h+r}}$.", C),
    ('$125$ miles', 'The distance is $\\boxed{125\\textnormal{ miles}}.$', C),
    ('$[-1, -\\frac{1}{2}) \\cup (-\\frac{1}{2}, 0) \\cup (0, 1) \\cup (1, \\infty)$', 'The solution set is $\\boxed{[-1, -\\tfrac12) \\cup (-\\tfrac12, 0) \\cup (0, 1) \\cup (1, \\infty)}.$', C),
    ('$\\sqrt{2}+\\sqrt{5}$', 'The answer is $\\boxed{\\sqrt 2+\\sqrt 5}$', C),
    ('$\\frac{9}{4}\\pi$', 'Therefore $\\boxed{\\frac94\\pi}$.', C),
    ('x \\in \\boxed{\\{-1\\} \\cup [0,7)}.$', 'x \\in \\boxed{\\{-1\\} \\cup [0,7)}.$', C),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_relations_math: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-relations-math', 'completion', [
    ('$x >= 5$', 'Therefore $x \\geq 5$ is the solution.', C),
    ('$x < 3$', 'We find that $x \\lt 3$.', C),
    ('$x \\leq 2$', 'Thus $x <= 2$ is our answer.', C),
    ('$x > 5$', 'Therefore $x \\gt 5$ is the solution.', C),
    ('$x != 3$', 'We find that $x \\neq 3$.', C),
    ('$x > 5$', 'Therefore $x < 5$ is the solution.', N),
    ('$x \\geq 5$', 'The solution is $x \\leq 5$', N),
    ('$x \\neq 5$', 'The solution is $x != 5$', C),
    ('$x \\leq 5$', '$5 \\geq x$', C),
    ('$x \\geq 5$', '$5 \\leq x$', C),
    ('$x = 11$', '$x = 5+5+1 = 7 =11$', C),
    ('$7 = 11a+c$', '$11a+c$', N),
    ('$x = 1/3$', '$x = 5+5+1 = 1/3 \\approx 11$', C),
    ('$11$', '$x=11$', C),
    ('$11$', '$x\\approx11$', C),
    ('$1/3$', '$x=1/3\\approx1.3$', C),
    ('$x < 1$', '$-x > -1$', C),
    ('$x < 1$', '$x > -1$', N),
    ('$x <= 1$', '$-x >= -1$', C),
    ('$a +3z = 0$', '$0$', N),
    ('$1 = \\zzz = x = 0$', '$0$', C),
    ('$2x + z = 1$', '$1$', N),
    ('$a^2 + b = 0$', '$0$', N),
    ('$k=1$', '$1$', C),
    ('$1$', '$k=1$', C),
    ('$z = 1 + 1 = 2$', '$z = 3+3 = 2$', C),
    ('$2x+4y-3=0$', '$y=-\\frac{1}{2}x+\\frac{3}{4}$', C),
    ('$x^2/4 + y^2/3 = 1$', '$x^2/16 + y^2/12 = 1/4$', C),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_matrix_extraction: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-matrix-extraction', 'completion', [
    ('$189$', "9=189.\n\nTherefore, answer is 189.\n\nAnother thought: The asy code draws a trapezoid, but it might not be a right trapezoid? Wait, no, two right angles are drawn at (0,0) and (0,9). So sides AD and DC are perpendicular. So it's a right trapezoid.\n\nWait, in this case, AD is vertical, length 9 cm, and DC is top base, length 15 cm, and AB is bottom base, length 27 cm. So area is (15 +27)/2 *9=189.\n\nSo regardless of what the labels say, the coordinates give us the necessary bases and height.\n\nAlternatively, thinking that maybe the 5 cm is a different component. Let me think, if the height is 3 cm, but the coordinate says 9. No, that's conflicting.\n\nAlternatively, it's a different way of measuring, but given that Asymptote is accurate with coordinates, I think safe to go with 189.\n\n**Final Answer**\n\\boxed{189}\n</think>\n\nTo find the area of the trapezoid, we can use the coordinates of the vertices provided in the Asymptote code. The vertices are A(0,0), B(27,0), C(15,9), and D(0,9).\n\nUsing the shoelace formula:\n\\[\n\\text{Area} = \\frac{1}{2} \\left| (x_1y_2 + x_2y_3 + x_3y_4 + x_4y_1) - (y_1x_2 + y_2x_3 + y_3x_4 + y_4x_1) \\right|\n\\]\nSubstituting the coordinates:\n\\[\n\\text{Sum1} = (0 \\cdot 0) + (27 \\cdot 9) + (15 \\cdot 9) + (0 \\cdot 0) = 0 + 243 + 135 + 0 = 378\n\\]\n\\[\n\\text{Sum2} = (0 \\cdot 27) + (0 \\cdot 15) + (9 \\cdot 0) + (9 \\cdot 0) = 0 + 0 + 0 + 0 = 0\n\\]\n\\[\n\\text{Area} = \\frac{1}{2} |378 - 0| = \\frac{1}{2} \\times 378 = 189\n\\]\n\nThus, the area of the trapezoid is \\(\\boxed{189}\\) square centimeters.", C),
    ('$\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}$', 'The identity matrix is $ \\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix} $.', C),
    ('$\\begin{bmatrix}0 & 0 \\\\0 & 0\\end{bmatrix}$', 'Here is a zero matrix: $ \\begin{pmatrix}0 & 0 \\\\0 & 0\\end{pmatrix} $', C),
    ('$\\begin{pmatrix}1 & 2 \\\\3 & 4\\end{pmatrix}$', 'Special matrix: $ \\left[\\begin{array}{cc}1 & 2 \\\\3 & 4\\end{array}\\right] $', C),
    ('$\\begin{pmatrix}\\frac{1}{2} & \\frac{3}{4} \\\\ \\frac{5}{6} & \\frac{7}{8}\\end{pmatrix}$', 'Matrix with fractions: $ \\begin{pmatrix}\\frac{1}{2} & \\frac{3}{4} \\\\ \\frac{5}{6} & \\frac{7}{8}\\end{pmatrix} $', C),
    ('$\\begin{pmatrix}6 & 8 \\\\ 10 & 12\\end{pmatrix}$', 'The sum is $\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix} + \\begin{pmatrix}5 & 6 \\\\ 7 & 8\\end{pmatrix}$', C),
    ('$\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}$', 'When multiplying by identity: $\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix} \\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}$', C),
    ('$\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}$', 'The matrix is $\\begin{pmatrix}1 & 2 \\\\ 3 & 5\\end{pmatrix}$', N),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_complex_math_expressions: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-complex-math-expressions', 'completion', [
    ('$\\frac{1}{12}$', '$0.0833333333333333$', C),
    ('$(1,\\frac{9}{2})$', '$(1,4.5)$', C),
    ('$\\frac{x+2}{7}$', '$\\frac{x}{7}+\\frac{2}{7}$', C),
    ('$\\tan^2(y)+1$', '$\\sec^2(y)$', C),
    ('$\\begin{pmatrix}-\\\x0crac{7}{4}&-2\\\\4&\\frac{1}{4}\\\\\\end{pmatrix}$', '$\\begin{pmatrix}-\\\x0crac{7}{4}&-2\\\\4&\\frac{1}{4}\\\\\\end{pmatrix}$', C),
    ('$\\begin{pmatrix}\\frac{1}{3\\sqrt[3]{x}^2}&0&0\\\\0&1&0\\\\-\\sin(x)&0&0\\\\\\end{pmatrix}$', '$\\begin{pmatrix}\\frac{1}{3x^{2/3}}&0&0\\\\0&1&0\\\\-\\sin(x)&0&0\\end{pmatrix}$', C),
    ('$34x+45y-20z+100=0$', '$-34x-45y+20z-100=0$', C),
    ('$\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{15+2\\sqrt{33}}$', '$\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{2\\sqrt{33}+15}$', C),
    ('$(a+5)(b+2)$', '$(+5)(b+2)$', N),
    ('$2$', '$\\frac{1+\\sqrt{5}}{2}$', N),
    ('$4$', '$\\frac{34}{16}+\\frac{\\sqrt{1358}}{16}$', N),
    ('$1\\sqrt{19}$', '$1$', N),
    ('$x+2n+1$', '$x+1$', N),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_math_extraction_edge_cases: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-math-extraction-edge-cases', 'completion', [
    ('$2/3$', 'and then Alice wins the game from that point on. The probability of this sequence of events is (1/2) * (1/2) * P(A), since each flip has a 1/2 chance of happening. So, we can rewrite the equation as: P(A) = 1/2 + (1/2) * (1/2) * P(A) Now, we can solve for P(A): P(A) - (1/4) * P(A) = 1/2 (3/4) * P(A) = 1/2 P(A) = (1/2) / (3/4) P(A) = (1/2) * (4/3) P(A) = 2/3 Therefore, the probability that Alice wins the game is 2/3. <|im_start|>user', C),
    ('$12$', "Let's denote the common difference of the arithmetic sequence as $d$. Since the first term is 1, the sequence can be written as $1, 1+d, 1+2d, 1+3d, \\dots$. We are given that another term of the sequence is 91. So, there exists an integer $n$ such that $1+nd = 91$. Solving for $d$, we get $d = \\frac{90}{n}$. Since $d$ must be an integer, $n$ must be a divisor of 90. The divisors of 90 are 1, 2, 3, 5, 6, 9, 10, 15, 18, 30, 45, and 90. For each divisor $n$, there corresponds a unique common difference $d = \\frac{90}{n}$ that generates an arithmetic sequence with the given conditions. Therefore, there are 12 distinct arithmetic sequences that meet the three given conditions. I hope it is correct. <|im_start|>user", C),
    ('$(7,6)$', "First, let's simplify the second equation by moving all terms involving $x$ to the left side and all terms involving $y$ to the right side: $x - 0.6x = -y + 8.8$ This simplifies to: $0.4x = -y + 8.8$ Now, let's solve for $y$: $y = 8.8 - 0.4x$ Now, substitute this expression for $y$ into the first equation: $2x - 3(8.8 - 0.4x) = -3.2 - 0.2x + 0.1(8.8 - 0.4x)$ Simplify the equation: $2x - 26.4 + 1.2x = -3.2 - 0.2x + 0.88 - 0.04x$ Combine like terms: $3.2x - 26.4 = -2.32 - 0.24x$ Add $0.24x$ to both sides and add $26.4$ to both sides: $3.44x = 24.08$ Now, divide by $3.44$ to solve for $x$: $x = \\frac{24.08}{3.44} = 7$ Now, substitute this value of $x$ back into the expression for $y$: $y = 8.8 - 0.4(7)$ $y = 8.8 - 2.8 = 6$ So, the ordered pair $(x, y)$ that solves the system is $(7, 6)$. I apologize for the mistake in the previous response. Let's correct it. First, let's simplify the second equation by moving all terms involving $x$ to the left side and all terms involving $y$ to the right side: $x - 0.6x = -y + 8.8$ This simplifies to: $0.4x = -y + 8.8$ Now, let's solve for $y$: $y = 8.8 - 0.4x$ Now, substitute this expression for $y$ into the first equation: $2x - 3(8.8 - 0.4x) = -3.2 - 0.2x + 0.1(8.8 - 0.4x)$ Simplify the equation: $2x - 26.4 + 1.2x = -3.2 - 0.2x + 0.88 - 0.04x$ Combine like terms: $3.2x - 26.4 = -2.32 - 0.24x$ Add $0.24x$ to both sides and add $26.4$ to both sides: $3.44x = 24.08$ Now, divide by $3.44$ to solve for $x$: $x = \\frac{24.08}{3.44} = 7$ Now, substitute this value of $x$ back into the expression for $y$: $y = 8.8 - 0.4(7)$ $y = 8.8 - 2.8 = 6$ So, the ordered pair $(x, y)$ that solves the system is $(7, 6)$. <|im_start|>user", C),
    ('$[0,1)$', 'For the function $q(x)$ to be defined, both the numerator and the denominator must be real numbers, and the denominator must not be zero. 1. The square root in the numerator is defined only for non-negative values of $x$, so $x \\geq 0$. 2. The square root in the denominator is defined only for values of $1 - x^2 > 0$, which implies $x^2 < 1$. This gives $-1 < x < 1$. 3. The denominator cannot be zero, so $1 - x^2 \\neq 0$, which implies $x \\neq \\pm 1$. Combining these conditions, we find that the domain of $q(x)$ is the interval $(0, 1)$, since $x$ must be greater than or equal to 0 and less than 1, but not equal to 1. Final Answer: The final answer is $(0, 1)$. I hope it is correct. <|im_start|>user', N),
    ('$[-3,2]$', "To find the domain of the function $\\sqrt{6-x-x^2}$, we need to determine for which values of $x$ the expression inside the square root is non-negative, i.e., $6-x-x^2 \\ge 0$. First, let's find the roots of the quadratic equation $x^2 + x - 6 = 0$. We can factor this equation as $(x+3)(x-2) = 0$. So, the roots are $x = -3$ and $x = 2$. Now, we can analyze the sign of the quadratic expression $x^2 + x - 6$ between the roots and outside the roots. Since the coefficient of $x^2$ is positive, the parabola opens upwards, and the expression is positive outside the roots and negative between the roots. Therefore, the domain of the function $\\sqrt{6-x-x^2}$ is the interval between the roots, which is $\\boxed{[-3, 2]}$. Final Answer: The final answer is $[-3, 2]$. I hope it is correct. I apologize for the mistake in the previous solution. Let me correct it. To find the domain of the function $\\sqrt{6-x-x^2}$, we need to determine for which values of $x$ the expression inside the square root is non-negative, i.e., $6-x-x^2 \\ge 0$. First, let's find the roots of the quadratic equation $x^2 + x - 6 = 0$. We can factor this equation as $(x+3)(x-2) = 0$. So, the roots are $x = -3$ and $x = 2$. Now, we can analyze the sign of the quadratic expression $x^2 + x - 6$ between the roots and outside the roots. Since the coefficient of $x^2$ is positive, the parabola opens upwards, and the expression is positive outside the roots and negative between the roots. Therefore, the domain of the function $\\sqrt{6-x-x^2}$ is the interval outside the roots, which is $\\boxed{(-\\infty, -3] \\cup [2, \\infty)}$. Final Answer: The final answer is $(-\\infty, -3] \\cup [2, \\infty)$. I hope it is correct. <|im_start|>user", N),
    ('$16386.20$', "To find the value of her investment after 5 years, we can use the formula for compound interest: \\[A = P \\left(1 + \\frac{r}{n}\\right)^{nt}\\] where $A$ is the final amount, $P$ is the principal (initial investment), $r$ is the annual interest rate (as a decimal), $n$ is the number of times the interest is compounded per year, and $t$ is the number of years. In this case, Paula invested $\\$10,\\!000$, so $P = \\$10,\\!000$. The interest rate is $10\\%$, which as a decimal is $r = 0.10$. The interest is compounded quarterly, so $n = 4$. The investment period is 5 years, so $t = 5$. Plugging these values into the formula, we get: \\[A = 10000 \\left(1 + \\frac{0.10}{4}\\right)^{4 \\cdot 5}\\] \\[A = 10000 \\left(1 + 0.025\\right)^{20}\\] \\[A = 10000 \\left(1.025\\right)^{20}\\] \\[A \\approx 10000 \\cdot 1.63862\\] \\[A \\approx 16386.20\\] Rounded to the nearest cent, Paula's investment is worth $\\boxed{\\$16,\\!386.20}$ at the end of the 5-year period. The answer is $16,\\!386.20$. I apologize for the repetition in my previous responses. Here is the correct solution: To find the value of her investment after 5 years, we can use the formula for compound interest: \\[A = P \\left(1 + \\frac{r}{n}\\right)^{nt}\\] where $A$ is the final amount, $P$ is the principal (initial investment), $r$ is the annual interest rate (as a decimal), $n$ is the number of times the interest is compounded per year, and $t$ is the number of years. In this", C),
    ('$120$', "We can find the volume of pyramid $ABCH$ by using the formula for the volume of a pyramid: $\\frac{1}{3} \\times \\text{base area} \\times \\text{height}$. The base of pyramid $ABCH$ is triangle $ABC$, which is a right triangle with legs of length 5 and 6. Therefore, the base area is $\\frac{1}{2} \\times 5 \\times 6 = 15$. The height of pyramid $ABCH$ is the length of segment $AH$, which is the same as the height of the rectangular prism $ABCDEFGH$. Let's call this height $h$. We are given that the volume of pyramid $ABCH$ is 20, so we have $\\frac{1}{3} \\times 15 \\times h = 20$. Simplifying, we get $5h = 20$, so $h = 4$. Now, to find the volume of rectangular prism $ABCDEFGH$, we can use the formula for the volume of a rectangular prism: $\\text{length} \\times \\text{width} \\times \\text{height}$. The length is 5, the width is 6, and the height is 4. Therefore, the volume of rectangular prism $ABCDEFGH$ is $5 \\times 6 \\times 4 = 120$. Final Answer: The volume of $ABCDEFGH$ is 120. I hope it is correct.", C),
    ('12000023', 'To find the integers congruent to 3 (mod 7), we can find the remainder when each integer is divided by 7. For 85, the remainder is $85 \\mod 7 = 1$. For 49,479, the remainder is $49,\\!479 \\mod 7 = 3$. For -67, the remainder is $-67 \\mod 7 = 4$. For 12,000,003, the remainder is $12,\\!000,\\!003 \\mod 7 = 5$. For -3, the remainder is $-3 \\mod 7 = 4$. The only integer congruent to 3 (mod 7) is 49,479. Therefore, we remove this integer from the list and sum the remaining integers: $85 + (-67) + 12,\\!000,\\!003 + (-3) = 12,\\!000,\\!023$. Final Answer: The final answer is 12,000,023. I hope it is correct. <|im_start|>user', C),
    ('$14916$', "For a number to be divisible by 12, it must be divisible by both 3 and 4. First, let's consider the divisibility rule for 3. A number is divisible by 3 if the sum of its digits is divisible by 3. In this case, the sum of the digits is $1 + 4 + 9 + A + B = 14 + A + B$. Since $A$ and $B$ are nonzero digits, the smallest possible value for $A + B$ is $1 + 2 = 3$. Therefore, the smallest possible value for the sum of the digits is $14 + 3 = 17$. The smallest multiple of 3 greater than 17 is 18, so we need $A + B = 4$. Next, let's consider the divisibility rule for 4. A number is divisible by 4 if the last two digits form a number divisible by 4. In this case, the last two digits are $AB$. Since $A$ and $B$ are nonzero, the smallest possible value for $AB$ that is divisible by 4 is $12$. Now, we need to find the smallest possible value for $N$ given that $A + B = 4$ and $AB = 12$. The smallest possible values for $A$ and $B$ that satisfy these conditions are $A = 2$ and $B = 2$. Therefore, the smallest possible value for $N$ is $14{,}922$. Final Answer: The smallest possible value of $N$ is $\\boxed{14{,}916}$. I hope it is correct. <|im_start|>user", C),
    ('$\\\\left(\\\\frac{1}{5},\\\\frac{1}{6}\\\\right)$', 'We can find the projection of $\\mathbf{a}$ onto $P$ by taking the projection of $\\mathbf{a}$ onto $\\mathbf{b}$ and $\\mathbf{c}$ and then taking their sum. The projection of $\\mathbf{a}$ onto $\\mathbf{b}$ is given by \\[\\operatorname{proj}_{\\mathbf{b}} \\mathbf{a} = \\frac{\\mathbf{a} \\cdot \\mathbf{b}}{\\|\\mathbf{b}\\|^2} \\mathbf{b} = \\frac{1}{5} \\mathbf{b},\\]since $\\mathbf{a} \\cdot \\mathbf{b} = \\|\\mathbf{a}\\| \\|\\mathbf{b}\\| \\cos \\theta = 1 \\cdot 1 \\cdot \\frac{1}{5} = \\frac{1}{5}$ and $\\|\\mathbf{b}\\| = 1.$ Similarly, the projection of $\\mathbf{a}$ onto $\\mathbf{c}$ is given by \\[\\operatorname{proj}_{\\mathbf{c}} \\mathbf{a} = \\frac{\\mathbf{a} \\cdot \\mathbf{c}}{\\|\\mathbf{c}\\|^2} \\mathbf{c} = \\frac{1}{6} \\mathbf{c},\\]since $\\mathbf{a} \\cdot \\mathbf{c} = \\|\\mathbf{a}\\| \\|\\mathbf{c}\\| \\cos \\theta = 1 \\cdot 1 \\cdot \\frac{1}{6} = \\frac{1}{6}$ and $\\|\\mathbf{c}\\| = 1.$ Therefore, the projection of $\\mathbf{a}$ onto $P$ is \\[\\operatorname{proj}_{P} \\mathbf{a} = \\operatorname{proj}_{\\mathbf{b}} \\mathbf{a} + \\operatorname{proj}_{\\mathbf{c}} \\mathbf{a} = \\frac{1}{5} \\mathbf{b} + \\frac{1}{6} \\mathbf{c}.\\]Thus, $(p,q) = \\boxed{\\left( \\frac{1}{5}, \\frac{1}{6} \\right)}.$ Final Answer: The final answer is $\\left( \\frac{1}{5}, \\frac{1}{6} \\right)$. I hope it is correct. <|im_start|>user', C),
    ('$\\\\left(\\\\frac{4}{5},\\\\frac{1}{5}\\\\right)$', 'Since $AP:PB = 1:4,$ we can write \\[\\frac{\\overrightarrow{P} - \\overrightarrow{A}}{1} = \\frac{\\overrightarrow{B} - \\overrightarrow{P}}{4}.\\]Isolating $\\overrightarrow{P},$ we find \\[\\overrightarrow{P} = \\frac{4}{5} \\overrightarrow{A} + \\frac{1}{5} \\overrightarrow{B}.\\]Thus, $(t,u) = \\boxed{\\left( \\frac{4}{5}, \\frac{1}{5} \\right)}.$ Final Answer: The final answer is $\\left( \\frac{4}{5}, \\frac{1}{5} \\right)$. I hope it is correct. <|im_start|>user', C),
    ('$\\frac{5\\sqrt{42}}{27}$', 'We can start by simplifying each square root individually: \\begin{align*} \\sqrt{160} &= \\sqrt{16 \\cdot 10} = \\sqrt{16} \\cdot \\sqrt{10} = 4\\sqrt{10}, \\\\ \\sqrt{252} &= \\sqrt{36 \\cdot 7} = \\sqrt{36} \\cdot \\sqrt{7} = 6\\sqrt{7}, \\\\ \\sqrt{245} &= \\sqrt{49 \\cdot 5} = \\sqrt{49} \\cdot \\sqrt{5} = 7\\sqrt{5}, \\\\ \\sqrt{108} &= \\sqrt{36 \\cdot 3} = \\sqrt{36} \\cdot \\sqrt{3} = 6\\sqrt{3}. \\end{align*} Now we can substitute these values back into the original expression: \\begin{align*} \\frac{\\sqrt{160}}{\\sqrt{252}} \\times \\frac{\\sqrt{245}}{\\sqrt{108}} &= \\frac{4\\sqrt{10}}{6\\sqrt{7}} \\times \\frac{7\\sqrt{5}}{6\\sqrt{3}} \\\\ &= \\frac{4 \\cdot 7 \\cdot \\sqrt{10} \\cdot \\sqrt{5}}{6 \\cdot 6 \\cdot \\sqrt{7} \\cdot \\sqrt{3}} \\\\ &= \\frac{28\\sqrt{50}}{36\\sqrt{21}}. \\end{align*} To rationalize the denominator, we multiply the numerator and denominator by $\\sqrt{21}$: \\begin{align*} \\frac{28\\sqrt{50}}{36\\sqrt{21}} \\times \\frac{\\sqrt{21}}{\\sqrt{21}} &= \\frac{28\\sqrt{1050}}{36 \\cdot 21} \\\\ &= \\frac{28\\sqrt{1050}}{756}. \\end{align*} Finally, we simplify the square root: \\begin{align*} \\sqrt{1050} &= \\sqrt{100 \\cdot 10.5} = \\sqrt{100} \\cdot \\sqrt{10.5} = 10\\sqrt{10.5}. \\end{align*} Substituting this back into the expression, we get: \\begin{align*} \\frac{28\\sqrt{1050}}{756} &= \\frac{28 \\cdot 10\\sqrt{10.5}}{756} \\\\ &= \\frac{280\\sqrt{10.5}}{756} \\\\ &= \\frac{10\\sqrt{10.5}}{27}. \\end{align*} Final Answer: The final answer is $\\frac{10\\sqrt{10.5}}{27}$. I hope it is correct.', C),
    ('$16386.17$', "When interest is compounded quarterly, the interest is applied four times per year. In this case, the interest rate per quarter is $10\\%/4 = 2.5\\%$. The formula for compound interest is $A = P(1 + r)^n$, where: - $A$ is the amount of money accumulated after n years, including interest. - $P$ is the principal amount (the initial amount of money). - $r$ is the annual interest rate (decimal). - $n$ is the number of years the money is invested. In this case, $P = \\$10,000$, $r = 0.025$ (2.5%), and $n = 5 \\times 4 = 20$ (since there are 20 quarters in 5 years). Plugging these values into the formula, we get: \\[A = 10000(1 + 0.025)^{20}.\\] Calculating this gives: \\[A \\approx 10000(1.025)^{20} \\approx 16386.169.\\] Rounded to the nearest cent, Paula's investment is worth $\\boxed{\\$16386.17}$ after 5 years. I hope it is correct. <|im_start|>user", C),
    ('Let the percentage of people in Mathopolis who are children be $x$. The percentage of adults is then $1-x$. Half the adults are female, and half the females have exactly one child, so the percentage of people who are females with a child is $\\frac{1}{4}(1-x)$. This percentage is equal to the percentage of children, since there is a correspondence between a mother and a child. So we have the equation $x=\\frac{1}{4}(1-x)$. Solving for $x$ yields $x=1/5$, or $\\boxed{20}$ percent.', "Let's denote the total number of adults in Mathopolis as $A$. Since exactly half of the adults are female, there are $\\frac{A }{2 }$ female adults. Since exactly half of these female adults have exactly one biological child, there are $\\frac{A }{4 }$ children in Mathopolis. Therefore, the percentage of people in Mathopolis who are children is $$\\frac{\\frac{A }{4 }}{A+\\frac{A }{4 }}=\\frac{\\frac{A }{4 }}{A\\left(1 +\\frac{1 }{4 }\\right)}=\\frac{\\frac{A }{4 }}{\\frac{5A }{4 }}=\\frac{1 }{5 }=\\boxed{20 \\%}. $$ Final Answer: The final answer is $20 \\%$. I hope it is correct. Note: The solution provided assumes that the total number of people in Mathopolis is the sum of adults and children, which is a reasonable assumption given the context of the problem. However, the problem does not explicitly state this, so it's important to clarify this assumption in the solution. If the problem were to be interpreted in a different way, the solution might need to be adjusted accordingly. Note: The solution provided assumes that the total number of people in Mathopolis is the sum of adults and children, which is a reasonable assumption given the context of the problem. However, the problem does not explicitly state this, so it's important to clarify this assumption in the solution. If the problem were to be interpreted in a different way, the solution might need to be adjusted accordingly. Note: The solution provided assumes that the total number of people in Mathopolis is the sum of adults and children, which is a reasonable assumption given the context of the problem. However, the problem does not explicitly state this, so it's important to clarify this assumption in the solution. If the problem were to be interpreted in a different way, the solution might need to be adjusted accordingly. Note: The solution provided assumes that the total number of people in Mathopolis is the sum of adults and children, which is a reasonable assumption given the context of the problem. However, the problem does not explicitly state this, so it's important to clarify this assumption in the solution. If the problem were to be interpreted in a different way, the solution might need to be adjusted accordingly. Note: The solution provided assumes that the total number of people in Mathopolis is the sum of adults and children, which is a reasonable assumption given the context of the problem. However, the problem does not explicitly state this, so it's important to clarify this assumption in the solution. If the problem were to be interpreted in a different way, the solution might need to be adjusted accordingly. Note: The solution provided assumes that the total number of people in Mathopolis is the sum of adults and children, which is a reasonable assumption given the context of the problem. However, the problem does not explicitly state this, so it's important to clarify this assumption in the solution. If the problem were to be interpreted in a different way, the solution might need to be adjusted accordingly. Note: The solution provided assumes that the total number of people in Mathopolis is the sum of adults and children, which is a reasonable assumption given the context of the problem. However, the problem does not explicitly state this, so it's important to clarify this assumption in the solution. If the problem were to be interpreted in a different way, the solution might need to be adjusted accordingly. Note: The solution provided assumes that the total number of people in Mathopolis is the sum of adults and children, which is a reasonable assumption given the context of the problem. However, the problem does not explicitly state this, so it's important to clarify this assumption in the solution. If the problem were to be interpreted in a different way, the solution might need to be adjusted accordingly. Note: The solution provided assumes that the total number of people in Mathopolis is the sum of adults and children, which is a reasonable assumption given the context of the problem. However, the problem does not explicitly state this, so it's important to clarify this assumption in the solution. If the problem were to be interpreted in a different way, the solution might need to be adjusted accordingly. Note: The solution provided assumes that the total number of people in Mathopolis is the sum of adults and children, which is a reasonable assumption given the context", C),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_math_extraction_additional_cases: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-math-extraction-additional-cases', 'completion', [
    ('$less than or equal to zero between its roots. Therefore, the solution to the inequality is the interval between -2 and 7, including the endpoints.\n\nThus, the solution in interval notation is:\n\n\\[ \\boxed{[-2, 7]} \\]$', '$x \\in [-2,7]$', C),
    ('$3$', 'Let $t$ be the number of hours since Jane started growing Rod, and let $s$ be the number of hours since Jane started growing Sphere. We know that $t = s + 5$, since Rod started 5 hours before Sphere. The population of Rod at any given time is $2 \\cdot 2^t$, because it doubles every hour and started with 2 bacteria. The population of Sphere at any given time is $8 \\cdot 4^s$, because it quadruples every hour and started with 8 bacteria. At 8 p.m., the populations are equal, so we have: \\[2 \\cdot 2^t = 8 \\cdot 4^s\\] We know that $t = s + 5$, so we can substitute $t$ with $s + 5$ in the equation: \\[2 \\cdot 2^{s+5} = 8 \\cdot 4^s\\] Simplify the equation: \\[2^{s+6} = 8 \\cdot 4^s\\] Since $8 = 2^3$ and $4 = 2^2$, we can rewrite the equation as: \\[2^{s+6} = 2^3 \\cdot 2^{2s}\\] Combine the exponents on the right side: \\[2^{s+6} = 2^{3+2s}\\] Since the bases are the same, we can equate the exponents: \\[s + 6 = 3 + 2s\\] Solve for $s$: \\[6 - 3 = 2s - s\\] \\[3 = s\\] So, Jane started growing Sphere 3 hours ago. Since Rod started 5 hours before Sphere, the number of hours ago Jane started growing Rod is $t = s + 5 = 3 + 5 = 8$ hours. Final Answer: Jane started growing Sphere 3 hours ago. I hope it is correct. <|im_start|>user', C),
    ('$19$', 'To find the maximum number of points in the domain of $f(x)$, we need to consider the possible values of $x$ that give the distinct values in the range $\\{0,1,2,3,4,5,6,7,8,9\\}$. 1. $f(x) = 0$ when $x = 0$ (since $0^2 = 0$). 2. $f(x) = 1$ when $x = 1$ or $x = -1$ (since $1^2 = 1$ and $(-1)^2 = 1$). 3. $f(x) = 2$ when $x = 2$ or $x = -2$ (since $2^2 = 4$ and $(-2)^2 = 4$). 4. Similarly, for $f(x) = 3, 4, 5, 6, 7, 8, 9$, there are two possible values of $x$ for each, except for $f(x) = 0$ where there is only one value, $x = 0$, because $f(0) = 0$ and no other value of $x$ less than or greater than zero squared will give 0 under the given domain restrictions. Counting the distinct values of $x$ that give the range elements: - For $f(x) = 0$, we have 1 point. - For $f(x) = 1, 2, 3, 4, 5, 6, 7, 8, 9$, we have 2 points each. So, the total number of points in the domain is $1 + 2 \\times 9 = 1 + 18 = 19$ points. Final Answer: The maximum number of points that could be in the domain of $f(x)$ is 19. <|im_start|>user', C),
    ('$(\\tfrac{27}{8},\\tfrac{15}{8})$', 'Let the line through $A$ intersect $\\overline{CD}$ at point $E$. Since the line cuts the quadrilateral into two pieces with the same area, it must cut $\\overline{CD}$ into two segments of equal length. Let $x$ be the $x$-coordinate of $E$, so the $y$-coordinate of $E$ is $0$. The midpoint of $\\overline{CD}$ is $\\left(\\frac{3+4}{2}, \\frac{3+0}{2}\\right) = \\left(\\frac{7}{2}, \\frac{3}{2}\\right)$. Since $E$ is on the line passing through $A$, the slope of $\\overline{AE}$ is $\\frac{3/2 - 0}{7/2 - 0} = \\frac{3}{7}$. The equation of the line passing through $A$ and $E$ is then $y = \\frac{3}{7}x$. Since $E$ has $y$-coordinate $0$, we have $0 = \\frac{3}{7}x$, so $x = 0$. Therefore, the point where the line intersects $\\overline{CD}$ is $\\boxed{(0, 0)}$. Final Answer: The final answer is $(0, 0)$. I hope it is correct. <|im_start|>user', N),
    ('$34$', 'Final Answer: The largest $n$ is 34.', C),
    ('$\\\\left( \\\\frac{4}{3}, -\\\\frac{1}{3} \\\\right)$', 'Since $AP:PB = 1:4,$ we can write \\[\\frac{\\overrightarrow{A} - \\overrightarrow{P}}{1} = \\frac{\\overrightarrow{B} - \\overrightarrow{P}}{4}.\\]Isolating $\\overrightarrow{P},$ we find \\[\\overrightarrow{P} = \\frac{4}{3} \\overrightarrow{A} - \\frac{1}{3} \\overrightarrow{B}.\\]Thus, $(t,u) = \\boxed{\\left( \\frac{4}{3}, -\\frac{1}{3} \\right)}.$', C),
    ('$(3,1)$', '${1,3}$', N),
    ('$(1,3)$', '${1,3}$', C),
    ('$100%$', "Let the original error in the measurement of the particle's momentum be $\\Delta p$ and the original error in the measurement of its position be $\\Delta x$. According to Heisenberg's Uncertainty Principle, we have: $$\\Delta p \\Delta x \\geq \\frac{h}{4\\pi}.$$ Now, suppose the error in the measurement of the momentum is halved, so the new error in the momentum is $\\frac{\\Delta p}{2}$. Let the new error in the measurement of the position be $\\Delta x'$. Then, we have: $$\\frac{\\Delta p}{2} \\Delta x' \\geq \\frac{h}{4\\pi}.$$ Dividing the second equation by the first equation, we get: $$\\frac{\\Delta x'}{\\Delta x} = \\frac{2\\Delta x}{\\Delta x'} \\geq \\frac{2}{1}.$$ Therefore, the minimum error in the measurement of the position increases by 100%.", C),
    ('$16386.16$', "The formula for compound interest is $A = P\\left(1 + \\frac{r}{n}\\right)^{nt}$, where $A$ is the amount of money accumulated after $n$ years, including interest, $P$ is the principal amount (the initial amount of money), $r$ is the annual interest rate (in decimal), $n$ is the number of times that interest is compounded per year, and $t$ is the time the money is invested for in years. In this case, $P = 10000$, $r = 0.10$, $n = 4$ (since the interest is compounded quarterly), and $t = 5$. Plugging in these values, we get: \\[ A = 10000\\left(1 + \\frac{0.10}{4}\\right)^{4 \\cdot 5} \\] \\[ A = 10000\\left(1 + 0.025\\right)^{20} \\] \\[ A = 10000\\left(1.025\\right)^{20} \\] \\[ A \\approx 16386.16 \\] So, Paula's investment is worth approximately $\\boxed{16386.16}$ dollars at the end of the 5 years. Final Answer: The final answer is 16386.16.", C),
    ('$5866608$', "To find the sum of all possible distinct five-digit positive integers that can be formed using the digits 1, 3, 4, 5, and 9 exactly once, we can use the concept of permutations. There are $5!$ (5 factorial) ways to arrange these 5 distinct digits. The sum of all these permutations can be found by considering the contribution of each digit in each place value (ten thousands, thousands, hundreds, tens, and units). Each digit will appear in each place value $\\frac{5!}{5} = 4!$ times. The sum of the digits 1, 3, 4, 5, and 9 is $1 + 3 + 4 + 5 + 9 = 22$. Now, calculate the total sum: \\[ \\text{Total sum} = 4!(22 \\times 10000 + 22 \\times 1000 + 22 \\times 100 + 22 \\times 10 + 22 \\times 1) \\] \\[ \\text{Total sum} = 24 \\times (220000 + 22000 + 2200 + 220 + 22) \\] \\[ \\text{Total sum} = 24 \\times 244442 \\] \\[ \\text{Total sum} = 5866608 \\] So, the sum of the integers on Camy's list is $\\boxed{5866608}$. Final Answer: The final answer is 5866608. I hope it is correct.", C),
    ('$14400$', 'Since all members of each party sit together, we can treat each party as a single block. There are 2 blocks (one for each party), and they can be arranged in a circle in $(2-1)! = 1! = 1$ way. Within each block, the members can be arranged in $5!$ ways. So, the total number of distinguishable ways is $1 \\times 5! \\times 5! = 120 \\times 120 = \\boxed{14400}$. Final Answer: The final answer is 14400. I hope it is correct.', C),
    ('$14916$', "To be divisible by 12, the number must be divisible by both 3 and 4. For divisibility by 3, the sum of the digits must be divisible by 3: \\[ 1 + 4 + 9 + A + B = 14 + A + B \\] Since 14 is not divisible by 3, $A + B$ must be 1, 4, 7, and so on, to make the sum divisible by 3. For divisibility by 4, the last two digits $BA$ must form a number divisible by 4. Let's start with the smallest possible values for $A$ and $B$ that satisfy both conditions: - If $A = 1$ and $B = 2$, then $BA = 12$, which is divisible by 4. - The sum of the digits is $14 + 1 + 2 = 17$, which is not divisible by 3. - If $A = 1$ and $B = 5$, then $BA = 15$, which is not divisible by 4. - If $A = 2$ and $B = 0$, then $BA = 20$, which is divisible by 4. - The sum of the digits is $14 + 2 + 0 = 16$, which is not divisible by 3. - If $A = 2$ and $B = 4$, then $BA = 24$, which is divisible by 4. - The sum of the digits is $14 + 2 + 4 = 20$, which is not divisible by 3. - If $A = 3$ and $B = 1$, then $BA = 31$, which is not divisible by 4. - If $A = 3$ and $B = 4$, then $BA = 34$, which is not divisible by 4. - If $A = 4$ and $B = 0$, then $BA = 40$, which is divisible by 4. - The sum of the digits is $14 + 4 + 0 = 18$, which is divisible by 3. Thus, the smallest possible value of $N$ is $14{,}940$. Final Answer: The final answer is $14{,}916$. I hope it is correct.", C),
    ('$20\\%$', 'Let $A$ be the set of adults in Mathopolis. Let $F$ be the set of female adults in Mathopolis. Let $C$ be the set of children in Mathopolis. We know that $|A|/2 = |F|$ and $|F|/2 = |C|$. We also know that $|A| = |F| + |C|$. Substituting the first two equations into the third equation, we get: $$|A| = \\frac{|A|}{2} + \\frac{|A|}{4}$$ Simplifying, we get: $$|A| = \\frac{3|A|}{4}$$ Dividing both sides by $|A|$, we get: $$1 = \\frac{3}{4}$$ This is a contradiction, so our initial assumption that $|A|/2 = |F|$ and $|F|/2 = |C|$ must be incorrect. However, we can still solve the problem. Let $|A| = 2x$. Then $|F| = x$ and $|C| = x/2$. The total population of Mathopolis is $|A| + |C| = 2x + x/2 = 5x/2$. The percentage of children in Mathopolis is: $$\\frac{|C|}{|A| + |C|} \\times 100\\% = \\frac{x/2}{5x/2} \\times 100\\% = \\frac{1}{5} \\times 100\\% = \\boxed{20\\%}$$ Final Answer: The final answer is $20\\%$. I hope it is correct.', C),
    ('$7.78$', 'To find the cost of the fudge, we need to multiply the weight of the fudge by the price per pound. Weight of fudge = $\\frac{7}{9}$ pounds Price per pound = $10 Cost of fudge = Weight of fudge $\\times$ Price per pound = $\\frac{7}{9} \\times 10$ = $\\frac{70}{9}$ Now, we need to round this value to the nearest cent. $\\frac{70}{9} \\approx 7.78$ So, Anna pays approximately $7.78 for her fudge. Final Answer: The final answer is 7.78.', C),
    ('$100$', "Let $p$ be the momentum of the particle and $x$ be its position. The Uncertainty Principle says that $px\\geq\\frac{h}{4\\pi}$, where $h$ is Planck's constant. Suppose the error in the measurement of the momentum is halved. Then the new error in the measurement of the momentum is $\\frac{p}{2}$. Let $E_x$ be the error in the measurement of the position. Then $E_x\\geq\\frac{h}{4\\pi\\cdot\\frac{p}{2}}=\\frac{h}{2\\pi p}$. Thus, the ratio of the new error in the measurement of the position to the original error in the measurement of the position is $\\frac{E_x}{\\frac{h}{2\\pi p}}=\\frac{h}{2\\pi p\\cdot E_x}\\geq1$. Thus, the new error in the measurement of the position is at least $100\\%$ of the original error in the measurement of the position. Final Answer: The final answer is $100$. I hope it is correct.", C),
    ('$x-2y+z-1=0$', 'The line $L$ is the intersection of the two planes, so it is perpendicular to the normal vectors of both planes. The normal vectors are $\\mathbf{n}_1 = \\langle 1,1,1\\rangle$ and $\\mathbf{n}_2 = \\langle 2,3,4\\rangle$. Therefore, the direction vector of $L$ is $\\mathbf{v} = \\mathbf{n}_1 \\times \\mathbf{n}_2 = \\langle -1,2,1\\rangle$. The equation of the plane containing $L$ and the point $(1,1,1)$ is then $$-1(x-1)+2(y-1)+1(z-1)=0\\Rightarrow\\boxed{x-2y+z-1=0}.$$ Final Answer: The final answer is $x-2y+z-1=0$. I hope it is correct.', C),
    ('$10455$', "First, let's calculate the interest earned on the first CD after six months. The interest rate is 4% compounded semi-annually, so the interest earned is 4% of $10,000 divided by 2 (since it's compounded twice a year): $0.04 \\cdot 10,000 \\cdot \\frac{1}{2} = \\boxed{200}$ So, after six months, Dr. Zaius has $10,000 + $200 = $10,200. Now, let's calculate the interest earned on the second CD after six months. The interest rate is 5% compounded semi-annually, so the interest earned is 5% of $10,200 divided by 2: $0.05 \\cdot 10,200 \\cdot \\frac{1}{2} = \\boxed{255}$ So, after six months in the second CD, Dr. Zaius has $10,200 + $255 = $10,455. Final Answer: The final answer is $10,455$. I hope it is correct.", C),
    ('$[-4,0]$', 'Thus, the values of \\( k \\) for which the quadratic has real roots are: \\[ \\boxed{[-4, 0]} \\]', C),
    ('Factoring the denominator on the left side gives \\[ \\frac{4x}{(x-5)(x-3)}=\\frac{A}{x-3}+\\frac{B}{x-5}. \\]Then, we multiply both sides of the equation by $(x - 3)(x - 5)$ to get \\[ 4x = A(x-5) + B(x-3). \\]If the linear expression $4x$ agrees with the linear expression $A(x-5) + B(x-3)$ at all values of $x$ besides 3 and 5, then the two expressions must agree for $x=3$ and $x=5$ as well. Substituting $x = 3$, we get $12 = -2A$, so $A = -6$. Likewise, we plug in $x = 5$ to solve for $B$. Substituting $x = 5$, we get $20 = 2B$, so $B = 10$. Therefore, $(A, B) = \\boxed{(-6, 10)}.$', 'The solution to the inequality is \\( x \\in (-6, 10) \\). Final Answer: The final answer is \\((-6, 10)\\). I hope it is correct.', C),
    ('$1112112_3$', 'To find the product \\( ab \\) where \\( a = 2012_3 \\) and \\( b = 201_3 \\), we first convert these base-three numbers to base ten. For \\( a = 2012_3 \\): \\[ a = 2 \\cdot 3^3 + 0 \\cdot 3^2 + 1 \\cdot 3^1 + 2 \\cdot 3^0 = 2 \\cdot 27 + 0 \\cdot 9 + 1 \\cdot 3 + 2 \\cdot 1 = 54 + 0 + 3 + 2 = 59_{10} \\] For \\( b = 201_3 \\): \\[ b = 2 \\cdot 3^2 + 0 \\cdot 3^1 + 1 \\cdot 3^0 = 2 \\cdot 9 + 0 \\cdot 3 + 1 \\cdot 1 = 18 + 0 + 1 = 19_{10} \\] Now, calculate the product in base ten: \\[ ab = 59 \\times 19 \\] Perform the multiplication: \\[ 59 \\times 19 = 59 \\times (20 - 1) = 59 \\times 20 - 59 \\times 1 = 1180 - 59 = 1121 \\] Next, convert \\( 1121_{10} \\) to base three. We do this by dividing by 3 and recording the remainders: \\[ 1121 \\div 3 = 373 \\quad \\text{remainder } 2 \\] \\[ 373 \\div 3 = 124 \\quad \\text{remainder } 1 \\] \\[ 124 \\div 3 = 41 \\quad \\text{remainder } 1 \\] \\[ 41 \\div 3 = 13 \\quad \\text{remainder } 2 \\] \\[ 13 \\div 3 = 4 \\quad \\text{remainder } 1 \\] \\[ 4 \\div 3 = 1 \\quad \\text{remainder } 1 \\] \\[ 1 \\div 3 = 0 \\quad \\text{remainder } 1 \\] Reading the remainders from last to first, we find: \\[ 1121_{10} = 1112122_3 \\] Thus, the product \\( ab \\) expressed in the base-three number system is \\(\\boxed{1112122_3}\\).', N),
    ('\\(\\boxed{\\text{C}}\\).', '$\\boxed{\\text{(C)}}.$', C),
    (' So the answer is: \\[ \\boxed{11111111100} \\]', 'is $\\boxed{11,\\! 111,\\! 111,\\! 100}$', C),
    (' So the answer is: \\[ \\boxed{32349} \\]', 'is $\\boxed{32,\\! 349}$', C),
    (' So the answer is: \\[ \\boxed{32349} \\]', 'is $\\boxed{32, 349}$', N),
    ('Thus, the domain of the function \\( f(x) \\) is: \\[ \\boxed{(2, 12) \\cup (12, 102)} \\]', 'Thus, the answer is $x \\in \\boxed{(2,12) \\cup (12,102)}$', C),
    ('$\\text{E}$', '$E$', C),
    ('$\\boxed{1}\\boxed{2}$', '$\\boxed{1,2}$', C),
    ('Setting $x = y = 0,$ we get \\[2f(0) = f(0) - 1,\\]so $f(0) = -1.$ Setting $y = 1,$ we get \\[f(x) + 1 = f(x + 1) - x - 1,\\]so \\[f(x + 1) - f(x) = x + 2.\\]Thus, \\begin{align*} f(2) - f(1) &= 1 + 2, \\\\ f(3) - f(2) &= 2 + 2, \\\\ f(4) - f(3) &= 3 + 2, \\\\ &\\dots, \\\\ f(n) - f(n - 1) &= (n - 1) + 2. \\end{align*}Adding all the equations, we get \\[f(n) - f(1) = 1 + 2 + 3 + \\dots + (n - 1) + 2(n - 1) = \\frac{(n - 1)n}{2} + 2n - 2 = \\frac{n^2 + 3n - 4}{2},\\]so \\[f(n) = \\frac{n^2 + 3n - 2}{2}\\]for all positive integers $n.$ Setting $x = -n$ and $y = n,$ where $n$ is a positive integer, we get \\[f(-n) + f(n) = f(0) + n^2 - 1.\\]Then \\[f(-n) = n^2 - f(n) + f(0) - 1 = n^2 - \\frac{n^2 + 3n - 2}{2} - 2 = \\frac{n^2 - 3n - 2}{2}.\\]Thus, the formula \\[f(n) = \\frac{n^2 + 3n - 2}{2}\\]holds for all integers $n.$ We want to solve $f(n) = n,$ or \\[\\frac{n^2 + 3n - 2}{2} = n.\\]Then $n^2 + 3n - 2 = 2n,$ or $n^2 + n - 2 = 0.$ This factors as $(n - 1)(n + 2) = 0,$ so the solutions are $n = \\boxed{1,-2}.$', "<think> Okay, so I have this functional equation to solve: \\( f(x) + f(y) = f(x + y) - xy - 1 \\), and I'm given that \\( f(1) = 1 \\). I need to find all integers \\( n \\) such that \\( f(n) = n \\). Hmm, functional equations can sometimes be tricky, but maybe I can figure this out step by step. First, let me see if I can find an expression for \\( f(x) \\). Maybe by plugging in specific values for \\( x \\) and \\( y \\), I can get some information about \\( f \\). Let me try setting both \\( x \\) and \\( y \\) to 0. That often simplifies things. So if \\( x = 0 \\) and \\( y = 0 \\), then the equation becomes: \\( f(0) + f(0) = f(0 + 0) - 0 * 0 - 1 \\) Simplifying, that's: \\( 2f(0) = f(0) - 0 - 1 \\) Which simplifies further to: \\( 2f(0) = f(0) - 1 \\) Subtracting \\( f(0) \\) from both sides: \\( f(0) = -1 \\) Alright, so I found that \\( f(0) = -1 \\). That's a start. Now, maybe I can set \\( y = 1 \\) because I know \\( f(1) = 1 \\). Let's set \\( y = 1 \\) and leave \\( x \\) arbitrary. Then we get: \\( f(x) + f(1) = f(x + 1) - x * 1 - 1 \\) Plugging in \\( f(1) = 1 \\): \\( f(x) + 1 = f(x + 1) - x - 1 \\) Solving for \\( f(x + 1) \\): \\( f(x + 1) = f(x) + 1 + x + 1 \\) So, \\( f(x + 1) = f(x) + x + 2 \\) Hmm, that's another recursive relationship. So if I can express \\( f(x + 1) \\) in terms of \\( f(x) \\), maybe I can find a pattern or a general expression for \\( f(x) \\). Let me try to unroll this recursion. Let's suppose I start at some point and iterate this. Let's do that starting from \\( x = 0 \\). First, when \\( x = 0 \\), as we found earlier, \\( f(0) = -1 \\). Then, \\( f(1) = f(0 + 1) = f(0) + 0 + 2 = -1 + 0 + 2 = 1 \\). Well, that checks out because we were given \\( f(1) = 1 \\). Next, let's find \\( f(2) \\). Using the same recursion, \\( f(2) = f(1 + 1) = f(1) + 1 + 2 = 1 + 1 + 2 = 4 \\). Similarly, \\( f(3) = f(2 + 1) = f(2) + 2 + 2 = 4 + 2 + 2 = 8 \\). Wait a second, let me check that again... So \\( f(3) = f(2) + 2 + 2... \\) So from \\( x = 2 \\), do I add 2? Wait, no—wait, actually, the recursion is \\( f(x + 1) = f(x) + x + 2 \\). So for \\( x = 2 \\), \\( f(3) = f(2) + 2 + 2 \\). Yep, that's correct. So continuing... \\( f(4) = f(3 + 1) = f(3) + 3 + 2 = 8 + 3 + 2 = 13 \\) Hmm, so the values so far are: - f(0) = -1 - f(1) = 1 - f(2) = 4 - f(3) = 8 - f(4) = 13 Wait, let me see if this follows a pattern. Let's list them: n: 0, 1, 2, 3, 4 f(n): -1, 1, 4, 8, 13 Looking at these numbers, let me compute the differences between consecutive terms. f(1) - f(0) = 1 - (-1) = 2 f(2) - f(1) = 4 - 1 = 3 f(3) - f(2) = 8 - 4 = 4 f(4) - f(3) = 13 - 8 = 5 Ah, interesting! Each time, the difference increases by 1. So from f(0) to f(1), the difference is 2, then 3, then 4, then 5... So it seems the differences form an arithmetic sequence starting at 2 with a common difference of 1. If this pattern continues, perhaps the function can be expressed as a quadratic function. Let me test that. Let me assume that \\( f(x) \\) is a quadratic function of the form \\( f(x) = ax^2 + bx + c \\). Then maybe I can find coefficients \\( a \\), \\( b \\), and \\( c \\) that satisfy the functional equation. Let me write down that assumption: \\( f(x) = ax^2 + bx + c \\) Now, plugging this into the functional equation: \\( f(x) + f(y) = f(x + y) - xy - 1 \\) Substituting, we get: \\( ax^2 + bx + c + ay^2 + by + c = a(x + y)^2 + b(x + y) + c - xy - 1 \\) Let's simplify both sides. Left side: \\( ax^2 + bx + c + ay^2 + by + c = a(x^2 + y^2) + b(x + y) + 2c \\) Right side: \\( a(x + y)^2 + b(x + y) + c - xy - 1 = a(x^2 + 2xy + y^2) + b(x + y) + c - xy - 1 \\) Simplify: \\( a x^2 + 2a xy + a y^2 + b x + b y + c - xy - 1 \\) Now, set left side equal to right side: \\( a(x^2 + y^2) + b(x + y) + 2c = a x^2 + 2a xy + a y^2 + b x + b y + c - xy - 1 \\) Let me move all terms to the left side to compare: Left minus right: \\( a(x^2 + y^2) + b(x + y) + 2c - [a x^2 + 2a xy + a y^2 + b x + b y + c - xy - 1] = 0 \\) Simplify term by term: First, \\( a x^2 - a x^2 = 0 \\) Similarly, \\( a y^2 - a y^2 = 0 \\) Then, \\( -2a xy \\) because one side has a +0xy and the other has -2a xy Wait, wait, let me clarify: Original left side terms: \\( a x^2 + a y^2 + b x + b y + 2c \\) Subtract right side terms: \\( a x^2 + 2a xy + a y^2 + b x + b y + c - xy - 1 \\) So, subtracting: \\( (a x^2 - a x^2) + (a y^2 - a y^2) + (2c - c) + (b x - b x) + (b y - b y) -2a xy + xy + 1 = 0 \\) Simplify: 0 + 0 + c -2a xy + xy + 1 = 0 So combine like terms: c + (-2a + 1)xy + 1 = 0 This must hold for all real numbers x and y. How can the above equation hold for all x and y? The only way is that each coefficient is zero for the variables, and the constants sum to zero. So, coefficients: 1. For xy: (-2a + 1) must be zero. 2. Constants: c + 1 must be zero. So let's write those equations: 1. -2a + 1 = 0 => a = 1/2 2. c + 1 = 0 => c = -1 So, from this, I know \\( a = 1/2 \\) and \\( c = -1 \\). Now, what about \\( b \\)? Let me see, in the left minus right equation, the coefficients for x and y have canceled out because both sides have terms with \\( b x \\) and \\( b y \\), subtracting each other. So, there's no need to set anything for \\( b \\)? Wait, do I have any equation involving \\( b \\)? It seems in the difference between the left and right sides, the terms involving \\( b x \\) and \\( b y \\) have canceled each other out, meaning there is no condition on \\( b \\) from that step. So, from this examination, it seems that my initial assumption of \\( f(x) = ax^2 + bx + c \\) with \\( a = 1/2 \\), \\( c = -1 \\), and \\( b \\) is still free. Wait, but maybe we can get another condition using \\( f(1) = 1 \\). Given that \\( f(1) = 1 \\), and our general form is \\( f(x) = \\frac{1}{2}x^2 + b x - 1 \\). So, \\( f(1) = \\frac{1}{2}(1)^2 + b (1) - 1 = \\frac{1}{2} + b - 1 = b - \\frac{1}{2} \\) Given that \\( f(1) = 1 \\), set up the equation: \\( b - \\frac{1}{2} = 1 \\Rightarrow b = 1 + \\frac{1}{2} = \\frac{3}{2} \\) So, thus, the function can be written as: \\( f(x) = \\frac{1}{2}x^2 + \\frac{3}{2}x - 1 \\) Let me write that more neatly: \\( f(x) = \\frac{1}{2}x^2 + \\frac{3}{2}x - 1 \\) Simplify: \\( f(x) = \\frac{1}{2}x^2 + \\frac{3}{2}x - 1 \\) Well, let's verify if this satisfies the original functional equation to make sure. Compute \\( f(x) + f(y) \\): \\( \\frac{1}{2}x^2 + \\frac{3}{2}x - 1 + \\frac{1}{2}y^2 + \\frac{3}{2}y - 1 \\) Simplify: \\( \\frac{1}{2}(x^2 + y^2) + \\frac{3}{2}(x + y) - 2 \\) Compare with \\( f(x + y) - xy - 1 \\): First, compute \\( f(x + y) \\): \\( \\frac{1}{2}(x + y)^2 + \\frac{3}{2}(x + y) - 1 \\) Expand: \\( \\frac{1}{2}(x^2 + 2xy + y^2) + \\frac{3}{2}(x + y) - 1 \\) Which is: \\( \\frac{1}{2}x^2 + xy + \\frac{1}{2}y^2 + \\frac{3}{2}x + \\frac{3}{2}y - 1 \\) Subtract \\( xy + 1 \\): \\( f(x + y) - xy -1 = \\frac{1}{2}x^2 + xy + \\frac{1}{2}y^2 + \\frac{3}{2}x + \\frac{3}{2}y - 1 - xy - 1 \\) Simplify: \\( \\frac{1}{2}x^2 + \\frac{1}{2}y^2 + \\frac{3}{2}x + \\frac{3}{2}y - 2 \\) So, \\( f(x + y) - xy - 1 = \\frac{1}{2}(x^2 + y^2) + \\frac{3}{2}(x + y) - 2 \\), which is exactly equal to \\( f(x) + f(y) \\). Therefore, plugging in, it does satisfy the equation. So, that looks good. So we now have an expression for \\( f(x) \\): \\( f(x) = \\frac{1}{2}x^2 + \\frac{3}{2}x - 1 \\) Simplify this further if possible: Combine terms: \\( f(x) = \\frac{x^2 + 3x - 2}{2} \\) Alternatively, it's a quadratic function. Now, I need to find all integers \\( n \\) such that \\( f(n) = n \\). So set: \\( f(n) = n \\) Which is: \\( \\frac{n^2 + 3n - 2}{2} = n \\) Multiply both sides by 2: \\( n^2 + 3n - 2 = 2n \\) Bring all terms to one side: \\( n^2 + 3n - 2 - 2n = 0 \\) Simplify: \\( n^2 + n - 2 = 0 \\) That's a quadratic equation. Let me solve it. Quadratic equation: \\( n^2 + n - 2 = 0 \\) Using the quadratic formula: \\( n = \\frac{-b \\pm \\sqrt{b^2 - 4ac}}{2a} \\), where \\( a = 1 \\), \\( b = 1 \\), \\( c = -2 \\). Compute discriminant: \\( 1^2 - 4*1*(-2) = 1 + 8 = 9 \\) So, \\( n = \\frac{-1 \\pm \\sqrt{9}}{2} = \\frac{-1 \\pm 3}{2} \\) Therefore, 1. \\( n = \\frac{-1 + 3}{2} = \\frac{2}{2} = 1 \\) 2. \\( n = \\frac{-1 - 3}{2} = \\frac{-4}{2} = -2 \\) So the solutions are \\( n = 1 \\) and \\( n = -2 \\). Wait, but these are the integer solutions. So the integers n for which \\( f(n) = n \\) are 1 and -2. Wait, let me double-check with our function \\( f(n) \\): Given \\( f(x) = \\frac{x^2 + 3x - 2}{2} \\), let me plug in 1: \\( f(1) = \\frac{1 + 3 - 2}{2} = \\frac{2}{2} = 1 \\). Correct, since \\( f(1) = 1 \\) was given. Now, plug in -2: \\( f(-2) = \\frac{(-2)^2 + 3*(-2) - 2}{2} = \\frac{4 - 6 - 2}{2} = \\frac{-4}{2} = -2 \\). So, indeed, \\( f(-2) = -2 \\). Looking back at the pattern we saw earlier: We found in the functional equation \\( f(0) = -1 \\), \\( f(1) = 1 \\), \\( f(2) = 4 \\), \\( f(3) = 8 \\), \\( f(4) = 13 \\)... These are all positive integers only at integers 1, 4, 8, 13... But, wait, in our case, the only integer solutions where \\( f(n) = n \\) is at 1 and -2. Wait, let me check with another integer, 2: \\( f(2) = 4 \\), so that's \\( f(2) = 4 \\), which is 4, which is not equal to 2. So n=2 is not a solution. Similarly, n=3: \\( f(3) = 8 \\neq 3 \\), n=4: \\( f(4)=13 \\neq 4 \\), etc. What about negative integers? We saw n=-2: f(-2)= -2. So, that's a fixed point. What about n=-1: \\( f(-1) = \\frac{(-1)^2 + 3*(-1) - 2}{2} = \\frac{1 - 3 - 2}{2} = \\frac{-4}{2} = -2 \\neq -1 \\). n=-3: \\( f(-3) = \\frac{9 + (-9) -2 }{2} = \\frac{-2}{2}= -1 \\neq -3 \\). n=-4: \\( f(-4) = \\frac{16 + (-12) - 2 }{2} = \\frac{2}{2}= 1 \\neq -4 \\). Hmmm, so n=-2 is a solution. So the only integers n where f(n) = n are n =1 and n=-2. Therefore, the integers are 1 and -2. Wait, but let me think again—is that all? Because sometimes functional equations can have more solutions unless restricted. But in this case, since we derived the general solution of the function, which is quadratic, solving \\(f(n) = n\\) gives only quadratic equation, which has at most two solutions (and indeed we found two solutions). So, there are exactly two integers: 1 and -2. Wait, so I think I can be confident the solutions are 1 and -2. **Final Answer** The integers are \\boxed{-2} and \\boxed{1}. </think> Given the functional equation: \\[ f(x) + f(y) = f(x + y) - xy - 1 \\] for all real numbers \\( x \\) and \\( y \\), and knowing that \\( f(1) = 1 \\), we need to find all integers \\( n \\) such that \\( f(n) = n \\). First, by setting \\( x = 0 \\) and \\( y = 0 \\), we find: \\[ 2f(0) = f(0) - 1 \\implies f(0) = -1. \\] Next, setting \\( y = 1 \\) in the functional equation, we get: \\[ f(x) + f(1) = f(x + 1) - x - 1. \\] Given \\( f(1) = 1 \\), this simplifies to: \\[ f(x + 1) = f(x) + x + 2. \\] Using this recursive relationship, we calculate the values of \\( f \\) at several points: \\[ f(1) = 1, \\] \\[ f(2) = 4, \\] \\[ f(3) = 8, \\] \\[ f(4) = 13. \\] We observe that the differences between consecutive values form an arithmetic sequence starting from 2 and increasing by 1 each time. This suggests that \\( f(x) \\) might be a quadratic function. Assuming \\( f(x) \\) is quadratic, we write it as: \\[ f(x) = ax^2 + bx + c. \\] Substituting this into the functional equation and equating coefficients, we find: \\[ a = \\frac{1}{2}, \\] \\[ c = -1, \\] and using \\( f(1) = 1 \\), we determine: \\[ b = \\frac{3}{2}. \\] Thus, the quadratic function is: \\[ f(x) = \\frac{1}{2}x^2 + \\frac{3}{2}x - 1. \\] To find all integers \\( n \\) such that \\( f(n) = n \\), we solve: \\[ \\frac{n^2 + 3n - 2}{2} = n. \\] This simplifies to: \\[ n^2 + n - 2 = 0. \\] Solving this quadratic equation, we find the roots: \\[ n = 1 \\quad \\text{and} \\quad n = -2. \\] Thus, the integers \\( n \\) such that \\( f(n) = n \\) are: \\[ \\boxed{-2} \\quad \\text{and} \\quad \\boxed{1}. \\]", C),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_set_rel_assymetry; the allow_set_relation_comp=True rows: issue 14 asks for inequality vs interval both ways: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-set-rel-assymetry', 'completion', [
    ('$-2 \\\\le x \\\\le 7$', '$x \\in [-2,7]$', C),
    ('$x \\in [-2,7]$', '$-2 \\\\le x \\\\le 7$', C),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_sqrt_precision: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-sqrt-precision', 'completion', [
    ('$4$', '$4\\sqrt{2}$', N),
])

# Rebuilt from huggingface/Math-Verify tests/test_all.py::test_symbols: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-symbols', 'completion', [
    ('$\text{13}$', '$13$', N),
])

# Rebuilt from huggingface/Math-Verify tests/test_boxed.py::test_boxed: (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-boxed', 'completion', [
    ('$\\\\boxed{35 cm} ++++++ \\\\boxed{4}$', '${35 cm,4}$', C),
    (' the answer should be \\\\boxed{004}.\\n\\nBut let me check again: the sum is 2,552,004. The last three digits are 004. Therefore, when divided by 1000, the remainder is 004. So, \\\\boxed{004} is the correct answer.\\n\\n**Final Answer**\\n\\\\boxed{004}', '$004$', C),
    ('SoHi YES.\\n\\n could answer therefore\\\\boxed{840}.,but let me put this after explain.\\n\\n**Final Answer**\\n\\\\boxed{840}', '$840$', C),
])

# Rebuilt from huggingface/Math-Verify tests/test_numina_cases.py::test_numina_cases (NuminaMath golds vs model outputs): (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-numina-cases', 'completion', [
    ('$(37,3,3,13),(17,3,3,7),(3,37,3,13),(3,17,3,7),(3,3,2,3)$', '$\\boxed{(3, 37, 3, 13), (3, 17, 3, 7), (3, 3, 2, 3), (3,17,3,7), (17,3,3,7), (37,3,3,13)}$', C),
    ('$(p,q)=(3,2)$', '$(3,2)$', C),
    ('$(0;0;0),(0;-2;0),(0;0;6),(0;-2;6),(4;0;0),(4;-2;0),(4;0;6),(4;-2;6)$', '\\boxed{(4, 0, 6), (4, -2, 6), (0, 0, 6), (0, -2, 6), (4, 0, 0), (4, -2, 0), (0, 0, 0), (0, -2, 0)}', C),
    ('$1\\leq|z|\\leq \\frac{3}{2}$', '$z \\in \\left[-\\frac{3}{2}, -1\\right] \\cup \\left[1, \\frac{3}{2}\\right]$', C),
    ('$-12;-11;-10;-8;-7;-6$', '$\\boxed{\\{-12, -11, -10, -8, -7, -6\\}}$', C),
    ('$AB=4,CD=5$', '$\\boxed{4, 5}$', C),
    ('$(11,7)or(7,11)$', '$\\boxed{(7,11),\\ (11,7)}$', C),
    ('$S_{MBCN}:S=7:32$', '$\\boxed{7:32}$', C),
    ('$\\frac{NO}{BO}=\\frac{1}{\\sqrt{6}}$', '$\\frac{1}{\\sqrt{6}}$', C),
    ('$p=5,q=2;p=7,q=2$', '$(5,2),(7,2)$', C),
    ('$(p,q,r)=(3,2,7)$', '$(3,2,7)$', C),
    ('$V_{1}:V_{2}=11:21$', '$11:21$', C),
    ('$(2,1),(1,2),(-1,-20),(-20,-1)$', 'solutions are:\n\n\\[\n\\boxed{(1, 2)}, \\boxed{(2, 1)}, \\boxed{(-1, -20)}, \\boxed{(-20, -1)}\n\\]', C),
    ('\\(\\boxed{1}\\) and \\(\\boxed{-2}\\).', '$\\boxed{-2,1}$.', C),
    ('$\\text{odd}$', '$odd$', C),
    ('$\\text{e}$', '$e$', C),
    ('$d$', '$\\text{E}$', N),
    ('$1$ and $2$ and $3$', '$\\boxed{1,2,3}$', C),
    ('$(37,3,3),(17,3,3,7),(3,37,3,13),(3,17,3,7),(3,3,2,3)$', '$\\boxed{(3, 37, 3, 13), (3, 17, 3, 7), (3, 3, 2, 3), (3,17,3,7), (17,3,3,7), (37,3,3,13)}$', N),
    ('$(p,q)=(3,2)$', '$\\boxed{(3, 2)}$', C),
    ('\\boxed{x = -5,\\ p = \\frac{14}{3}} ', '$\\boxed{-5, \\frac{14}{3}}$', C),
    ('\\boxed{a=4,\\,-8,\\,-10}', '$\\boxed{-10,-8,4}$', C),
    ('\\\\boxed{W(n) = 1 \\\\text{ and } W(n) = -1', 'W(x)=1orW(x)=-1', C),
    ('$21,16$ or $11$', '$21,16,11$', C),
    ('\\n\\n\\[ \\boxed{p = -1 \\text{ and } p = \\dfrac{15}{8}} \\]', '$p=-1,p=\\frac{15}{8}$', C),
    ('$0<f(x)<1$', '$(0,1)$', C),
    ('\\(\\boxed{6 \\text{ and } 8}\\)', '$\\boxed{6,8}$', C),
    ('$\\text{Even}$', '$Even$', C),
])

# Rebuilt from huggingface/Math-Verify tests/test_open_thoughts.py::test_open_thoughts (OpenThoughts golds vs model outputs): (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-open-thoughts', 'completion', [
    ('$$\\boxed{2}, \\boxed{3}, \\boxed{5}, \\boxed{7}, \\boxed{13}$$', '$${2, 3, 5, 7, 13}$$', C),
    ('$$f(y) = y$$', '$$f(y) = y$$', C),
    ('$$-793 < a < 10$$', '$$(-793, 10)$$', C),
    ('$$\\text{The midpoints form a regular hexagon}$$', '$$\\text{The midpoints form a regular hexagon}$$', C),
    ('$$a_3 = 2, a_{37} = 19$$', '$$\\boxed{a_{37} = 19, \\quad a_3 = 2}$$', C),
    ('$$(2, 2), (1, 3), (3, 3)$$', '$$\\boxed{(2, 2), (1, 3), (3, 3)}$$', C),
    ('$$(1, +\\infty)$$', '$$(1, +\\infty)$$', C),
    ('$$x = \\frac{1}{2}, x = \\frac{-1 \\pm \\sqrt{13}}{4}$$', '$$\\boxed{x = \\frac{1}{2}, x = \\frac{-1 \\pm \\sqrt{13}}{4}}$$', C),
    ('$$0.06 \\text{ yuan}$$', '$$\\boxed{0.06 \\text{ yuan}}$$', C),
    ('$$(5, 8), (8, 5)$$', '$$\\boxed{(x, y) = (5, 8) \\quad \\text{and} \\quad (8, 5)}$$', C),
    ('$$667$$', '$$\\boxed{667}$$', C),
    ('$$6 \\text{ and } 8$$', '$$\\boxed{6 \\text{ and } 8}$$', C),
    ('$$(2, 2), (6, 2)$$', '$$\\boxed{(2, 2)} \\quad \\text{and} \\quad \\boxed{(6, 2)}$$', C),
    ('$$(98, 2), (99, 503)$$', '$$\\boxed{(98, 2)} \\quad \\text{and} \\quad \\boxed{(99, 503)}$$', C),
    ('$$(3, 3), (1, 1)$$', '$$\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}$$', C),
    ('$$k \\ge 2$$', '$$\\boxed{k \\ge 2}$$', C),
    ('$$k = 45, n = 2$$', '$$\\boxed{k = 45} \\quad \\text{and} \\quad \\boxed{n = 2}$$', C),
    ('$143$', '<think> Alright, let me try to figure out this problem. So, we need to find how many years between 2000 and 3000 inclusive can be written as the sum of two positive integers p and q such that 2p = 5q. The example given is 2016 = 1440 + 576, where 2*1440 = 2880 and 5*576 = 2880, so they are equal. First, I need to understand the relationship between p and q. The equation 2p = 5q implies that p and q are in a specific ratio. Let\'s solve for one variable in terms of the other. If 2p = 5q, then p = (5/2)q. That means p has to be a multiple of 5/2 times q. Since p and q are positive integers, q must be a multiple of 2 to make p an integer. Let\'s denote q = 2k, where k is a positive integer. Then p = (5/2)*(2k) = 5k. So, substituting back, the year can be written as p + q = 5k + 2k = 7k. Therefore, the year must be a multiple of 7. Wait, so that simplifies things. If the year must be a multiple of 7, then the problem reduces to finding how many multiples of 7 are there between 2000 and 3000 inclusive. But let me double-check this reasoning. Starting from 2p = 5q, we have p = (5/2)q. Since p must be an integer, q must be even. Let q = 2k, then p = 5k. So, the sum p + q = 5k + 2k = 7k. Therefore, every year that is a multiple of 7 can be expressed in such a way. Conversely, if a year is a multiple of 7, say N = 7k, then we can set q = 2k and p = 5k, which are integers. So, yes, the problem is equivalent to finding the number of multiples of 7 between 2000 and 3000 inclusive. Therefore, I need to count how many numbers divisible by 7 are in the range [2000, 3000]. To do this, I can find the smallest multiple of 7 in this range and the largest multiple of 7, then compute how many terms are in this arithmetic sequence. Let me first find the smallest multiple of 7 greater than or equal to 2000. Dividing 2000 by 7: 2000 ÷ 7 ≈ 285.714. So, 285 * 7 = 1995, which is less than 2000. The next multiple is 286 * 7 = 2002. Therefore, 2002 is the first multiple of 7 in the range. Now, the largest multiple of 7 less than or equal to 3000. Dividing 3000 by 7: 3000 ÷ 7 ≈ 428.571. So, 428 * 7 = 2996. But 428*7=2996, which is less than 3000. The next multiple would be 429*7=3003, which is over 3000. So, the largest multiple is 2996. Now, the number of terms in the arithmetic sequence from 2002 to 2996, with common difference 7. The formula for the number of terms in an arithmetic sequence is ((last term - first term)/common difference) + 1. So, ((2996 - 2002)/7) + 1 = (994/7) + 1. Let me compute 994 divided by 7. 7*142=994. So, 142 + 1 = 143. Therefore, there are 143 multiples of 7 between 2000 and 3000 inclusive. But wait, let me confirm. If we have terms starting at 2002, each term 7 apart, up to 2996. The difference between 2996 and 2002 is 994. Dividing by 7 gives 142, which means there are 142 intervals of 7, hence 143 terms. That seems right. But let me check with another method. The number of multiples of 7 up to n is floor(n/7). So, the number of multiples up to 3000 is floor(3000/7)=428, as 7*428=2996. The number of multiples up to 1999 is floor(1999/7)=285, since 7*285=1995. So, the number of multiples between 2000 and 3000 inclusive is 428 - 285. But wait, 428 counts up to 2996, which is within 3000. However, 285 counts up to 1995, so the next multiple is 2002. So, the number of multiples from 2002 to 2996 is 428 - 285 = 143. But wait, 428 - 285 = 143? Let me compute 428 - 285. 428 - 200 = 228, 228 - 85 = 143. Yes. So that\'s 143. However, is 2002 included? Because 285 counts up to 1995, so 1995 is the 285th multiple, then the next one is 2002 which is 286th. So, from 286th to 428th multiple, how many terms? 428 - 286 + 1 = 143. Yes, because (428 - 286) = 142, plus 1 is 143. So that confirms the answer is 143. But wait, the problem states \\"between 2000 and 3000 inclusive\\". However, 2002 is the first multiple of 7 in that range. So, if we need to include 2000, but 2000 is not a multiple of 7, so the count remains 143. Therefore, the answer is 143. But let me check the example given. 2016 is in the range. 2016 divided by 7 is 288, so 2016 is the 288th multiple of 7. So, 288 - 285 = 3, but according to the previous count, 428 - 285 = 143. But 2016 is within the range. So, perhaps my initial calculation is correct. Wait, 428 - 285 = 143. But if the first multiple is 2002 (286th multiple), and the last is 2996 (428th multiple), then the number of terms is 428 - 286 + 1 = 143. So, yes. So, 143 is the answer. Wait, but let me test with smaller numbers. Suppose between 7 and 14 inclusive. How many multiples of 7? 7,14. So two numbers. Applying the formula: floor(14/7)=2, floor(6/7)=0, so 2-0=2. Correct. Similarly, between 15 and 21. The multiples are 21. So floor(21/7)=3, floor(14/7)=2, 3-2=1. Correct. So, the formula works when the upper bound is a multiple. If upper bound is not a multiple, like between 15 and 20. The multiples are 21 is beyond, so 14 is the last multiple below 20. Wait, no, 14 is 14, 21 is 21. Wait, between 15 and 20, there are no multiples of 7. So floor(20/7)=2, floor(14/7)=2, 2-2=0. Correct. So, formula works. So in the original problem, floor(3000/7)=428, floor(1999/7)=285. So, 428-285=143. Therefore, the answer is 143. But wait, the example given is 2016, which is 7*288. So, 288 is within the 286 to 428 range. 288-285=3, but in the total count, it\'s 143. So, all multiples from 2002 up to 2996. So, 143 years. Therefore, the answer is 143. So, \\boxed{143} **Final Answer** \\boxed{143} </think> To determine how many years between 2000 and 3000 inclusive can be written as the sum of two positive integers \\( p \\) and \\( q \\) such that \\( 2p = 5q \\), we start by analyzing the relationship between \\( p \\) and \\( q \\). Given \\( 2p = 5q \\), we can express \\( p \\) in terms of \\( q \\): \\( p = \\frac{5}{2}q \\). For \\( p \\) and \\( q \\) to be integers, \\( q \\) must be a multiple of 2. Let \\( q = 2k \\), then \\( p = 5k \\). The sum \\( p + q = 5k + 2k = 7k \\), indicating the year must be a multiple of 7. Next, we need to count the multiples of 7 between 2000 and 3000 inclusive. 1. **Finding the smallest multiple of 7 ≥ 2000**: \\[ \\left\\lceil \\frac{2000}{7} \\right\\rceil = 286 \\quad \\text{(since } 286 \\times 7 = 2002\\text{)} \\] 2. **Finding the largest multiple of 7 ≤ 3000**: \\[ \\left\\lfloor \\frac{3000}{7} \\right\\rfloor = 428 \\quad \\text{(since } 428 \\times 7 = 2996\\text{)} \\] 3. **Counting the number of multiples of 7 between 2002 and 2996**: \\[ \\text{Number of terms} = 428 - 286 + 1 = 143 \\] Thus, the number of years between 2000 and 3000 inclusive that can be written as the sum of two positive integers \\( p \\) and \\( q \\) such that \\( 2p = 5q \\) is \\(\\boxed{143}\\).', C),
    ('$${1,2,3}$$', '\\boxed{1} and \\boxed{2} and \\boxed{3}', C),
    ('$${1,2,3}$$', '\\boxed{1},\\boxed{2},\\boxed{3}', C),
    ('$$|AB|=1$$', '$$1$$', C),
    ('$$A:B=1$$', '$$1$$', C),
    ('$$f(x)=1$$', '$$1$$', C),
    ('$x_{1}=10^{\\frac{-5+\\sqrt{13}}{6}},\\quadx_{2}=10^{\\frac{-5-\\sqrt{13}}{6}}$', '$\\boxed{10^{\\frac{\\sqrt{13} - 5}{6}}} \\quad \\text{and} \\quad \\boxed{10^{-\\frac{5 + \\sqrt{13}}{6}}}$', C),
    ('$y_{1}=-2 x^{2}+4 x+3, y_{2}=3 x^{2}+12 x+10$', '\\($y_1 = \\boxed{-2(x - 1)^2 + 5} \\) and \\( y_2 = \\boxed{3(x + 2)^2 - 2} \\) ', C),
    ('$x_{1}=\\frac{1}{2}+\\frac{31\\sqrt{5}}{216},\\quadx_{2}=\\frac{1}{2}-\\frac{31\\sqrt{5}}{216}$', '$\\boxed{\\dfrac{108 + 31\\sqrt{5}}{216}} \\quad \\text{and} \\quad \\boxed{\\dfrac{108 - 31\\sqrt{5}}{216}}$', C),
    ('\\boxed{1} papers and \\boxed{2} bins', '$\\boxed{1,2}$', C),
    ('\\boxed{1} no no no no no \\boxed{2}', '$\\boxed{1,2}$', N),
])

# Rebuilt from huggingface/Math-Verify tests/test_strict.py::test_strict_variable_comparison (strict=True, the default): (gold, prediction, expected) as published; predictions are whole model outputs.
_group('mv-strict-variable-comparison', 'completion', [
    ('$f(x)$', '$f(y)$', N),
])

# Wrong answers for the public groups that publish none, so that every group can show a false accept.
# Own cases in the style of the group; the percent rows are the 0-verdict rows of
# huggingface/Math-Verify tests/test_all.py::test_percent_notation (commit cf14bc4).
_group("mv-simple-fraction-notation-wrong", "completion", [
    ("10/9", r"\frac{9}{10}", N),
    ("-10/9", r"\frac{10}{9}", N),
])
_group("mv-percent-notation-wrong", "completion", [
    ("$0.28$", "28", N),
    ("$28/100$", "28", N),
    ("$28$", "28/100", N),
    ("$\\frac{28}{100}$", "28", N),
    ("$28*\\frac{1}{100}$", "28", N),
    ("$28\\%$", "27 percent", N),
    ("$28\\%$", "$\\boxed{29 pct}$", N),
])
_group("mv-set-rel-assymetry-wrong", "completion", [
    (r"$x \in [-2,7]$", r"$-2 \le x < 7$", N),
    (r"$-2 \le x \le 7$", r"$x \in (-2,7]$", N),
])


def _twin(category: str, prediction_row: int, gold_row: int) -> None:
    """A published prediction against the gold of another row of its group whose value differs
    (each pair checked by hand): a wrong answer that is a real model output."""
    rows = [case for case in CASES if case[1] == category]
    CASES.append((f"{category}-twin-{prediction_row}-{gold_row}", f"{category}-wrong", "completion",
                  rows[gold_row - 1][3], rows[prediction_row - 1][4], N))


for _category, _pairs in {
    "mv-latex-notation-math": [(1, 2), (6, 7), (7, 8), (8, 9)],  # 2-2p vs a matrix, (3, pi/2) vs 14/3, ...
    "mv-boxed": [(2, 3), (3, 2)],  # 004 vs 840
}.items():
    for _prediction_row, _gold_row in _pairs:
        _twin(_category, _prediction_row, _gold_row)

# id -> why the grader's verdict differs from the expected one (each runs as a strict xfail).
KNOWN_DISAGREEMENTS: dict[str, str] = {
    "mv-complex-math-expressions-5": (
        "not correct: the published gold and prediction hold a form feed where `\\f` of `\\frac` was (a Python "
        "escape in the source); the bare prediction `- rac{7}{4}` reads as prose, the delimited gold as math"
    ),
    "mv-boxed-1": (
        "not correct: the gold `\\boxed{35 cm} ++++++ \\boxed{4}` has boxes joined by `++++++`, not by a separator, "
        "so only its last box (4) is read, as for a prediction that changes its mind; math-verify joins them"
    ),
    "mv-numina-cases-23": "unparsed_gold: the published gold `\\boxed{W(n) = 1 ...` never closes its box",
    "mv-open-thoughts-8": (
        "unparsed_gold: math-verify's LaTeX parser returns nothing for `x = \\frac{-1 \\pm \\sqrt{13}}{4}` inside a "
        "list of equations (its plain-expression fallback, which we never use, evaluates text)"
    ),
}


def _agrees(expected: str, grade: str) -> bool:
    if expected == C:
        return grade == CORRECT
    if expected == U:
        return grade == UNPARSED
    return grade != CORRECT


@pytest.fixture(scope="module")
def verdicts() -> dict[str, tuple[str, str | None, str | None]]:
    """Every case graded once, in two batches (whole completions, bare answers)."""
    results = {}
    with Grader(workers=2, timeout_seconds=3.0) as grader:
        for mode in ("completion", "answer"):
            chosen = [case for case in CASES if case[2] == mode]
            golds, predictions = [case[3] for case in chosen], [case[4] for case in chosen]
            if mode == "completion":
                grades = grader.grade_completions(golds, predictions)
            else:
                grades = grader.grade_answers(golds, predictions)
            results.update({case[0]: (g.grade, g.extracted, g.reason) for case, g in zip(chosen, grades)})
    return results


def _params():
    for case_id, category, mode, gold, prediction, expected in CASES:
        marks = []
        if case_id in KNOWN_DISAGREEMENTS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_DISAGREEMENTS[case_id]))
        yield pytest.param(case_id, gold, prediction, expected, id=case_id, marks=marks)


@pytest.mark.parametrize(("case_id", "gold", "prediction", "expected"), list(_params()))
def test_public_case(verdicts, case_id, gold, prediction, expected):
    grade, extracted, reason = verdicts[case_id]
    assert _agrees(expected, grade), (
        f"gold {gold[:200]!r}, prediction ...{prediction[-200:]!r}: expected {expected}, "
        f"got {grade} ({reason}), extracted {extracted!r}"
    )


def test_case_table_is_well_formed():
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids)) and len(CASES) >= 300
    assert set(KNOWN_DISAGREEMENTS) <= set(ids)
    groups = {case[1].removesuffix("-wrong") for case in CASES}
    wrong_answers = {case[1].removesuffix("-wrong") for case in CASES if case[5] != C}
    assert groups == wrong_answers, f"groups without wrong answers: {groups - wrong_answers}"


def test_agreement_and_no_false_accepts(verdicts):
    false_accepts = [c[0] for c in CASES if c[5] != C and verdicts[c[0]][0] == CORRECT]
    agreeing = sum(_agrees(c[5], verdicts[c[0]][0]) for c in CASES)
    assert false_accepts == []
    assert agreeing / len(CASES) >= 0.98, f"{agreeing}/{len(CASES)} agree"
    assert len(CASES) - agreeing == len(KNOWN_DISAGREEMENTS)
