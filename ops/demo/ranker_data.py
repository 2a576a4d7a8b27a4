"""Prompts with checkable answers, and candidates right or wrong in the ways small LLMs
are: the training and held-out data of the demo ranker, made offline from a seed.

Every candidate states an answer (or none: a refusal, a restated question); it is right
exactly when that answer equals the prompt's, so labels come from the arithmetic, the
unit table or the fact table, never from which template wrote the text. Right and wrong
answers are written in the same styles (bare, a sentence, worked reasoning, chatty), so
length and tone say nothing about correctness: a verbose right answer meets a short wrong
one as often as the reverse.

Families: ``arithmetic``, ``compare``, ``convert`` (units), ``count`` (letters, words),
``order`` (sort, reverse), ``facts`` (capitals, element symbols), ``sequence`` (days,
months, letters, numbers). Each prompt has a ``key`` naming what it asks (the numbers,
the country, ...): splits are by key, so a rephrasing of a held-out question never
appears in training.

Open questions (``GRADED_FAMILIES``, written by ``ranker_graded``: animals, countries'
languages and money, organs, tools, sports, dishes) have four quality levels instead of
right and wrong: correct, one flaw, fluent but wrong, off-topic or cut off. Every
candidate has a level (``Prompt.quality``): on the checkable families a right answer is
3, the family's own mistake 1 (a fluent wrong answer) and a generic failure 0, so
training pairs teach one order across all families.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import product

from ops.demo import ranker_graded
from workers.ranking.evaluation import ListExample, PairExample
from workers.ranking.training import TrainPair

FAMILIES = ("arithmetic", "compare", "convert", "count", "order", "facts", "sequence")
GRADED_FAMILIES = tuple(ranker_graded.FAMILIES)
ALL_FAMILIES = FAMILIES + GRADED_FAMILIES


@dataclass(frozen=True)
class Candidate:
    text: str
    answer: str | None  # what it states, normalised; None: it gives no answer
    kind: str  # the style of a right answer, or the error of a wrong one
    level: int | None = None  # open questions: 3 correct ... 0 off-topic or cut off


@dataclass(frozen=True)
class Prompt:
    family: str
    key: str
    source: str
    answer: str
    candidates: tuple[Candidate, ...]

    def is_correct(self, candidate: Candidate) -> bool:
        if candidate.level is not None:
            return candidate.level == ranker_graded.CORRECT
        return candidate.answer == self.answer

    def quality(self, candidate: Candidate) -> int:
        """3 right, 2 one flaw, 1 fluent but wrong, 0 no answer, off-topic or cut off."""
        if candidate.level is not None:
            return candidate.level
        if self.is_correct(candidate):
            return ranker_graded.CORRECT
        return ranker_graded.OFF if candidate.kind in GENERIC_KINDS else ranker_graded.FLUENT_WRONG


# Phrasings of an answer: "{x}" is the value, other fields are the question's terms.
Styles = Sequence[str]


@dataclass(frozen=True)
class _Question:
    """One question before candidates are written: its right answer, the wrong answers
    a model plausibly gives (error name -> value), and how answers are phrased."""

    family: str
    key: str
    source: str
    answer: str
    wrong: dict[str, str]
    styles: Styles
    fields: dict[str, str]


def _say(style: str, value: str, fields: dict[str, str]) -> str:
    return style.format(x=value, **fields)


# ---- families ------------------------------------------------------------------------------

_OPS: dict[str, tuple[str, str, Callable[[int, int], int]]] = {
    "plus": ("+", "add", lambda a, b: a + b),
    "minus": ("-", "subtract", lambda a, b: a - b),
    "times": ("×", "multiply", lambda a, b: a * b),
}


def _arithmetic(rng: random.Random) -> _Question:
    op = rng.choice(list(_OPS))
    a, b = rng.randint(2, 49), rng.randint(2, 49)
    if op == "minus" and b > a:
        a, b = b, a
    sign, _, fn = _OPS[op]
    templates = {
        "plus": [f"What is {a} plus {b}?", f"Add the two numbers.\n{a} and {b}",
                 f"Compute {a} + {b}."],
        "minus": [f"What is {a} minus {b}?", f"Subtract {b} from {a}.",
                  f"Compute {a} - {b}."],
        "times": [f"What is {a} times {b}?", f"Multiply {a} by {b}.",
                  f"Compute {a} × {b}."],
    }[op]
    value = fn(a, b)
    other = rng.choice([o for o in _OPS if o != op])
    wrong = {"off_by_one": str(value + rng.choice((-1, 1))),
             "off_by_ten": str(value + rng.choice((-10, 10))),
             "wrong_operation": str(_OPS[other][2](a, b)),
             "echoed_operand": str(rng.choice((a, b)))}
    expr = f"{a} {sign} {b}"
    styles = ["{x}", "The answer is {x}.", "{expr} = {x}",
              "Let's work it out: {expr} = {x}. So the answer is {x}.",
              "Sure! {a} {op} {b} equals {x}. Let me know if you need anything else."]
    return _Question("arithmetic", f"{a}{op}{b}", rng.choice(templates), str(value), wrong,
                     styles, {"expr": expr, "a": str(a), "b": str(b), "op": op})


def _compare(rng: random.Random) -> _Question:
    a, b = rng.sample(range(2, 999), 2)
    kind = rng.choice(("larger", "smaller", "yes_no"))
    if kind == "yes_no":
        source = f"Is {a} greater than {b}? Answer yes or no."
        answer, other = ("yes", "no") if a > b else ("no", "yes")
        styles = ["{x}", "The answer is {x}.", "Comparing {a} and {b}: the answer is {x}."]
        return _Question("compare", f"{a}>{b}", source, answer, {"flipped": other}, styles,
                         {"a": str(a), "b": str(b)})
    value, other_value = (max(a, b), min(a, b)) if kind == "larger" else (min(a, b), max(a, b))
    source = rng.choice([f"Which is {kind}, {a} or {b}?",
                         f"Which number is {kind}: {a} or {b}?"])
    styles = ["{x}", "{x} is {kind}.", "The {kind} number is {x}.",
              "Comparing {a} and {b}, {x} is the {kind} one.",
              "Good question! The {kind} of the two is {x}."]
    slip = rng.choice((100, 10) if value < 110 else (-100, 100, 10))  # stays positive
    wrong = {"flipped": str(other_value), "digit_slip": str(value + slip)}
    return _Question("compare", f"{kind}{min(a, b)},{max(a, b)}", source, str(value), wrong,
                     styles, {"a": str(a), "b": str(b), "kind": kind})


_UNITS = [("metres", "centimetres", 100), ("kilometres", "metres", 1000),
          ("kilograms", "grams", 1000), ("hours", "minutes", 60),
          ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7),
          ("litres", "millilitres", 1000), ("feet", "inches", 12), ("years", "months", 12)]


def _convert(rng: random.Random) -> _Question:
    src, dst, factor = rng.choice(_UNITS)
    n = rng.randint(2, 19)
    source = rng.choice([f"How many {dst} are in {n} {src}?", f"Convert {n} {src} to {dst}.",
                         f"{n} {src} is how many {dst}?"])
    bad_factor = rng.choice([f for f in (10, 24, 60, 100, 1000, 12, 7) if f != factor])
    wrong = {"wrong_factor": str(n * bad_factor), "added_not_multiplied": str(n + factor),
             "unconverted": str(n)}
    # A worked answer with the wrong factor states that factor, as a model that misremembers
    # the unit would.
    styles = ["{x}", "{x} {dst}", "{n} {src} is {x} {dst}.",
              "There are {f} {dst} in one of the {src}, so {n} × {f} = {x} {dst}.",
              "Happy to help! {n} {src} equals {x} {dst}."]
    return _Question("convert", f"{n}{src}>{dst}", source, str(n * factor), wrong, styles,
                     {"n": str(n), "src": src, "dst": dst, "f": str(factor),
                      "bad_f": str(bad_factor)})


_WORDS = ("strawberry", "banana", "apple", "mississippi", "committee", "bookkeeper", "balloon",
          "pepper", "letter", "coffee", "cabbage", "success", "grammar", "parallel", "tomorrow",
          "giraffe", "assessment", "raspberry", "referee", "address", "accommodate", "umbrella",
          "engineer", "necessary")
_SENTENCE_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while",
                   "old", "friends", "share", "warm", "bread", "near", "quiet", "rivers", "under",
                   "bright", "morning", "skies")


def _count(rng: random.Random) -> _Question:
    if rng.random() < 0.6:
        word = rng.choice(_WORDS)
        letter = rng.choice(sorted(set(word)))
        value = word.count(letter)
        source = rng.choice([f"How many times does the letter '{letter}' appear in '{word}'?",
                             f"Count the letter {letter} in the word {word}."])
        wrong = {"off_by_one": str(value + (1 if value == 1 else rng.choice((-1, 1)))),
                 "counted_letters": str(len(word))}
        styles = ["{x}", "The letter '{letter}' appears {x} times.",
                  "Spelling out {word}, I count {x} of the letter {letter}.",
                  "Sure! There are {x} {letter}'s in {word}."]
        return _Question("count", f"{letter}@{word}", source, str(value), wrong, styles,
                         {"letter": letter, "word": word})
    words = rng.sample(_SENTENCE_WORDS, rng.randint(4, 9))
    text = " ".join(words)
    source = f"How many words are in this sentence?\n{text}"
    styles = ["{x}", "The sentence has {x} words.", "Counting them one by one: {x} words.",
              "Sure! That sentence contains {x} words."]
    wrong = {"off_by_one": str(len(words) + rng.choice((-1, 1))),
             "counted_characters": str(len(text.replace(" ", "")))}
    return _Question("count", f"words@{text}", source, str(len(words)), wrong, styles, {})


_ITEMS = ("pear", "apple", "mango", "banana", "cherry", "lemon", "grape", "peach", "plum", "melon",
          "kiwi", "orange", "fig", "olive", "river", "stone", "cloud", "forest", "desert",
          "island", "valley", "meadow", "harbor", "canyon")


def _order(rng: random.Random) -> _Question:
    words = rng.sample(_ITEMS, rng.randint(4, 6))
    task = rng.choice(("sort", "reverse"))
    shown = ", ".join(words)
    if task == "sort":
        right = sorted(words)
        source = rng.choice([f"Sort these words alphabetically.\n{shown}",
                             f"Put these words in alphabetical order: {shown}"])
        mistakes = {"reverse_sorted": sorted(words, reverse=True), "unchanged": words}
    else:
        right = words[::-1]
        source = rng.choice([f"Reverse the order of these words: {shown}",
                             f"List these words in reverse order.\n{shown}"])
        mistakes = {"sorted_instead": sorted(words), "unchanged": words}
    dropped = list(right)
    del dropped[rng.randrange(len(dropped))]
    swapped = list(right)
    i = rng.randrange(len(swapped) - 1)
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    mistakes.update({"dropped_word": dropped, "swapped_pair": swapped})
    wrong = {k: ", ".join(v) for k, v in mistakes.items()}
    styles = ["{x}", "Here they are: {x}.", "In order: {x}",
              "Sure! Here is the list:\n{x}\nLet me know if you need more help."]
    return _Question("order", f"{task}:{','.join(sorted(words))}", source, ", ".join(right),
                     wrong, styles, {})


# country, capital, a larger or better-known city that is not the capital
_CAPITALS = [
    ("France", "Paris", "Lyon"), ("Germany", "Berlin", "Munich"), ("Italy", "Rome", "Milan"),
    ("Spain", "Madrid", "Barcelona"), ("Japan", "Tokyo", "Osaka"),
    ("Canada", "Ottawa", "Toronto"), ("Australia", "Canberra", "Sydney"),
    ("Brazil", "Brasilia", "Rio de Janeiro"), ("India", "New Delhi", "Mumbai"),
    ("China", "Beijing", "Shanghai"), ("Russia", "Moscow", "Saint Petersburg"),
    ("Egypt", "Cairo", "Alexandria"), ("Turkey", "Ankara", "Istanbul"),
    ("the United Kingdom", "London", "Manchester"), ("Mexico", "Mexico City", "Guadalajara"),
    ("Argentina", "Buenos Aires", "Cordoba"), ("South Africa", "Pretoria", "Johannesburg"),
    ("Nigeria", "Abuja", "Lagos"), ("Kenya", "Nairobi", "Mombasa"),
    ("Switzerland", "Bern", "Zurich"), ("the Netherlands", "Amsterdam", "Rotterdam"),
    ("Belgium", "Brussels", "Antwerp"), ("Portugal", "Lisbon", "Porto"),
    ("Greece", "Athens", "Thessaloniki"), ("Poland", "Warsaw", "Krakow"),
    ("Sweden", "Stockholm", "Gothenburg"), ("Norway", "Oslo", "Bergen"),
    ("Finland", "Helsinki", "Tampere"), ("Denmark", "Copenhagen", "Aarhus"),
    ("Ireland", "Dublin", "Cork"), ("Austria", "Vienna", "Salzburg"),
    ("the Czech Republic", "Prague", "Brno"), ("Hungary", "Budapest", "Debrecen"),
    ("South Korea", "Seoul", "Busan"), ("Vietnam", "Hanoi", "Ho Chi Minh City"),
    ("Thailand", "Bangkok", "Chiang Mai"), ("Indonesia", "Jakarta", "Surabaya"),
    ("Pakistan", "Islamabad", "Karachi"), ("Morocco", "Rabat", "Casablanca"),
    ("New Zealand", "Wellington", "Auckland"), ("Chile", "Santiago", "Valparaiso"),
    ("Peru", "Lima", "Cusco"), ("Colombia", "Bogota", "Medellin"),
    ("Saudi Arabia", "Riyadh", "Jeddah"), ("Iran", "Tehran", "Isfahan"),
    ("the United States", "Washington, D.C.", "New York City"),
]
# element, symbol, the symbol a guess from its English name gives
_SYMBOLS = [
    ("gold", "Au", "Go"), ("silver", "Ag", "Si"), ("iron", "Fe", "Ir"), ("sodium", "Na", "So"),
    ("potassium", "K", "P"), ("lead", "Pb", "Le"), ("copper", "Cu", "Co"), ("tin", "Sn", "Ti"),
    ("mercury", "Hg", "Me"), ("tungsten", "W", "Tu"), ("helium", "He", "H"),
    ("oxygen", "O", "Ox"), ("carbon", "C", "Ca"), ("nitrogen", "N", "Ni"),
    ("calcium", "Ca", "C"), ("zinc", "Zn", "Zi"), ("chlorine", "Cl", "C"),
    ("magnesium", "Mg", "Ma"), ("aluminium", "Al", "A"), ("neon", "Ne", "N"),
]


def _facts(rng: random.Random) -> _Question:
    if rng.random() < 0.7:
        country, capital, city = rng.choice(_CAPITALS)
        other = rng.choice([c for _, c, _ in _CAPITALS if c != capital])
        source = rng.choice([f"What is the capital of {country}?",
                             f"Name the capital city of {country}.",
                             f"Which city is the capital of {country}?"])
        styles = ["{x}", "The capital of {country} is {x}.", "{x} is the capital.",
                  "{country}'s capital city is {x}, which is also where its government sits.",
                  "Great question! The capital of {country} is {x}."]
        return _Question("facts", f"capital:{country}", source, capital,
                         {"largest_city": city, "other_country": other}, styles,
                         {"country": country})
    element, symbol, guess = rng.choice(_SYMBOLS)
    other = rng.choice([s for _, s, _ in _SYMBOLS if s not in (symbol, guess)])
    source = rng.choice([f"What is the chemical symbol for {element}?",
                         f"Give the element symbol of {element}."])
    styles = ["{x}", "The symbol for {element} is {x}.", "{element}: {x}",
              "The chemical symbol of {element} is {x}, as on the periodic table."]
    return _Question("facts", f"symbol:{element}", source, symbol,
                     {"guessed_from_name": guess, "other_element": other}, styles,
                     {"element": element})


_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")


def _sequence(rng: random.Random) -> _Question:
    kind = rng.choice(("day", "month", "letter", "number"))
    step = rng.choice((1, -1))
    word = "after" if step == 1 else "before"
    series: Sequence[str]
    if kind == "number":
        n = rng.randint(10, 998)
        series = [str(i) for i in range(n - 3, n + 4)]
        i = 3
        source = f"What number comes {word} {n}?"
    else:
        series = {"day": _DAYS, "month": _MONTHS,
                  "letter": string.ascii_lowercase}[kind]
        i = rng.randrange(1, len(series) - 1)  # keeps the neighbours unambiguous
        thing = f"'{series[i]}'" if kind == "letter" else series[i]
        source = (f"Which letter comes {word} {thing} in the alphabet?" if kind == "letter"
                  else f"What {kind} comes {word} {thing}?")
    answer = series[(i + step) % len(series)]
    wrong = {"wrong_direction": series[(i - step) % len(series)], "repeated": series[i]}
    if kind != "letter" or 1 < i < len(series) - 2:
        wrong["skipped_one"] = series[(i + 2 * step) % len(series)]
    styles = ["{x}", "It is {x}.", "The answer is {x}.",
              "Counting {word} {item}, the next one is {x}."]
    return _Question("sequence", f"{kind}{word}{series[i]}", source, answer, wrong, styles,
                     {"word": word, "item": series[i]})


_BUILDERS: dict[str, Callable[[random.Random], _Question]] = {
    "arithmetic": _arithmetic, "compare": _compare, "convert": _convert, "count": _count,
    "order": _order, "facts": _facts, "sequence": _sequence,
}

_NO_ANSWER = ["I'm sorry, but I can't help with that.", "I don't know.",
              "That is a great question! Let me think about it.",
              "As an AI language model, I cannot be sure of the answer."]
_RESTATE = ["You asked: {q}", "Question: {q}\nAnswer:", "{q}", "Let me restate the task. {q}"]

# Failures a small model shows on any question; the rest are each family's own mistakes.
GENERIC_KINDS = ("no_answer", "restated_question", "truncated", "repetition",
                 "answered_another_question")


# ---- candidates ----------------------------------------------------------------------------

def _phrase(question: _Question, value: str, rng: random.Random,
            style: str | None = None) -> str:
    style = style if style is not None else rng.choice(question.styles)
    fields = dict(question.fields)
    if question.family == "convert" and value != question.answer and "{f}" in style:
        # A worked wrong conversion shows the wrong factor it used, not the right one.
        n = int(question.fields["n"])
        if value == str(n * int(question.fields["bad_f"])):
            fields["f"] = question.fields["bad_f"]
        else:
            style = "{n} {src} is {x} {dst}."
    return _say(style, value, fields)


def _answer_at(text: str, answer: str) -> re.Match[str] | None:
    """The answer as a whole word: "4" is not stated by "42"."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text)


