"""Generate the embedded default task: single-digit arithmetic and short word problems, checkable answers.

    python data/make_data.py   # writes data/train.jsonl, data/test.jsonl and data/test_rephrased.jsonl

Five families of problems on single digits: a + b, a - b, a x b, a one-step word problem (+, - or x), and
a + b + c. Single digits because SmolLM2-135M (Q4) fails even 10 + 1: these put its greedy held-out
accuracy near 20 %, with room to learn. Each family is asked in several phrasings (TRAIN_TEMPLATES), so
that what training teaches is arithmetic and an answer format rather than one sentence pattern.

- train.jsonl / test.jsonl: the TRAIN_TEMPLATES phrasings; per family, 30 distinct questions are held out
  for test and never appear in train.
- test_rephrased.jsonl: the same operations and number ranges in other phrasings and other word-problem
  stories (REPHRASED_TEMPLATES, other names and objects): none of its templates is ever trained on. It
  tells whether a run learned something that carries over, or a style for the training generator's wording.

Every row has the record format used for real datasets: question, answer (a plain integer string),
solution (a short reference solution ending in \\boxed{answer}, used by the CoT critic and the expert
baseline), plus its family and template number.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

FAMILIES = ["a+b", "a-b", "axb", "story", "a+b+c"]
# {a} {b} {c}: the numbers; {name} {thing}: a story's person and objects. A story template names its operation.
TRAIN_TEMPLATES = {
    "a+b": ["What is {a} + {b}?", "Compute {a} + {b}.", "What is the sum of {a} and {b}?", "Add {a} and {b}.",
            "{a} plus {b} is what number?"],
    "a-b": ["What is {a} - {b}?", "Compute {a} - {b}.", "What is {a} minus {b}?", "Subtract {b} from {a}.",
            "What number is {b} less than {a}?"],
    "axb": ["What is {a} x {b}?", "Compute {a} * {b}.", "What is {a} times {b}?", "Multiply {a} by {b}.",
            "What is the product of {a} and {b}?"],
    "story": [("+", "{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"),
              ("+", "There are {a} {thing} in a box and {b} {thing} on the table. How many {thing} are there in all?"),
              ("-", "{name} has {a} {thing} and gives {b} of them away. How many {thing} does {name} have left?"),
              ("x", "{name} has {a} bags with {b} {thing} in each bag. How many {thing} does {name} have?")],
    "a+b+c": ["What is {a} + {b} + {c}?", "Compute {a} + {b} + {c}.", "What is the sum of {a}, {b} and {c}?",
              "Add {a}, {b} and {c}."],
}
REPHRASED_TEMPLATES = {
    "a+b": ["Calculate: {a} + {b} =", "Find {a} plus {b}.", "If you add {b} to {a}, what number do you get?",
            "How much is {a} and {b} together?"],
    "a-b": ["Calculate: {a} - {b} =", "Take {b} away from {a}. What is left?", "Find {a} take away {b}.",
            "How much is {a} decreased by {b}?"],
    "axb": ["Calculate: {a} * {b} =", "How much is {a} multiplied by {b}?", "Find {b} groups of {a}.",
            "What do you get when you multiply {a} and {b}?"],
    "story": [("+", "A baker made {a} {thing} in the morning and {b} {thing} in the afternoon. How many {thing} "
                    "did the baker make?"),
              ("+", "There were {a} {thing} on a shelf. {name} put {b} more {thing} on it. How many {thing} are on "
                    "the shelf now?"),
              ("-", "A jar held {a} {thing}. {name} took out {b}. How many {thing} are still in the jar?"),
              ("x", "A garden has {a} rows with {b} {thing} in each row. How many {thing} are in the garden?")],
    "a+b+c": ["Calculate: {a} + {b} + {c} =", "Find the total of {a}, {b} and {c}.",
              "{name} scored {a} points, then {b} points, then {c} points. How many points is that in all?"],
}
TRAIN_WORDS = (["Ann", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kemi", "Liam"],
               ["apples", "marbles", "stickers", "books", "pencils", "coins", "cards", "shells", "stamps", "cookies"])
REPHRASED_WORDS = (["Maya", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera"],
                   ["cupcakes", "tulips", "buttons", "muffins", "carrots", "candles", "ribbons", "plums"])
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b}
FAMILY_OP = {"a+b": "+", "a-b": "-", "axb": "x", "a+b+c": "++"}  # a story template names its own


def problem(family: str, rng: random.Random, templates: dict = TRAIN_TEMPLATES, words: tuple = TRAIN_WORDS) -> dict:
    t = rng.randrange(len(templates[family]))
    op, text = templates[family][t] if family == "story" else (FAMILY_OP[family], templates[family][t])
    a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
    if op == "-":
        a = b + rng.randint(1, 9)  # a positive difference of single digits
    ans = a + b + c if op == "++" else OPS[op](a, b)
    sol = f"{a} + {b} = {a + b}, and {a + b} + {c} = {ans}." if op == "++" else f"{a} {op} {b} = {ans}."
    q = text.format(a=a, b=b, c=c, name=rng.choice(words[0]), thing=rng.choice(words[1]))
    return {"question": q, "answer": str(ans), "solution": f"{sol} The answer is \\boxed{{{ans}}}.",
            "family": family, "template": t}


def distinct(family: str, n: int, rng: random.Random, **kw) -> list[dict]:
    """Up to n problems of a family with distinct question texts."""
    rows, seen = [], set()
    for _ in range(50 * n):
        row = problem(family, rng, **kw)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
        if len(rows) == n:
            break
    return rows


def make_splits(n_train: int, n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Per family: distinct questions, the first n_test held out for test; no test question is trained on."""
    rng, train, test = random.Random(seed), [], []
    for family in FAMILIES:
        rows = distinct(family, n_train + n_test, rng)
        test += rows[:n_test]
        train += rows[n_test:]
    rng.shuffle(train)
    return train, test


def make_rephrased(n: int, seed: int) -> list[dict]:
    """n questions per family in the phrasings and story words that training never sees."""
    rng = random.Random(seed + 1)
    return [r for family in FAMILIES for r in distinct(family, n, rng, templates=REPHRASED_TEMPLATES,
                                                       words=REPHRASED_WORDS)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n_train", type=int, default=200, help="train questions per family (at most)")
    ap.add_argument("--n_test", type=int, default=30, help="held-out questions per family")
    ap.add_argument("--n_rephrased", type=int, default=20, help="rephrased held-out questions per family")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args()
    train, test = make_splits(args.n_train, args.n_test, args.seed)
    for split, rows in (("train", train), ("test", test), ("test_rephrased", make_rephrased(args.n_rephrased, args.seed))):
        with open(Path(args.out) / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"wrote {len(rows)} rows to {args.out}/{split}.jsonl")


if __name__ == "__main__":
    main()
