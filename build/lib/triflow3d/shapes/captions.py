"""Captions from templates: a noun phrase (size, colour, pattern, category synonym) plus part phrases."""

from __future__ import annotations

from typing import Final

import numpy as np

from triflow3d.shapes.categories import Draft, Phrase
from triflow3d.shapes.palette import colour_word

TEMPLATES: Final[tuple[str, ...]] = (
    "{a_np}{with_}",
    "{a_np}{with_}",  # the plain form is the most common
    "{a_np}",
    "{np}{with_}",
    "a 3d model of {a_np}{with_}",
    "{a_np} that has {phrases}",
    "{a_noun} in {colour}{with_}",  # plain objects only
)
PATTERN_WORDS: Final[dict[str, tuple[str, ...]]] = {
    "stripes": ("striped", "stripy"),
    "checker": ("checkered", "checked"),
    "wood": ("wooden", "wood"),
}
SIZE_WORDS: Final[dict[str, tuple[str, ...]]] = {"short": ("short", "low"), "tall": ("tall", "high")}
_AN_WORDS: Final[tuple[str, ...]] = ("suv",)  # consonant-spelled words read with a vowel sound


def with_article(phrase: str) -> str:
    first = phrase.split(" ", 1)[0]
    an = first[:1] in "aeiou" or first in _AN_WORDS
    return ("an " if an else "a ") + phrase


def _pick(words: tuple[str, ...], rng: np.random.Generator, p_first: float = 0.5) -> str:
    if len(words) == 1 or rng.random() < p_first:
        return words[0]
    return str(words[int(rng.integers(1, len(words)))])


def render_phrase(ph: Phrase, region_colours: dict[str, str], main: str, rng: np.random.Generator) -> str:
    """Fill ``{c}`` with the region's colour word (half the time, and only if it differs from the main one)."""
    colour = region_colours.get(ph.region or "", main)
    c = colour_word(colour, rng) + " " if colour != main and rng.random() < 0.5 else ""
    text = ph.text.format(c=c)
    return with_article(text) if ph.article else text


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _noun_phrase(
    draft: Draft, colour: str, pattern: str, pattern_colour: str | None, rng: np.random.Generator, noun: str
) -> str:
    words = []
    if draft.size in SIZE_WORDS and rng.random() < 0.5:
        words.append(_pick(SIZE_WORDS[draft.size], rng))
    cw = colour_word(colour, rng)
    if pattern in ("stripes", "checker") and pattern_colour and rng.random() < 0.5:
        cw = f"{cw} and {colour_word(pattern_colour, rng)}"
    if not (pattern == "wood" and colour == "brown" and rng.random() < 0.5):
        words.append(cw)
    if pattern != "plain":
        words.append(_pick(PATTERN_WORDS[pattern], rng, 0.7))
    return " ".join([*words, noun])


def compose_caption(
    draft: Draft,
    colour: str,
    pattern: str,
    pattern_colour: str | None,
    region_colours: dict[str, str],
    rng: np.random.Generator,
) -> str:
    """One caption for a drafted object; all randomness comes from ``rng`` (the caption stream)."""
    noun = _pick(draft.nouns, rng)
    k = min(int(rng.choice(3, p=(0.2, 0.5, 0.3))), len(draft.phrases))
    chosen = sorted(rng.choice(len(draft.phrases), size=k, replace=False).tolist()) if k else []
    phrases = [render_phrase(draft.phrases[i], region_colours, colour, rng) for i in chosen]
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    if ("{phrases}" in template and not phrases) or ("{colour}" in template and pattern != "plain"):
        template = TEMPLATES[0]
    np_ = _noun_phrase(draft, colour, pattern, pattern_colour, rng, noun)
    return template.format(
        a_np=with_article(np_),
        np=np_,
        a_noun=with_article(noun),
        colour=colour_word(colour, rng),
        with_=" with " + _join(phrases) if phrases else "",
        phrases=_join(phrases) if phrases else "",
    )
