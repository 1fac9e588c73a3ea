"""Word stems for search, by language: Snowball's stemmers (PyStemmer, the C build of the
algorithms that Lucene, Elasticsearch and PostgreSQL's own dictionaries use).

A transcript in a language Snowball knows is indexed by the stems of its words ("captions"
and "captioned" as "caption", German "Berichte" and "Berichten" as "bericht", Russian
"новости" and "новостей" as "новост"), so a search finds every form of a word. The query's
language is not known: each query word stands for itself and for its stem in each language
of the library (webapp/services/search.py), one of which is the transcript's.

Words are stemmed as search folds them (lower case, Latin accents dropped: `searchterms`),
on both sides alike. Languages Snowball does not know (Chinese, Japanese, Korean, Thai, ...)
keep their words as they are.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import Stemmer

# Whisper's language codes (ISO 639-1) and Snowball's algorithms for them.
ALGORITHMS = {
    "ar": "arabic", "hy": "armenian", "eu": "basque", "ca": "catalan", "cs": "czech",
    "da": "danish", "nl": "dutch", "en": "english", "et": "estonian", "fi": "finnish",
    "fr": "french", "de": "german", "el": "greek", "hi": "hindi", "hu": "hungarian",
    "id": "indonesian", "it": "italian", "lt": "lithuanian", "ne": "nepali",
    "no": "norwegian", "nn": "norwegian", "fa": "persian", "pl": "polish",
    "pt": "portuguese", "ro": "romanian", "ru": "russian", "sr": "serbian",
    "es": "spanish", "sv": "swedish", "ta": "tamil", "tr": "turkish", "yi": "yiddish",
}

# A Stemmer is not safe to share between threads (gunicorn's threaded workers): one per
# thread and language. Each keeps a cache of the words it stemmed.
_local = threading.local()


def _stemmer(language: str) -> Stemmer.Stemmer | None:
    stemmers = _local.__dict__.setdefault("stemmers", {})
    if language not in stemmers:
        algorithm = ALGORITHMS.get(language)
        stemmers[language] = Stemmer.Stemmer(algorithm) if algorithm else None
    return stemmers[language]


def stems(language: str | None) -> bool:
    """Whether words of `language` (a code) are indexed by their stems."""
    return language in ALGORITHMS


def stem(word: str, language: str | None) -> str:
    """The stem of a folded word in `language`; the word itself for a language Snowball
    does not know (or None) and for a stem that would be empty."""
    stemmer = _stemmer(language) if language else None
    return (stemmer.stemWord(word) or word) if stemmer else word


def forms(word: str, languages: Iterable[str | None]) -> tuple[str, ...]:
    """What a query word matches: itself (names, and text in a language without a stemmer)
    and its stem in each of `languages`, without repeats, the word first."""
    return tuple(dict.fromkeys([word, *(stem(word, language) for language in languages)]))
