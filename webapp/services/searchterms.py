"""What search sees of a text: folded words, CJK bigrams and dictionary words of Thai, Lao,
Khmer and Burmese, the same on SQLite and PostgreSQL.

Both databases index the terms made here, not their own tokenizers' (FTS5's trigram needs 3
characters and SQLite 3.40's unicode61 strips no accents; PostgreSQL's parser classes CJK
by locale), so they find the same things:

- text is folded: NFKC (full-width letters, half-width kana, ligatures), case folded, and
  accents dropped from Latin and Greek letters (é, Å, ø, ß, ά → e, a, o, ss, α); Cyrillic
  ё is е, a stress mark is dropped (приве́т, ѝ → привет, и) and Ukrainian ґ is г, but й,
  ї and ў stay letters of their own; the apostrophe letter ʼ is the apostrophe ' (which
  separates words) and the soft hyphen is dropped; Arabic and Hebrew vowel points and
  cantillation are dropped (most text is written without them: كَتَبَ is كتب, שָׁלוֹם is
  שלום), Arabic's stretching tatweel too, and Arabic alef with hamza or madda is alef, alef
  maksura ى is yeh ي and teh marbuta ة is heh ه (as Lucene's Arabic normalizer folds them);
  other scripts keep their marks (Japanese が stays が, Hindi's vowel signs stay in their
  word), and Thai, Lao, Khmer and Burmese are not folded at all, not even by NFKC (which
  spells Lao ໝ as ຫມ, and ICU's dictionary then cuts ໝາ, "dog", into ຫ and ມາ);
  Chinese characters are compared in Simplified, one by one (OpenCC's t2s: 天氣 is 天气),
  as transcripts are written in CHINESE_SCRIPT and names in either script;
- a word is a run of letters, digits and marks; anything else separates words, except the
  commas, stops and apostrophes of a number in groups of thousands (1,250,000 is 1250000);
- Chinese and Japanese write no spaces, and Korean writes its particles and endings onto
  the word (서울에서, 서울입니다): a run of Han, kana (and 々, ー) or Hangul is indexed as
  its overlapping bigrams (東京都 → 東京 京都) followed by its last character (都), so
  that any two or more characters of it are found as a phrase of bigrams (서울 inside
  서울입니다), and a single character as the prefix of a term (京 → 京都, 都). Spaces
  still separate runs, and words of other scripts stay whole words;
- Thai, Lao, Khmer and Burmese write no spaces between words either: a run of their letters
  and marks is cut into dictionary words by ICU's word BreakIterator (PyICU, from PyPI
  `pyicu-wheels`, which bundles ICU and its dictionaries for exactly these four scripts),
  each word a term (ฉันชอบภาษาไทยมาก → ฉัน ชอบ ภาษา ไทย มาก). A query's run is cut the
  same way and asks for its words as a phrase (ภาษาไทย → ภาษา ไทย). A word is found where
  the dictionary cuts the text at its edges: a compound the dictionary holds whole (Khmer
  ភាសាខ្មែរ, "the Khmer language") is one word, found by itself and not by ភាសា. Their
  repetition marks (Thai ๆ, Lao ໆ, Khmer ៗ, "say the word again") separate words, so
  เด็กๆ is found by เด็ก; their digits are words of their own.

A text in a language Snowball knows (the video's: webapp/services/stemming.py) has its
words indexed by their stems (reports → report); a query's word stands for itself and its
stem in each language the index holds ("report" OR "reports"), since the query's own
language is not known.

A query is made of the same units, all of which must match within one entry (a transcript
segment, or the video's name). The terms hold letters, digits and marks only, so no query
can carry FTS5 or tsquery syntax; they are quoted all the same.
"""

from __future__ import annotations

import functools
import itertools
import re
import threading
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from webapp.services import stemming