def _states(text: str, answer: str) -> bool:
    return _answer_at(text, answer) is not None


def _generic(question: _Question, rng: random.Random,
             foreign: Sequence[tuple[str, str]]) -> list[Candidate]:
    out = [Candidate(rng.choice(_NO_ANSWER), None, "no_answer"),
           Candidate(rng.choice(_RESTATE).format(q=question.source), None,
                     "restated_question")]
    # A worked right answer cut off before it gets to the answer (max tokens reached).
    worked = _phrase(question, question.answer, rng,
                     rng.choice([s for s in question.styles if s != "{x}"]))
    found = _answer_at(worked, question.answer)
    if found is not None and found.start() >= 12:
        out.append(Candidate(worked[:found.start()].rstrip(), None, "truncated"))
    words = question.source.split()
    loop = " ".join(words[:rng.randint(2, 4)] * rng.randint(4, 7))
    if not _states(loop, question.answer):
        out.append(Candidate(loop, None, "repetition"))
    for text, answer in foreign:
        if answer != question.answer and not _states(text, question.answer):
            out.append(Candidate(text, answer, "answered_another_question"))
            break
    return out


def _candidates(question: _Question, rng: random.Random, n_right: int, n_wrong: int,
                foreign: Sequence[tuple[str, str]], p_generic: float,
                ) -> tuple[Candidate, ...]:
    right_styles = rng.sample(list(question.styles), min(n_right, len(question.styles)))
    out = [Candidate(_phrase(question, question.answer, rng, s), question.answer,
                     "right:" + str(question.styles.index(s))) for s in right_styles]
    own = [Candidate(_phrase(question, v, rng), v, k)
           for k, v in question.wrong.items() if v != question.answer]
    generic = _generic(question, rng, foreign)
    rng.shuffle(own)
    rng.shuffle(generic)
    texts = {c.text for c in out}
    while len(out) < n_right + n_wrong and (own or generic):
        pool = generic if (rng.random() < p_generic and generic) or not own else own
        candidate = pool.pop()
        if candidate.text not in texts:  # another question's answer can read the same
            texts.add(candidate.text)
            out.append(candidate)
    rng.shuffle(out)
    return tuple(out)


