"""Synthetic long-context documents for livekv's own small models (byte-level, no downloads).

Each document is filler prose with facts ("needles") hidden at random depths, ending in a question whose answer
is one of the facts. Task families:
  passkey     "The pass key is 71432. Remember it." ... "What is the pass key? The pass key is 71432."
  multikey    several "The value of key <word> is <number>." ... "What is the value of key <word>? ..."
  vartrack    "VAR ab = 12345." chains "VAR cd = VAR ab." ... "What is the value of VAR cd? VAR cd = 12345."
  multivalue  one key with 2-4 values, "The value of key <word> is <number>." each; the question asks for all of
              them: "What is the list of values of key <word>? The values of key <word> are 12345, 67890."
              (values in document order)
  commonword  aggregation, no filler: a list of words ("apple, lotus, apple, ...") in which 3 words each recur far
              more often than any other; "What is the list of the 3 most common words above? The 3 most common
              words are apple, cobalt, lotus." (in alphabetical order: a fixed order over the 30 known words, which
              a small model learns, unlike the order of first appearance, which it did not in 12 minutes)
The same generator (same seed) serves training here and evaluation in livekv (see tools/train/make_eval_set.py).
livekv's C++ generator (eval/tasks.h) produces the same families from the same vocabulary and templates (not the
same random draws); eval/testdata/synthetic_tasks_fixture.json, written by make_eval_set.py --fixture, pins them.
"""
import random

SUBJECTS = ["The river", "A farmer", "The old clock", "Every child", "The quiet town", "Her brother", "The ship",
            "A small bird", "The teacher", "The market", "Our neighbor", "The mountain road", "The library",
            "A gentle wind", "The baker", "The young doctor", "The garden", "Each morning", "The captain",
            "A distant bell"]
VERBS = ["walked past", "looked at", "remembered", "carried", "followed", "painted", "listened to", "found",
         "opened", "waited near", "talked about", "cleaned", "built", "watched", "visited", "described",
         "repaired", "counted", "crossed", "forgot"]
OBJECTS = ["the green field", "an empty house", "the long bridge", "a wooden box", "the busy station",
           "the blue door", "a heavy stone", "the narrow street", "an old letter", "the warm kitchen",
           "the high tower", "a broken cart", "the silver lake", "the evening train", "a paper map",
           "the stone wall", "the open window", "a quiet song", "the northern hill", "a basket of apples"]
ENDINGS = ["before the rain began", "while the sun went down", "after a long day", "without a word",
           "in the early light", "as the bells rang", "on the way home", "during the winter",
           "with great care", "for the last time", "near the harbor", "under the old trees"]
WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "maple", "candle", "orbit", "violet", "copper",
         "lantern", "meadow", "falcon", "harbor", "willow", "ember", "glacier", "saffron", "quartz", "thistle",
         "juniper", "cobalt", "marble", "sparrow", "tundra", "walnut", "zephyr", "canyon", "lotus"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"

# The exact text of every fact, question and answer ({placeholders} filled with str.format).
TEMPLATES = {
    "sentence": "{subject} {verb} {object} {ending}. ",
    "passkey_needle": "The pass key is {key}. Remember it. {key} is the pass key. ",
    "passkey_question": "What is the pass key? The pass key is",
    "passkey_answer": " {key}.",
    "multikey_needle": "The value of key {name} is {value}. ",
    "multikey_question": "What is the value of key {name}? The value of key {name} is",
    "multikey_answer": " {value}.",
    "vartrack_first": "VAR {var} = {value}. ",
    "vartrack_next": "VAR {var} = VAR {previous}. ",
    "vartrack_question": "What is the value of VAR {var}? VAR {var} =",
    "vartrack_answer": " {value}.",
    "multivalue_needle": "The value of key {name} is {value}. ",
    "multivalue_question": "What is the list of values of key {name}? The values of key {name} are",
    "multivalue_answer": " {values}.",
    "commonword_question": "What is the list of the {k} most common words above? The {k} most common words are",
    "commonword_answer": " {words}.",
    "list_separator": ", ",
    "list_end": ". ",
}

# The families the committed model (models/tiny) was trained on: make_document draws from these by default.
TRAINED_FAMILIES = ("passkey", "multikey", "vartrack")
ALL_FAMILIES = TRAINED_FAMILIES + ("multivalue", "commonword")

