"""A small probabilistic language whose latent variables are known at every token.

Documents are sequences of sentences about one topic. The generator records, for every word
it writes, the value of five hidden variables, so features that an SAE finds in a model
trained on this language can be scored against them:

    topic          the document's topic (0..5), one of TOPIC_NAMES
    number         1 singular / 2 plural: the subject whose verb has not come yet, 0 if none
                   (a stack: in "the dog that the cats see runs" it is 2 on "cats", 1 on "see")
    quote          1 inside a quotation, 0 outside
    bracket_depth  how many parentheses are open (0..3)
    list_position  which item of a list is being written (1..6), 0 outside a list

Each label is the state *after* reading its token, i.e. what a causal model must hold at that
position to predict the next one ("(" already has depth 1; the verb that closes an agreement
already has number 0). Grammar sketch, with the probabilities in the constants below:

    document      -> sentence{3..8}
    sentence      -> clause "."
    clause        -> subject predicate
    subject       -> np[push number] ("that" np[push] transitive-verb[pop])? parenthetical?
    predicate     -> intransitive-verb | transitive-verb np parenthetical? | copula "very"? adj
                   | transitive-verb ":" np ("," np)* "and" np         (a list of 2..6 items)
                   | say-verb '"' clause '"'                              (never nested)
    parenthetical -> "(" (np | clause | "very"? adj) parenthetical? ")"  (depth <= 3)
    np            -> determiner "very"? adj? noun   (determiner and noun agree in number)

Verbs agree with their subject ("runs" / "run"); "the" is shared by both numbers, so the
number is only known from the noun on. Nouns, verbs and adjectives come from the topic's
lexicon with probability TOPIC_WORD and from a shared lexicon otherwise, so the topic has to
be carried in the context, not read off the current word. Every document is a pure function
of (seed, split, index): any document can be regenerated on its own, which is what makes
token streams over the language resumable and splittable across ranks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

VARIABLES = ("topic", "number", "quote", "bracket_depth", "list_position")
NOT_APPLICABLE = -1  # label of positions that belong to no document (BOS, separators, padding)
SINGULAR, PLURAL = 1, 2
MAX_BRACKET_DEPTH = 3
MAX_LIST_ITEMS = 6

# Probabilities of the grammar's choices.
TOPIC_WORD = 0.8
SENTENCES = (3, 8)
ADJECTIVE = 0.3
VERY = 0.15
RELATIVE_CLAUSE = 0.15
SUBJECT_PARENTHETICAL = 0.12
OBJECT_PARENTHETICAL = 0.08
NESTED_PARENTHETICAL = 0.3
PREDICATES = {"intransitive": 0.25, "transitive": 0.3, "copula": 0.12, "list": 0.15, "say": 0.18}
LIST_CONTINUES = 0.6  # after the second item, chance of one more
PARENTHETICAL_CONTENT = {"np": 0.5, "clause": 0.3, "adjective": 0.2}

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
PUNCTUATION = (".", ",", ":", '"', "(", ")")
DETERMINERS = {
    SINGULAR: ("the", "a", "this", "every"),
    PLURAL: ("the", "some", "these", "many", "two", "three"),
}
FUNCTION_WORDS = ("that", "and", "very")
COPULA = ("is", "are")
SAY_VERBS = (("says", "say"), ("shouts", "shout"), ("whispers", "whisper"), ("claims", "claim"))


@dataclass(frozen=True)
class Lexicon:
    """Content words; nouns as (singular, plural), verbs as (3rd person singular, plural)."""

    nouns: tuple[tuple[str, str], ...]
    transitive: tuple[tuple[str, str], ...]
    intransitive: tuple[tuple[str, str], ...]
    adjectives: tuple[str, ...]

    def words(self) -> list[str]:
        pairs = (*self.nouns, *self.transitive, *self.intransitive)
        return [w for pair in pairs for w in pair] + list(self.adjectives)


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(p.split("/")) for p in text.split())  # type: ignore[misc]


TOPIC_NAMES = ("animals", "food", "music", "sport", "space", "computers")
TOPICS = (
    Lexicon(
        _pairs(
            "dog/dogs cat/cats horse/horses bird/birds cow/cows fox/foxes rabbit/rabbits "
            "goat/goats mouse/mice wolf/wolves"
        ),
        _pairs("chases/chase bites/bite follows/follow feeds/feed hunts/hunt"),
        _pairs("sleeps/sleep barks/bark runs/run hides/hide"),
        ("furry", "wild", "hungry", "tame", "fast"),
    ),
    Lexicon(
        _pairs(
            "apple/apples cake/cakes pie/pies soup/soups egg/eggs lemon/lemons "
            "plate/plates onion/onions baker/bakers chef/chefs"
        ),
        _pairs("bakes/bake eats/eat tastes/taste cuts/cut serves/serve"),
        _pairs("boils/boil burns/burn cools/cool rises/rise"),
        ("sweet", "salty", "fresh", "warm", "spicy"),
    ),
    Lexicon(
        _pairs(
            "song/songs drum/drums singer/singers band/bands guitar/guitars piano/pianos "
            "note/notes choir/choirs violin/violins drummer/drummers"
        ),
        _pairs("plays/play hears/hear writes/write tunes/tune records/record"),
        _pairs("sings/sing echoes/echo hums/hum rings/ring"),
        ("loud", "quiet", "catchy", "slow", "sharp"),
    ),
    Lexicon(
        _pairs(
            "player/players team/teams ball/balls coach/coaches goal/goals match/matches "
            "runner/runners fan/fans referee/referees trophy/trophies"
        ),
        _pairs("kicks/kick throws/throw wins/win catches/catch passes/pass"),
        _pairs("trains/train jumps/jump cheers/cheer loses/lose"),
        ("strong", "quick", "tired", "proud", "fit"),
    ),
    Lexicon(
        _pairs(
            "cloud/clouds storm/storms star/stars planet/planets moon/moons wind/winds "
            "comet/comets rocket/rockets pilot/pilots astronaut/astronauts"
        ),
        _pairs("orbits/orbit lights/light crosses/cross circles/circle watches/watch"),
        _pairs("shines/shine glows/glow drifts/drift falls/fall"),
        ("bright", "dark", "distant", "cold", "huge"),
    ),
    Lexicon(
        _pairs(
            "computer/computers program/programs screen/screens user/users file/files "
            "server/servers robot/robots key/keys coder/coders chip/chips"
        ),
        _pairs("compiles/compile stores/store sends/send deletes/delete loads/load"),
        _pairs("crashes/crash boots/boot beeps/beep updates/update"),
        ("digital", "smart", "broken", "remote", "modern"),
    ),
)
SHARED = Lexicon(
    _pairs(
        "man/men woman/women child/children friend/friends teacher/teachers thing/things "
        "neighbour/neighbours"
    ),
    _pairs("sees/see likes/like finds/find wants/want needs/need"),
    _pairs("waits/wait smiles/smile leaves/leave stays/stay"),
    ("big", "small", "old", "new", "good", "red"),
)


def _inflections(pairs: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    return {form: pair for pair in pairs for form in pair}


_LEXICONS = (*TOPICS, SHARED)
# Every noun / verb form -> its (singular, plural) pair; a form's number is its index + 1.
NOUN_FORMS = _inflections([pair for lexicon in _LEXICONS for pair in lexicon.nouns])
VERB_FORMS = _inflections(
    [*SAY_VERBS, COPULA]
    + [pair for lexicon in _LEXICONS for pair in (*lexicon.transitive, *lexicon.intransitive)]
)


def vocabulary() -> list[str]:
    """Every token of the language, special tokens first; the order fixes the token ids."""
    words = [*SPECIAL_TOKENS, *PUNCTUATION, *FUNCTION_WORDS, *COPULA]
    for number in (SINGULAR, PLURAL):
        words += [d for d in DETERMINERS[number] if d not in words]
    words += [w for pair in SAY_VERBS for w in pair] + SHARED.words()
    for lexicon in TOPICS:
        words += lexicon.words()
    if len(set(words)) != len(words):
        raise AssertionError("the language's vocabulary has a word in two places")
    return words


@dataclass
class Document:
    words: list[str]
    labels: dict[str, list[int]]  # variable -> one value per word

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass
class _Writer:
    """Writes words while tracking the hidden state that labels them."""

    rng: random.Random
    topic: int
    words: list[str] = field(default_factory=list)
    labels: dict[str, list[int]] = field(default_factory=lambda: {v: [] for v in VARIABLES})
    pending: list[int] = field(default_factory=list)  # numbers of subjects awaiting their verb
    quote: int = 0
    depth: int = 0
    item: int = 0

    def emit(self, word: str) -> None:
        self.words.append(word)
        state = (
            self.topic,
            self.pending[-1] if self.pending else 0,
            self.quote,
            self.depth,
            self.item,
        )
        for name, value in zip(VARIABLES, state, strict=True):
            self.labels[name].append(value)

    # ---------------------------------------------------------------- word choice

    def lexicon(self) -> Lexicon:
        return TOPICS[self.topic] if self.rng.random() < TOPIC_WORD else SHARED

    def adjective(self) -> None:
        if self.rng.random() < VERY:
            self.emit("very")
        self.emit(self.rng.choice(self.lexicon().adjectives))

    def noun_phrase(self, number: int, subject: bool) -> None:
        self.emit(self.rng.choice(DETERMINERS[number]))
        if self.rng.random() < ADJECTIVE:
            self.adjective()
        noun = self.rng.choice(self.lexicon().nouns)[number - 1]
        if subject:
            self.pending.append(number)
        self.emit(noun)

    def verb(self, forms: tuple[str, str]) -> None:
        number = self.pending.pop()
        self.emit(forms[number - 1])

    def number(self) -> int:
        return self.rng.choice((SINGULAR, PLURAL))

    # ---------------------------------------------------------------- phrases

    def sentence(self) -> None:
        self.clause(allow_quote=True)
        self.emit(".")

    def clause(self, allow_quote: bool) -> None:
        number = self.number()
        self.noun_phrase(number, subject=True)
        if self.rng.random() < RELATIVE_CLAUSE:
            self.emit("that")
            self.noun_phrase(self.number(), subject=True)
            self.verb(self.rng.choice(self.lexicon().transitive))
        if self.rng.random() < SUBJECT_PARENTHETICAL:
            self.parenthetical(number)
        self.predicate(allow_quote and self.quote == 0)

    def predicate(self, allow_quote: bool) -> None:
        kinds = [k for k in PREDICATES if allow_quote or k != "say"]
        kind = self.rng.choices(kinds, weights=[PREDICATES[k] for k in kinds])[0]
        if kind == "intransitive":
            self.verb(self.rng.choice(self.lexicon().intransitive))
        elif kind == "transitive":
            self.verb(self.rng.choice(self.lexicon().transitive))
            number = self.number()
            self.noun_phrase(number, subject=False)
            if self.rng.random() < OBJECT_PARENTHETICAL:
                self.parenthetical(number)
        elif kind == "copula":
            self.verb(COPULA)
            self.adjective()
        elif kind == "list":
            self.verb(self.rng.choice(self.lexicon().transitive))
            self.enumeration()
        else:
            self.verb(self.rng.choice(SAY_VERBS))
            self.quote = 1
            self.emit('"')
            self.clause(allow_quote=False)
            self.quote = 0
            self.emit('"')

    def enumeration(self) -> None:
        items = 2
        while items < MAX_LIST_ITEMS and self.rng.random() < LIST_CONTINUES:
            items += 1
        self.item = 1
        self.emit(":")
        for index in range(1, items + 1):
            if index > 1:
                self.item = index
                self.emit("and" if index == items else ",")
            self.noun_phrase(self.number(), subject=False)
        self.item = 0

    def parenthetical(self, head_number: int) -> None:
        if self.depth >= MAX_BRACKET_DEPTH:
            return
        self.depth += 1
        self.emit("(")
        kinds = list(PARENTHETICAL_CONTENT)
        kind = self.rng.choices(kinds, weights=list(PARENTHETICAL_CONTENT.values()))[0]
        if kind == "np":  # an appositive agrees with the noun it describes
            self.noun_phrase(head_number, subject=False)
        elif kind == "clause":
            self.clause(allow_quote=False)
        else:
            self.adjective()
        if self.rng.random() < NESTED_PARENTHETICAL:
            self.parenthetical(head_number)
        self.depth -= 1
        self.emit(")")


def generate_document(seed: int, split: str, index: int) -> Document:
    """Document `index` of the corpus (seed, split); the same arguments give the same words."""
    # A string seed is hashed with SHA-512 by `random`, so it is stable across processes.
    rng = random.Random(f"{seed}/{split}/{index}")
    writer = _Writer(rng, topic=rng.randrange(len(TOPICS)))
    for _ in range(rng.randint(*SENTENCES)):
        writer.sentence()
    return Document(writer.words, writer.labels)


def label_names(variable: str) -> dict[int, str]:
    """Readable names of a variable's non-default values, for reports and indicators."""
    if variable == "topic":
        return dict(enumerate(TOPIC_NAMES))
    if variable == "number":
        return {SINGULAR: "singular", PLURAL: "plural"}
    if variable == "quote":
        return {1: "inside"}
    if variable == "bracket_depth":
        return {d: str(d) for d in range(1, MAX_BRACKET_DEPTH + 1)}
    if variable == "list_position":
        return {i: str(i) for i in range(1, MAX_LIST_ITEMS + 1)}
    raise KeyError(f"unknown variable '{variable}' (known: {', '.join(VARIABLES)})")


def indicators(labels: dict[str, object]) -> dict[str, object]:
    """Binary features derived from the integer labels, one per variable value.

    Names read `variable=value` (e.g. `topic=music`, `number=plural`, `bracket_depth=2`).
    Accepts tensors or numpy arrays of labels; positions labelled NOT_APPLICABLE are False.
    """
    out: dict[str, object] = {}
    for variable, values in labels.items():
        for value, name in label_names(variable).items():
            out[f"{variable}={name}"] = values == value
    return out