def make_prompts(n: int, seed: int = 0, families: Iterable[str] = FAMILIES,
                 n_right: int = 2, n_wrong: int = 3, p_generic: float = 0.5,
                 ) -> list[Prompt]:
    """``n`` prompts with distinct keys, families in turn, the same for the same seed.

    Each has ``n_right`` right answers in different styles and ``n_wrong`` wrong ones,
    each wrong one a failure any model shows (``GENERIC_KINDS``) with probability
    ``p_generic``, else one of the family's own mistakes.
    """
    chosen = list(families)
    unknown = sorted(set(chosen) - set(ALL_FAMILIES))
    if unknown or not chosen:
        raise ValueError(f"unknown families {unknown}; choose from {ALL_FAMILIES}")
    rng = random.Random(seed)
    graded = ranker_graded.builders()
    questions: list[_Question | ranker_graded.Question] = []
    seen: set[str] = set()
    # Small families (facts, sequence) run out of distinct keys: stop asking them.
    misses = dict.fromkeys(chosen, 0)
    turn = 0
    while len(questions) < n:
        live = [f for f in chosen if misses[f] < 200]
        if not live:
            raise ValueError(f"only {len(questions)} distinct prompts exist for {chosen}")
        family = live[turn % len(live)]
        turn += 1
        q = graded[family](rng) if family in graded else _BUILDERS[family](rng)
        if q.key in seen:
            misses[family] += 1
            continue
        seen.add(q.key)
        questions.append(q)
    foreign = [(_phrase(q, q.answer, rng), q.answer) if isinstance(q, _Question)
               else (q.answers[0].text, q.answers[0].text) for q in questions]
    # An open question's off-topic answer is another open question's correct answer:
    # as fluent and as long as its own, so only relevance to the question tells them apart.
    fluent = [(q.answers[0].text, q.answers[0].text) for q in questions
              if isinstance(q, ranker_graded.Question)]
    prompts = []
    for q in questions:
        if isinstance(q, ranker_graded.Question):
            prompts.append(_graded_prompt(q, rng, fluent if len(fluent) > 1 else foreign))
            continue
        others = [f for f in rng.sample(foreign, min(8, len(foreign))) if f[1] != q.answer]
        prompts.append(Prompt(q.family, q.key, q.source, q.answer,
                              _candidates(q, rng, n_right, n_wrong, others, p_generic)))
    return prompts