MAX_TERM = 64  # characters of a word kept (the index and queries cut alike)
WORD, CJK, OTHER = 1, 2, 0
# Thai, Lao, Khmer and Burmese letters and marks: runs cut into dictionary words (ICU's
# name for the line-break class of these scripts is SA, "South East Asian").
SEA = 3
# Letters folded to plain ones that Unicode does not decompose; Cyrillic ё, written е as
# often (whisper writes either), and the precomposed stress marks of Bulgarian and
# Macedonian (ѐ, ѝ); Ukrainian ґ, written г from 1933 to 1990 and often still; the
# apostrophe letter ʼ (Ukrainian, Belarusian) as the apostrophe typed; the soft hyphen,
# invisible, dropped (ґ, ʼ, the soft hyphen and the stress acute as Lucene's Ukrainian
# analyzer folds them).
_LETTERS = str.maketrans({"ø": "o", "đ": "d", "ð": "d", "ħ": "h", "ı": "i", "ł": "l",
                          "ŀ": "l", "æ": "ae", "œ": "oe", "þ": "th", "ĸ": "k",
                          "ё": "е", "ѐ": "е", "ѝ": "и", "ґ": "г", "ʼ": "'", "\u00ad": "",
                          # Arabic: as the module docstring says; tatweel only stretches
                          "أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ى": "ي", "ة": "ه",
                          "\u0640": ""})
# Scripts whose accents do not matter to search.
_FOLDED_SCRIPTS = ("LATIN", "GREEK")
# Scripts whose vowel points and cantillation marks (every combining mark) search drops.
_POINTED_SCRIPTS = ("ARABIC", "HEBREW")
# Cyrillic keeps its marks (й is not и, ї is not і, ў is not у) but for stress marks, the
# acute and grave over a vowel (приве́т is привет).
_STRESS_MARKS = "\u0300\u0301"
_ASCII_WORD = re.compile(r"[a-z0-9]+")
# A number in groups of thousands: 1 to 3 digits, then groups of 3 after a comma, a stop or
# an apostrophe (Swiss 1'000), not inside a word or a longer run of digits (its decimals,
# as in 1,000.50, stay a word of their own).
_GROUPED_NUMBER = re.compile(r"(?<![\w,.'])\d{1,3}(?:[,.']\d{3})+(?!\w)")
_SEPARATORS = re.compile(r"[,.']")


def _is_han(ch: str) -> bool:
    cp = ord(ch)
    return (0x3400 <= cp <= 0x4DBF or 0x4E00 <= cp <= 0x9FFF or 0xF900 <= cp <= 0xFAFF
            or 0x20000 <= cp <= 0x3FFFF)


# The blocks of the four scripts ICU has word dictionaries for (Thai, Lao, Myanmar with its
# extensions A and B, Khmer and Khmer Symbols); all in the BMP, so ICU's offsets (UTF-16)
# are Python's.
_SEA_BLOCKS = ((0x0E00, 0x0EFF), (0x1000, 0x109F), (0xA9E0, 0xA9FF), (0xAA60, 0xAA7F),
               (0x1780, 0x17FF), (0x19E0, 0x19FF))
# "Say the word again" (Thai ๆ, Lao ໆ, Khmer ៗ): a letter to Unicode, a separator to search
# (เด็กๆ is found by เด็ก; ICU would keep it in the word).
_REPEAT_MARKS = "\u0e46\u0ec6\u17d7"


def _is_sea(ch: str) -> bool:
    cp = ord(ch)
    return any(low <= cp <= high for low, high in _SEA_BLOCKS)


def _is_cjk(ch: str) -> bool:
    """Han, kana or Hangul (syllables and jamo): the scripts indexed as bigrams."""
    cp = ord(ch)
    return (0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF or 0x3400 <= cp <= 0x4DBF
            or 0x4E00 <= cp <= 0x9FFF or 0xF900 <= cp <= 0xFAFF or 0x20000 <= cp <= 0x3FFFF
            or cp in (0x3005, 0x3006, 0x3007)
            or 0xAC00 <= cp <= 0xD7FF or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F
            or 0xA960 <= cp <= 0xA97F)


