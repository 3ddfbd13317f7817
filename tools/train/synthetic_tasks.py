"""Synthetic long-context documents for livekv's own small models (byte-level, no downloads).

Each document is filler prose with facts ("needles") hidden at random depths, ending in a question whose answer
is one of the facts. Tasks:
  passkey    "The pass key is 71432. Remember it." ... "What is the pass key? The pass key is 71432."
  multikey   several "The value of key <word> is <number>." ... "What is the value of key <word>? ..."
  vartrack   "VAR ab = 12345." chains "VAR cd = VAR ab." ... "What is the value of VAR cd? VAR cd = 12345."
The same generator (same seed) serves training here and evaluation in livekv (see tools/train/make_eval_set.py).
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


def sentence(rng):
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}. "


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


def make_document(rng, n_bytes, task=None):
    """Returns (prompt, answer): the model reads prompt and should continue with answer."""
    task = task or rng.choice(["passkey", "multikey", "vartrack"])
    body = filler(rng, n_bytes)
    if task == "passkey":
        key = number(rng)
        text = insert_needles(rng, body, [f"The pass key is {key}. Remember it. {key} is the pass key. "])
        return text + "What is the pass key? The pass key is", f" {key}."
    if task == "multikey":
        names = rng.sample(WORDS, rng.randint(2, 6))
        values = [number(rng) for _ in names]
        needles = [f"The value of key {k} is {v}. " for k, v in zip(names, values)]
        rng.shuffle(needles)
        text = insert_needles(rng, body, needles)
        i = rng.randrange(len(names))
        return text + f"What is the value of key {names[i]}? The value of key {names[i]} is", f" {values[i]}."
    # vartrack: a chain of assignments
    chain = ["".join(rng.sample(LETTERS, 2)) for _ in range(rng.randint(2, 4))]
    value = number(rng)
    needles = [f"VAR {chain[0]} = {value}. "] + [f"VAR {chain[j]} = VAR {chain[j - 1]}. " for j in range(1, len(chain))]
    text = insert_needles(rng, body, needles)
    return text + f"What is the value of VAR {chain[-1]}? VAR {chain[-1]} =", f" {value}."
