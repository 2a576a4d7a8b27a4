"""Open questions for the demo ranker, answered at four quality levels: what the checkable
families of ``ranker_data`` cannot teach, since their answers are a single value.

Each family is a small table of things with three facts each (an animal's group, food and
home; a country's language, currency and continent; ...). A prompt asks for one fact or
all three, and its answers are written from the table:

- ``correct`` (level 3): the asked fact and the others, all true;
- ``one_flaw`` (2): the asked fact true, one other fact taken from another row;
- ``fluent_wrong`` (1): the same sentences, but the asked fact (and one more) from
  another row: fluent, on topic, wrong;
- ``off_topic`` (0): the correct answer to another open question (as fluent and as long
  as the right one, so only relevance tells them apart); ``cut_off`` (0): the correct
  answer stopped mid-sentence, as a model that ran out of tokens.

Labels therefore come from the table, and every level is written in the same sentences,
so length and tone say little about the level (a cut-off answer is shorter by design).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

CORRECT, ONE_FLAW, FLUENT_WRONG, OFF = 3, 2, 1, 0


@dataclass(frozen=True)
class _Family:
    name: str
    rows: tuple[tuple[str, str, str, str], ...]  # thing, fact 1, fact 2, fact 3
    sentences: tuple[str, str, str]  # one per fact: "{t}" the thing, "{x}" the fact
    # The same sentences naming the thing, for whichever fact leads the answer.
    leads: tuple[str, str, str]
    # Questions about all facts ("all") or one fact (index): the thing is "{t}".
    questions: dict[str | int, tuple[str, ...]]


_ANIMALS = (
    ("giraffe", "mammal", "leaves from tall acacia trees", "the savannas of Africa"),
    ("polar bear", "mammal", "seals", "the sea ice of the Arctic"),
    ("camel", "mammal", "tough desert plants", "the deserts of North Africa and Asia"),
    ("kangaroo", "marsupial", "grass", "the grasslands of Australia"),
    ("giant panda", "mammal", "bamboo", "the mountain forests of China"),
    ("flamingo", "bird", "shrimp and algae", "shallow salty lakes"),
    ("barn owl", "bird", "mice and voles", "farmland and open woods"),
    ("crocodile", "reptile", "fish and animals that come to drink", "tropical rivers and swamps"),
    ("tree frog", "amphibian", "insects", "wet tropical forests"),
    ("ostrich", "flightless bird", "seeds, plants and insects", "the open plains of Africa"),
    ("fruit bat", "flying mammal", "fruit and nectar", "tropical forests of Asia and Africa"),
    ("sloth", "mammal", "leaves", "the rainforests of Central and South America"),
    ("grey wolf", "mammal", "deer and other large animals", "northern forests and tundra"),
    ("zebra", "mammal", "grass", "the grasslands of East and southern Africa"),
    ("golden eagle", "bird of prey", "rabbits and hares", "mountains and open moorland"),
    ("desert tortoise", "reptile", "grasses and wild flowers", "the deserts of North America"),
    ("octopus", "mollusc", "crabs and shellfish", "rocky sea floors"),
    ("leafcutter ant", "insect", "a fungus it grows on chewed leaves",
     "underground nests in tropical America"),
    ("African elephant", "mammal", "grass, bark and fruit", "the savannas of Africa"),
    ("European rabbit", "mammal", "grass and herbs", "burrows in meadows"),
    ("garden snail", "mollusc", "soft leaves and rotting plants", "damp gardens"),
    ("macaw", "parrot", "nuts, seeds and fruit", "the rainforests of South America"),
    ("lion", "big cat", "zebras, antelopes and buffalo", "the savannas of Africa"),
    ("beaver", "rodent", "bark and water plants", "rivers and lakes of the northern forests"),
    ("koala", "marsupial", "eucalyptus leaves", "the eucalyptus woods of eastern Australia"),
)
_COUNTRIES = (
    ("Japan", "Japanese", "the yen", "Asia"),
    ("Brazil", "Portuguese", "the real", "South America"),
    ("Mexico", "Spanish", "the Mexican peso", "North America"),
    ("Germany", "German", "the euro", "Europe"),
    ("India", "Hindi and English", "the rupee", "Asia"),
    ("Egypt", "Arabic", "the Egyptian pound", "Africa"),
    ("Sweden", "Swedish", "the Swedish krona", "Europe"),
    ("Kenya", "Swahili and English", "the Kenyan shilling", "Africa"),
    ("Thailand", "Thai", "the baht", "Asia"),
    ("Argentina", "Spanish", "the Argentine peso", "South America"),
    ("Poland", "Polish", "the zloty", "Europe"), ("South Korea", "Korean", "the won", "Asia"),
    ("Vietnam", "Vietnamese", "the dong", "Asia"), ("Nigeria", "English", "the naira", "Africa"),
    ("Canada", "English and French", "the Canadian dollar", "North America"),
    ("New Zealand", "English and Maori", "the New Zealand dollar", "Oceania"),
    ("China", "Mandarin Chinese", "the yuan", "Asia"),
    ("Indonesia", "Indonesian", "the rupiah", "Asia"),
    ("Hungary", "Hungarian", "the forint", "Europe"), ("Israel", "Hebrew", "the shekel", "Asia"),
    ("Peru", "Spanish and Quechua", "the sol", "South America"),
    ("Morocco", "Arabic and Berber", "the dirham", "Africa"),
    ("the Czech Republic", "Czech", "the Czech koruna", "Europe"),
    ("Denmark", "Danish", "the Danish krone", "Europe"),
    ("Ethiopia", "Amharic", "the birr", "Africa"),
)
_ORGANS = (
    ("heart", "pumps blood around the body", "in the chest, between the lungs",
     "a muscle that beats about 70 times a minute at rest"),
    ("liver", "cleans toxins out of the blood and makes bile", "in the upper right of the belly",
     "the largest organ inside the body"),
    ("stomach", "mixes food with acid and starts to digest protein",
     "in the upper left of the belly", "a stretchy bag of muscle"),
    ("brain", "controls thought, movement and the senses", "inside the skull",
     "made of billions of nerve cells"),
    ("small intestine", "absorbs nutrients from digested food",
     "between the stomach and the large intestine", "a coiled tube several metres long"),
    ("large intestine", "absorbs water and forms stool", "around the edge of the belly",
     "a wide tube about one and a half metres long"),
    ("pancreas", "makes insulin and digestive juices", "behind the stomach",
     "a gland about fifteen centimetres long"),
    ("skin", "protects the body and helps control its temperature", "all over the body",
     "the largest organ of the body"),
    ("bladder", "stores urine until it is released", "low in the pelvis",
     "a hollow, stretchy bag of muscle"),
    ("spleen", "filters old red blood cells and helps fight infection",
     "in the upper left of the belly, behind the ribs", "about the size of a fist"),
    ("thyroid gland", "makes hormones that set how fast the body uses energy",
     "at the front of the neck", "shaped like a butterfly"),
    ("gallbladder", "stores bile and releases it to digest fat", "just under the liver",
     "a small pear-shaped pouch"),
    ("windpipe", "carries air from the throat to the lungs", "in the neck, in front of the gullet",
     "a tube held open by rings of cartilage"),
    ("gullet", "carries swallowed food down to the stomach", "behind the windpipe",
     "a muscular tube about 25 centimetres long"),
    ("diaphragm", "pulls air into the lungs when it contracts", "under the lungs",
     "a dome-shaped sheet of muscle"),
)
_TOOLS = (
    ("thermometer", "measure temperature", "a liquid or a sensor that reacts to heat",
     "doctors, cooks and weather stations"),
    ("compass", "find which way is north", "a magnetised needle that lines up with the Earth's "
     "magnetic field", "hikers and sailors"),
    ("barometer", "measure air pressure", "a sealed chamber that swells or shrinks",
     "weather forecasters"),
    ("microscope", "see things too small for the eye", "lenses that magnify a thin sample",
     "biologists and doctors"),
    ("telescope", "see distant objects such as stars", "lenses or mirrors that gather light",
     "astronomers"),
    ("stethoscope", "listen to the heart and lungs", "a chest piece and tubes that carry sound",
     "doctors and nurses"),
    ("hammer", "drive nails into wood", "a heavy head swung on a handle",
     "carpenters and builders"),
    ("screwdriver", "turn screws", "a tip shaped to fit the screw head",
     "mechanics and furniture makers"),
    ("handsaw", "cut wood", "a steel blade with sharp teeth", "carpenters"),
    ("spirit level", "check that a surface is level", "an air bubble in a tube of liquid",
     "builders and tilers"),
    ("spanner", "tighten and loosen nuts and bolts", "jaws that grip the nut",
     "mechanics and plumbers"),
    ("stapler", "fasten sheets of paper together", "a metal staple pushed through the paper",
     "office workers"),
    ("anemometer", "measure wind speed", "cups that spin faster as the wind gets stronger",
     "weather stations and sailors"),
    ("hourglass", "measure a fixed amount of time", "sand running from one bulb to the other",
     "cooks and board game players"),
    ("seismometer", "record earthquakes", "a weight that stays still while the ground moves",
     "geologists"),
    ("pH meter", "measure how acidic a liquid is", "an electrode that reacts to hydrogen ions",
     "chemists and pool cleaners"),
    ("tape measure", "measure lengths and distances", "a marked steel ribbon that rolls up",
     "builders and tailors"),
    ("multimeter", "measure voltage, current and resistance", "two probes touched to a circuit",
     "electricians"),
)
_SPORTS = (
    ("basketball", "five", "throw the ball through the other team's hoop", "a ball and two hoops"),
    ("volleyball", "six", "ground the ball on the other side of a high net",
     "a ball and a net"),
    ("ice hockey", "six", "shoot the puck into the other team's goal",
     "skates, sticks and a puck"),
    ("baseball", "nine", "score runs by hitting the ball and running round four bases",
     "a bat, a ball and gloves"),
    ("rugby union", "fifteen", "carry or kick an oval ball over the other team's line",
     "an oval ball and H-shaped posts"),
    ("water polo", "seven", "throw the ball into the other team's goal while swimming",
     "a ball and two floating goals"),
    ("handball", "seven", "throw the ball into the other team's goal",
     "a small ball and two goals"),
    ("netball", "seven", "shoot the ball through a high ring without a backboard",
     "a ball and two rings"),
    ("cricket", "eleven", "score more runs than the other team by batting between the wickets",
     "a bat, a ball and two sets of wickets"),
    ("polo", "four", "hit the ball into the goal while riding a horse",
     "horses, long mallets and a ball"),
    ("curling", "four", "slide heavy stones closest to the centre of a target on the ice",
     "granite stones and brooms"),
    ("field hockey", "eleven", "hit the ball into the other team's goal with a curved stick",
     "sticks and a hard ball"),
    ("lacrosse", "ten", "throw the ball into the goal with a netted stick",
     "netted sticks and a rubber ball"),
    ("korfball", "eight", "throw the ball into a basket on a tall pole",
     "a ball and two baskets on poles"),
)
_DISHES = (
    ("sushi", "Japan", "vinegared rice with raw fish or vegetables", "with soy sauce and wasabi"),
    ("paella", "Spain", "rice cooked with saffron and chicken or seafood",
     "straight from a wide, shallow pan"),
    ("kimchi", "Korea", "fermented cabbage with chilli", "as a side dish with almost every meal"),
    ("pierogi", "Poland", "dumplings filled with potato, cheese or meat",
     "boiled, then fried with onions"),
    ("goulash", "Hungary", "beef stewed with paprika and onions", "hot, often with bread"),
    ("tacos", "Mexico", "corn tortillas folded around a filling", "with salsa and lime"),
    ("hummus", "the Middle East", "chickpeas mashed with tahini and lemon",
     "as a dip with flatbread"),
    ("croissant", "France", "a buttery, flaky pastry", "for breakfast with coffee"),
    ("pho", "Vietnam", "rice noodles in a clear beef or chicken broth",
     "with fresh herbs and bean sprouts"),
    ("borscht", "Ukraine", "a soup of beetroot and vegetables", "with a spoon of sour cream"),
    ("moussaka", "Greece", "layers of aubergine and minced meat under a white sauce",
     "baked and cut into squares"),
    ("risotto", "Italy", "rice cooked slowly in broth until creamy",
     "with parmesan stirred in at the end"),
    ("couscous", "North Africa", "steamed grains of semolina",
     "under a stew of meat and vegetables"),
    ("pad thai", "Thailand", "stir-fried rice noodles with egg and peanuts",
     "with a wedge of lime"),
    ("feijoada", "Brazil", "a stew of black beans and pork", "with rice and orange slices"),
    ("ceviche", "Peru", "raw fish cured in lime juice", "cold, with onion and chilli"),
    ("fondue", "Switzerland", "melted cheese in a shared pot", "with cubes of bread for dipping"),
    ("biryani", "India", "rice layered with spiced meat", "with yoghurt on the side"),
    ("baklava", "Turkey", "thin pastry layered with nuts and honey", "in small diamond pieces"),
    ("poutine", "Canada", "chips topped with cheese curds and gravy", "hot, in a paper tray"),
)

FAMILIES: dict[str, _Family] = {f.name: f for f in (
    _Family("animal", _ANIMALS,
            ("The {t} is a {x}.", "It feeds mainly on {x}.", "It lives in {x}."),
            ("The {t} is a {x}.", "The {t} feeds mainly on {x}.", "The {t} lives in {x}."),
            {"all": ("Tell me about the {t}.", "Give a short description of the {t}.",
                     "I want to learn about the {t}. What should I know?"),
             1: ("What does the {t} eat?", "What is the diet of the {t}?"),
             2: ("Where does the {t} live?", "What is the natural home of the {t}?")}),
    _Family("country", _COUNTRIES,
            ("In {t}, people mainly speak {x}.", "The money used there is {x}.",
             "{T} lies in {x}."),
            ("In {t}, people mainly speak {x}.", "The money used in {t} is {x}.",
             "{T} lies in {x}."),
            {"all": ("Tell me the language, currency and continent of {t}.",
                     "I am travelling to {t}. What language and money should I expect?"),
             0: ("What language do people speak in {t}?", "Which language is spoken in {t}?"),
             1: ("What currency is used in {t}?", "What money do they use in {t}?")}),
    _Family("organ", _ORGANS,
            ("The {t} {x}.", "It is found {x}.", "It is {x}."),
            ("The {t} {x}.", "The {t} is found {x}.", "The {t} is {x}."),
            {"all": ("Describe the {t}.", "Tell me about the human {t}."),
             0: ("What does the {t} do?", "What is the job of the {t} in the body?"),
             1: ("Where in the body is the {t}?",)}),
    _Family("tool", _TOOLS,
            ("{A} {t} is used to {x}.", "It works with {x}.", "It is used by {x}."),
            ("{A} {t} is used to {x}.", "{A} {t} works with {x}.", "{A} {t} is used by {x}."),
            {"all": ("Explain what {a} {t} is.", "Tell me about the {t}."),
             0: ("What is {a} {t} used for?", "Why would someone use {a} {t}?"),
             1: ("How does a {t} work?",)}),
    _Family("sport", _SPORTS,
            ("{T} is played by teams of {x} players.", "The aim is to {x}.",
             "To play you need {x}."),
            ("{T} is played by teams of {x} players.", "The aim of {t} is to {x}.",
             "To play {t} you need {x}."),
            {"all": ("Explain the basics of {t}.", "How is {t} played?"),
             0: ("How many players are in {a} {t} team?",),
             1: ("What is the goal of a game of {t}?", "How do you win at {t}?")}),
    _Family("dish", _DISHES,
            ("{T} comes from {x}.", "It is {x}.", "It is usually served {x}."),
            ("{T} comes from {x}.", "{T} is {x}.", "{T} is usually served {x}."),
            {"all": ("Tell me about {t}.", "Describe the dish {t}."),
             0: ("Where does {t} come from?", "Which country is {t} from?"),
             1: ("What is {t} made of?", "What are the main ingredients of {t}?")}),
)}


@dataclass(frozen=True)
class Answer:
    text: str
    level: int
    kind: str  # correct, one_flaw, fluent_wrong, off_topic, cut_off


@dataclass(frozen=True)
class Question:
    family: str
    key: str
    source: str
    answers: tuple[Answer, ...]  # off_topic is added once every question exists


def _names(thing: str) -> dict[str, str]:
    article = "an" if thing[0].lower() in "aeiou" else "a"
    return {"t": thing, "T": thing[0].upper() + thing[1:], "a": article, "A": article.title()}


def _say(family: _Family, thing: str, facts: Sequence[str], order: Sequence[int]) -> str:
    names = _names(thing)
    return " ".join((family.leads if k == 0 else family.sentences)[i].format(x=facts[i], **names)
                    for k, i in enumerate(order))


def _other(rows: Sequence[tuple[str, ...]], row: tuple[str, ...], fact: int,
           rng: random.Random) -> str:
    """Another row's value for this fact, different from this row's."""
    return rng.choice([r[fact + 1] for r in rows if r[fact + 1] != row[fact + 1]])


def build(family_name: str, rng: random.Random) -> Question:
    family = FAMILIES[family_name]
    row = rng.choice(family.rows)
    asked = rng.choice(list(family.questions))
    thing, facts = row[0], list(row[1:])
    source = rng.choice(family.questions[asked]).format(**_names(thing))
    main = 0 if asked == "all" else int(asked)
    others = [i for i in range(3) if i != main]
    # The asked fact first, then the others in a seeded order; every level the same order.
    order = [main, *rng.sample(others, 2)]
    if asked != "all":
        order = order[:2]  # a one-fact question: the fact and one more detail
    detail = order[1]
    correct = _say(family, thing, facts, order)
    flawed = list(facts)
    flawed[detail] = _other(family.rows, row, detail, rng)
    wrong = list(facts)
    wrong[main] = _other(family.rows, row, main, rng)
    if rng.random() < 0.5:
        wrong[detail] = _other(family.rows, row, detail, rng)
    words = correct.split()
    cut = " ".join(words[:max(2, round(len(words) * rng.uniform(0.3, 0.7)))]).rstrip(".,")
    answers = (Answer(correct, CORRECT, "correct"),
               Answer(_say(family, thing, flawed, order), ONE_FLAW, "one_flaw"),
               Answer(_say(family, thing, wrong, order), FLUENT_WRONG, "fluent_wrong"),
               Answer(cut, OFF, "cut_off"))
    return Question(family_name, f"{asked}:{thing}", source, answers)


def builders() -> dict[str, Callable[[random.Random], Question]]:
    return {name: partial(build, name) for name in FAMILIES}