@functools.lru_cache(maxsize=65536)
def kind(ch: str) -> int:
    """CJK, SEA (a Thai, Lao, Khmer or Burmese letter or mark), WORD (a letter, digit or
    mark of another script, or a digit of those four) or OTHER (a separator). The
    categories are those of SQLite's tokenizer as configured (unicode61, 'L* N* Co M*'):
    the punctuation inside the kana block (・ ゠) separates, there as in the index. The
    repetition marks separate here only: no term holds one, so SQLite never sees them."""
    category = unicodedata.category(ch)
    if category[0] not in "LNM" and category != "Co":
        return OTHER
    if _is_cjk(ch):
        return CJK
    if category[0] != "N" and _is_sea(ch):
        return OTHER if ch in _REPEAT_MARKS else SEA
    return WORD


@functools.lru_cache(maxsize=65536)
def _fold_char(ch: str) -> str:
    """One character as search sees it (may be empty or several characters)."""
    if _is_sea(ch):
        return ch  # as written: the dictionaries know it so (see the module docstring)
    out = []
    for part in unicodedata.normalize("NFKC", ch):
        if _is_han(part):
            from webapp.services.chinese import simplified_char  # OpenCC, loaded once needed

            out.append(simplified_char(part))
            continue
        decomposed = unicodedata.normalize("NFD", part.casefold())
        if decomposed and unicodedata.name(decomposed[0], "").startswith(_FOLDED_SCRIPTS):
            decomposed = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
        out.append(unicodedata.normalize("NFC", decomposed).translate(_LETTERS))
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _drops_mark(letter: str, mark: str) -> bool:
    """Whether search drops a combining mark written on its own after this letter."""
    name = unicodedata.name(letter, "")
    return name.startswith(_FOLDED_SCRIPTS + _POINTED_SCRIPTS) or (
        name.startswith("CYRILLIC") and mark in _STRESS_MARKS)


def fold(text: str) -> tuple[str, list[int]]:
    """The text folded for search, and for each of its characters the index of the
    character of `text` (taken as NFC) it comes from."""
    text = unicodedata.normalize("NFC", text)
    if text.isascii():
        return text.lower(), list(range(len(text)))
    folded: list[str] = []
    origin: list[int] = []
    letter = ""  # the last character that is not a combining mark
    for i, ch in enumerate(text):
        if unicodedata.category(ch) != "Mn":
            letter = ch
        elif _drops_mark(letter, ch):
            continue
        part = _fold_char(ch)
        if part and folded and unicodedata.category(part[0]) == "Mn":
            # A mark NFKC made of a character of its own (the half-width voicing mark of
            # ｶﾞ) joins the letter before it where Unicode composes them (ガ).
            joined = unicodedata.normalize("NFC", folded[-1] + part)
            if len(joined) < len(folded[-1]) + len(part):
                kept = min(len(folded[-1]), len(joined))
                del origin[len(origin) - len(folded[-1]) + kept:]
                origin.extend([i] * (len(joined) - kept))
                folded[-1] = joined
                continue
        folded.append(part)
        origin.extend([i] * len(part))
    return "".join(folded), origin


@dataclass(frozen=True)
class Run:
    kind: int  # WORD, CJK or SEA
    text: str  # folded
    start: int  # offsets in the folded text
    end: int


def runs(folded: str) -> Iterator[Run]:
    """The words and CJK runs of a folded text, in order."""
    yield from _numbers(folded, _split(folded))


def _split(folded: str) -> Iterator[Run]:
    at = 0
    for key, group in itertools.groupby(folded, kind):
        chunk = "".join(group)
        if key != OTHER:
            yield Run(key, chunk, at, at + len(chunk))
        at += len(chunk)


def _numbers(folded: str, found: Iterator[Run]) -> Iterator[Run]:
    """The runs with each number written in groups of thousands (1,250,000; German 1.000)
    made one word of its digits (1250000), as the same number written without them."""
    numbers = {m.start(): m.end() for m in _GROUPED_NUMBER.finditer(folded)}
    if not numbers:
        yield from found
        return
    end = -1
    for run in found:
        if run.start < end:
            continue  # a group of the number already given
        end = numbers.get(run.start, -1)
        if end < 0:
            yield run
        else:
            yield Run(WORD, _SEPARATORS.sub("", folded[run.start:end]), run.start, end)