MULTIVALUE_VALUES = (2, 4)   # values of the one key (inclusive range)
COMMONWORD_K = 3             # frequent words asked for
COMMONWORD_P = 0.4           # probability that a list entry is one of the frequent words


def sentence(rng):
    return TEMPLATES["sentence"].format(subject=rng.choice(SUBJECTS), verb=rng.choice(VERBS),
                                        object=rng.choice(OBJECTS), ending=rng.choice(ENDINGS))


def filler(rng, n_bytes):
    out = []
    size = 0
    while size < n_bytes:
        s = sentence(rng)
        out.append(s)
        size += len(s)
    return out


def number(rng):
    return str(rng.randint(10000, 99999))


def insert_needles(rng, sentences, needles):
    # Place each needle before a random sentence, keeping the needles' relative order.
    slots = sorted(rng.randint(0, len(sentences)) for _ in needles)
    out = list(sentences)
    for offset, (slot, needle) in enumerate(zip(slots, needles)):
        out.insert(slot + offset, needle)
    return "".join(out)


def word_list(rng, n_bytes):
    """commonword: (list text, the frequent words in alphabetical order)."""
    common = rng.sample(WORDS, COMMONWORD_K)
    others = [w for w in WORDS if w not in common]
    words = []
    size = 0
    while size < n_bytes:
        w = rng.choice(common) if rng.random() < COMMONWORD_P else rng.choice(others)
        words.append(w)
        size += len(w) + len(TEMPLATES["list_separator"])
    # The frequent words must be strictly the most frequent: top up the rarest of them until they are.
    counts = {w: words.count(w) for w in WORDS}
    while min(counts[w] for w in common) <= max(counts[w] for w in others):
        w = min(common, key=lambda c: (counts[c], common.index(c)))
        words.append(w)
        counts[w] += 1
    return TEMPLATES["list_separator"].join(words) + TEMPLATES["list_end"], sorted(common)


def make_document(rng, n_bytes, task=None, families=TRAINED_FAMILIES):
    """Returns (prompt, answer): the model reads prompt and should continue with answer.

    Without `task`, the family is drawn from `families` (by default the three the committed model was trained on;
    pass ALL_FAMILIES to train on every family)."""
    task = task or rng.choice(list(families))
    if task not in ALL_FAMILIES:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(ALL_FAMILIES)}")
    t = TEMPLATES
    if task == "commonword":
        text, common = word_list(rng, n_bytes)
        return (text + t["commonword_question"].format(k=len(common)),
                t["commonword_answer"].format(words=t["list_separator"].join(common)))
    body = filler(rng, n_bytes)
    if task == "passkey":
        key = number(rng)
        text = insert_needles(rng, body, [t["passkey_needle"].format(key=key)])
        return text + t["passkey_question"], t["passkey_answer"].format(key=key)
    if task == "multikey":
        names = rng.sample(WORDS, rng.randint(2, 6))
        values = [number(rng) for _ in names]
        needles = [t["multikey_needle"].format(name=k, value=v) for k, v in zip(names, values)]
        rng.shuffle(needles)
        text = insert_needles(rng, body, needles)
        i = rng.randrange(len(names))
        return text + t["multikey_question"].format(name=names[i]), t["multikey_answer"].format(value=values[i])
    if task == "multivalue":
        name = rng.choice(WORDS)
        values = []
        count = rng.randint(*MULTIVALUE_VALUES)
        while len(values) < count:
            v = number(rng)
            if v not in values:
                values.append(v)
        text = insert_needles(rng, body, [t["multivalue_needle"].format(name=name, value=v) for v in values])
        return (text + t["multivalue_question"].format(name=name),
                t["multivalue_answer"].format(values=t["list_separator"].join(values)))
    # vartrack: a chain of assignments
    chain = ["".join(rng.sample(LETTERS, 2)) for _ in range(rng.randint(2, 4))]
    value = number(rng)
    needles = [t["vartrack_first"].format(var=chain[0], value=value)] + [
        t["vartrack_next"].format(var=chain[j], previous=chain[j - 1]) for j in range(1, len(chain))]
    text = insert_needles(rng, body, needles)
    return text + t["vartrack_question"].format(var=chain[-1]), t["vartrack_answer"].format(value=value)