def _graded_prompt(q: ranker_graded.Question, rng: random.Random,
                   foreign: Sequence[tuple[str, str]]) -> Prompt:
    """The four levels, plus another question's answer (off-topic) and a generic failure
    (no answer, the question restated), all level 0 but the first three."""
    correct = q.answers[0].text
    thing = q.key.split(":", 1)[1].lower()
    off = next(t for t, _ in (rng.choice(foreign) for _ in range(1000))
               if thing not in t.lower())
    generic = rng.choice([_Generic(rng.choice(_NO_ANSWER), "no_answer"),
                          _Generic(rng.choice(_RESTATE).format(q=q.source),
                                   "restated_question")])
    cands = [Candidate(a.text, a.text if a.level == ranker_graded.CORRECT else None, a.kind,
                       a.level) for a in q.answers]
    cands += [Candidate(off, None, "off_topic", ranker_graded.OFF),
              Candidate(generic.text, None, generic.kind, ranker_graded.OFF)]
    rng.shuffle(cands)
    return Prompt(q.family, q.key, q.source, correct, tuple(cands))


@dataclass(frozen=True)
class _Generic:
    text: str
    kind: str


def is_heldout(prompt: Prompt, fraction: float) -> bool:
    """A stable choice by the prompt's key: a question is held out in every run and for
    every sample size, whatever else was generated."""
    digest = hashlib.sha256(f"{prompt.family}:{prompt.key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split(prompts: Sequence[Prompt], heldout_fraction: float = 0.2,
          heldout_family: str | None = None) -> tuple[list[Prompt], list[Prompt],
                                                     list[Prompt]]:
    """(train, held-out prompts of trained families, the held-out family's prompts)."""
    train: list[Prompt] = []
    test: list[Prompt] = []
    unseen: list[Prompt] = []
    for p in prompts:
        if p.family == heldout_family:
            unseen.append(p)
        elif is_heldout(p, heldout_fraction):
            test.append(p)
        else:
            train.append(p)
    return train, test, unseen