def _runs_of(text: str) -> Iterator[Run]:
    folded = fold(text)[0]
    if folded.isascii():  # the common case, without a look at each character
        yield from _numbers(folded, (Run(WORD, m.group(), m.start(), m.end())
                                     for m in _ASCII_WORD.finditer(folded)))
        return
    yield from runs(folded)


def bigrams(run: str) -> list[str]:
    return [run[i:i + 2] for i in range(len(run) - 1)]


_icu = threading.local()  # a BreakIterator is not safe to share between threads


def _word_breaker():
    breaker = getattr(_icu, "words", None)
    if breaker is None:
        import icu  # PyICU (pyicu-wheels): ICU with its dictionaries, loaded on first use

        # The root locale: ICU picks each script's dictionary by the text itself.
        breaker = _icu.words = icu.BreakIterator.createWordInstance(icu.Locale.getRoot())
    return breaker


@functools.lru_cache(maxsize=4096)
def word_spans(run: str) -> tuple[tuple[int, int], ...]:
    """Where a run of Thai, Lao, Khmer or Burmese letters and marks (SEA) is cut into
    dictionary words, as (start, end) offsets; the run is cut as a whole, as it is
    indexed (ICU weighs each cut by the words around it)."""
    breaker = _word_breaker()
    breaker.setText(run)
    spans = []
    start = breaker.first()
    for end in breaker:
        spans.append((start, end))
        start = end
    return tuple(spans)


def dictionary_words(run: str) -> list[str]:
    """The terms of a SEA run: its dictionary words, each cut at MAX_TERM."""
    return [run[a:b][:MAX_TERM] for a, b in word_spans(run)]


def index_terms(text: str, language: str | None = None) -> list[str]:
    """The terms of a text in order (their positions matter for CJK phrases); a text in a
    `language` Snowball knows has its words' stems (stemming.stem) in their place."""
    terms: list[str] = []
    for run in _runs_of(text):
        if run.kind == WORD:
            terms.append(stemming.stem(run.text[:MAX_TERM], language))
        elif run.kind == SEA:
            terms.extend(dictionary_words(run.text))
        else:  # its bigrams, then its last character
            terms.extend(bigrams(run.text))
            terms.append(run.text[-1])
    return terms


# -- queries --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """One thing a query asks for: a word, a CJK run (two or more characters, a phrase of
    bigrams), one CJK character (the prefix of a term) or a SEA run (a phrase of its
    dictionary words)."""

    kind: int
    text: str
    # A word's terms, any of which it matches: itself and its stems (`with_stems`).
    forms: tuple[str, ...] = ()

    @property
    def alternatives(self) -> tuple[str, ...]:
        """The terms a word matches, any one of them: itself, or its forms."""
        return self.forms or (self.text,)

    @property
    def phrase(self) -> list[str]:
        if self.kind == SEA:
            return dictionary_words(self.text)
        return bigrams(self.text) if self.kind == CJK and len(self.text) > 1 else [self.text]

    @property
    def prefix(self) -> bool:
        return self.kind == CJK and len(self.text) == 1


def query_units(query: str, languages: Iterable[str | None] = ()) -> list[Unit]:
    """The distinct units of a query, in order; empty when it has nothing to search for.
    Each word stands for itself and for its stem in each of `languages` (those the index
    holds stems of: the query's own language is not known)."""
    languages = tuple(languages)
    units = [Unit(r.kind, r.text[:MAX_TERM]) if r.kind == WORD else Unit(r.kind, r.text)
             for r in _runs_of(query)]
    units = [Unit(u.kind, u.text, stemming.forms(u.text, languages)) if u.kind == WORD
             else u for u in units]
    return list(dict.fromkeys(units))


def fts5_query(units: list[Unit]) -> str:
    """An FTS5 MATCH expression: every unit, quoted ("a phrase" or "a prefix" *), a word
    with several forms as any of them ("word" OR "stem")."""
    def quoted(unit: Unit) -> str:
        if unit.kind == WORD and len(unit.alternatives) > 1:
            return "(" + " OR ".join(_fts5_string(t) for t in unit.alternatives) + ")"
        return _fts5_string(" ".join(unit.phrase)) + (" *" if unit.prefix else "")

    return " AND ".join(quoted(u) for u in units)


def _fts5_string(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _lexeme(term: str) -> str:
    return "'" + term.replace("\\", "\\\\").replace("'", "''") + "'"


def tsquery(units: list[Unit]) -> str:
    """A PostgreSQL tsquery literal: every unit, quoted ('a' <-> 'phrase', 'prefix':*), a
    word with several forms as any of them ('word' | 'stem')."""
    def one(unit: Unit) -> str:
        if unit.prefix:
            return _lexeme(unit.text) + ":*"
        if unit.kind == WORD:
            return "(" + " | ".join(_lexeme(t) for t in unit.alternatives) + ")"
        return "(" + " <-> ".join(_lexeme(t) for t in unit.phrase) + ")"

    return " & ".join(one(u) for u in units)


# PostgreSQL keeps positions up to this one (later ones count as this).
_MAX_POSITION = 16383


def tsvector(terms: list[str]) -> str:
    """A PostgreSQL tsvector literal of terms with their positions (1, 2, ...)."""
    positions: dict[str, list[str]] = {}
    for at, term in enumerate(terms, start=1):
        positions.setdefault(term, []).append(str(min(at, _MAX_POSITION)))
    return " ".join(f"{_lexeme(t)}:{','.join(p[:256])}" for t, p in positions.items())


# -- marking matches ------------------------------------------------------------------------

def marked(text: str, units: list[Unit], language: str | None = None) -> list[tuple[str, bool]]:
    """The text (as NFC) cut into pieces, True for those that match a unit of the query:
    whole words (of any form the unit stands for, or whose stem in the text's `language`
    is one), any occurrence of a CJK unit inside a CJK run, and the dictionary words of
    a SEA run that are a SEA unit's phrase."""
    text = unicodedata.normalize("NFC", text)
    folded, origin = fold(text)
    words = {form for u in units if u.kind == WORD for form in u.alternatives}
    cjk = [u.text for u in units if u.kind == CJK]
    phrases = [u.phrase for u in units if u.kind == SEA]
    spans: list[tuple[int, int]] = []
    for run in runs(folded):
        if run.kind == WORD and (run.text[:MAX_TERM] in words
                                 or stemming.stem(run.text[:MAX_TERM], language) in words):
            spans.append((run.start, run.end))
        elif run.kind == SEA and phrases:
            spans.extend(_phrase_spans(run, phrases))
        elif run.kind == CJK:
            for unit in cjk:
                at = run.text.find(unit)
                while at >= 0:
                    spans.append((run.start + at, run.start + at + len(unit)))
                    at = run.text.find(unit, at + 1)
    # Back to the text's own characters, overlapping spans merged. A span ends where the
    # next folded character comes from: the accents folding dropped (ẹ́'s U+0301) and
    # the marks it composed (ｶﾞ's ﾞ) stay with their letter.
    def end(b: int) -> int:
        return max(origin[b - 1] + 1, origin[b] if b < len(origin) else len(text))

    hits = sorted((origin[a], end(b)) for a, b in spans)
    pieces: list[tuple[str, bool]] = []
    at = 0
    for start, end in hits:
        if end <= at:
            continue
        start = max(start, at)
        if start > at:
            pieces.append((text[at:start], False))
        pieces.append((text[start:end], True))
        at = end
    if at < len(text):
        pieces.append((text[at:], False))
    return pieces


def _phrase_spans(run: Run, phrases: list[list[str]]) -> Iterator[tuple[int, int]]:
    """Where in the folded text each phrase of dictionary words is words of the SEA run,
    one after the other: the terms the index matched."""
    cuts = word_spans(run.text)
    terms = dictionary_words(run.text)
    for phrase in phrases:
        for i in range(len(terms) - len(phrase) + 1):
            if terms[i:i + len(phrase)] == phrase:
                yield run.start + cuts[i][0], run.start + cuts[i + len(phrase) - 1][1]