def train_pairs(prompts: Iterable[Prompt], pairs_per_prompt: int = 4,
                seed: int = 0) -> list[TrainPair]:
    """Random (better, worse) pairs of each prompt by quality level, as PairRM samples a
    few per example."""
    rng = random.Random(seed)
    out: list[TrainPair] = []
    for p in prompts:
        options = [(a, b) for a, b in product(p.candidates, p.candidates)
                   if p.quality(a) > p.quality(b)]
        for a, b in rng.sample(options, min(pairs_per_prompt, len(options))):
            out.append(TrainPair(p.source, a.text, b.text))
    return out


def eval_lists(prompts: Iterable[Prompt]) -> list[ListExample]:
    """Each prompt's candidates with their quality level as reference: ``evaluate`` then
    judges every pair of different levels and whether the top-ranked answer is right."""
    return [ListExample(p.source, [c.text for c in p.candidates],
                        [float(p.quality(c)) for c in p.candidates])
            for p in prompts]


def eval_pairs(prompts: Iterable[Prompt], seed: int = 0) -> list[PairExample]:
    """Every (right, wrong) pair of each prompt, the right one in a random slot."""
    rng = random.Random(seed)
    out: list[PairExample] = []
    for p in prompts:
        for a, b in product(p.candidates, p.candidates):
            if p.is_correct(a) and not p.is_correct(b):
                first = rng.random() < 0.5
                out.append(PairExample(p.source, *((a.text, b.text) if first
                                                   else (b.text, a.text)), first))
    return out
