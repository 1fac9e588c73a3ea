"""Search (GET /api/v1/search, the search page, `flask reindex`) on SQLite and PostgreSQL.

Transcripts are published the way the transcribe step publishes them (files in an attempt's
folder, one completion that switches the publication and indexes the segments); the last
tests make them with the real pipeline (espeak-ng speech, whisper, a worker).
"""

from __future__ import annotations

import json
import re

import pytest
from bs4 import BeautifulSoup
from sqlalchemy import text

from tests import mediagen
from tests.conftest import run_worker
from tests.helpers import (
    assert_json_error,
    progress_of,
    publish_files,
    publish_transcript,
    transcript_files,
    upload_ok,
)
from webapp.db import get_engine

WEATHER = [(0.0, 2.5, "Good morning, here is the weather."),
           (2.5, 6.0, "Tomorrow the WEATHER will be fine in the mountains."),
           (6.0, 9.0, "Now the sports news.")]
DESSERT = [(0.0, 3.0, "Heute backen wir eine Crème brûlée."),
           (3.0, 7.5, "Die CRÈME muss langsam kochen, sagt der Bäcker in Zürich."),
           (7.5, 9.0, "Das Wetter ist schön.")]
CHINESE = [(0.0, 4.0, "大家好，今天我们讨论北京的天气。"),
           (4.0, 8.0, "明天上午有雨，下午天气会好转。")]
JAPANESE = [(0.0, 3.0, "こんにちは、東京都の天気予報です。"),
            (3.0, 6.5, "明日は京都で雨が降るでしょう。")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return mediagen.make_media(tmp_path_factory.mktemp("search") / "clip.wav", duration=10.0)


def search(client, q: str, **params):
    return client.get("/api/v1/search", query_string={"q": q, **params})


def found(client, q: str, **params) -> list[dict]:
    resp = search(client, q, **params)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def total_of(resp) -> int:
    return json.loads(resp.headers["X-Pagination"])["total"]


def names(hits: list[dict]) -> list[str]:
    return [h["video"]["original_filename"] for h in hits]


def lines(hit: dict) -> list[str]:
    return [s["text"] for s in hit["segments"]]


@pytest.fixture
def library(client, settings, clip) -> dict[str, str]:
    """Four videos with published transcripts (in upload order: weather, dessert, chinese,
    japanese) and one without; name -> id."""
    ids = {}
    for name, segments in (("weather report.wav", WEATHER), ("Crème brûlée.wav", DESSERT),
                           ("北京天气.wav", CHINESE), ("tenki.wav", JAPANESE),
                           ("silent.wav", None)):
        ids[name] = upload_ok(client, clip, name)["id"]
        if segments:
            publish_transcript(settings, ids[name], segments, language=None)
    return ids


# -- what is found ---------------------------------------------------------------------------

def test_words_are_found_in_transcripts_with_their_moments(client, library):
    hits = found(client, "weather")
    # The name match first, then the transcript matches.
    assert names(hits) == ["weather report.wav"]
    hit = hits[0]
    assert hit["name_matches"] is True and hit["segment_count"] == 2
    assert hit["segments"] == [
        {"start": 0.0, "end": 2.5, "text": WEATHER[0][2], "translation": False},
        {"start": 2.5, "end": 6.0, "text": WEATHER[1][2], "translation": False}]
    assert hit["video"]["id"] == library["weather report.wav"]
    assert hit["video"]["progress_url"].endswith("/reprocess")  # the whole video, as listed
    # Every word in one segment: "tomorrow" and "mountains" are in the same line only.
    assert [lines(h) for h in found(client, "mountains tomorrow")] == [[WEATHER[1][2]]]
    assert found(client, "morning mountains") == []  # in two different lines
    assert found(client, "nothing said") == []


def test_case_and_accents_do_not_matter(client, library):
    for q in ("creme", "CRÈME", "Crême", "cReMe"):
        hits = found(client, q)
        assert names(hits) == ["Crème brûlée.wav"], q
        assert hits[0]["name_matches"] and hits[0]["segment_count"] == 2, q
    assert found(client, "baecker") == []  # ä is a, as é is e; not the German ae
    assert lines(found(client, "backer ZURICH")[0]) == [DESSERT[1][2]]
    assert lines(found(client, "brulee")[0]) == [DESSERT[0][2]]
    assert lines(found(client, "schon")[0]) == [DESSERT[2][2]]


def test_two_chinese_characters_are_found_inside_a_segment(client, library):
    hits = found(client, "天气")
    assert names(hits) == ["北京天气.wav"]  # the name holds them too
    assert hits[0]["name_matches"] and lines(hits[0]) == [CHINESE[0][2], CHINESE[1][2]]
    assert lines(found(client, "北京")[0]) == [CHINESE[0][2]]
    assert lines(found(client, "讨论")[0]) == [CHINESE[0][2]]
    # Longer runs are phrases: their characters together, in this order.
    assert lines(found(client, "下午天气会好转")[0]) == [CHINESE[1][2]]
    assert found(client, "讨论天气") == []  # both words are there, not side by side
    assert found(client, "天论") == []
    # One character: any term it starts, and the end of a run.
    rain = found(client, "雨")
    assert {h["video"]["original_filename"]: lines(h) for h in rain} == {
        "北京天气.wav": [CHINESE[1][2]], "tenki.wav": [JAPANESE[1][2]]}  # 雨が too
    assert [lines(h) for h in found(client, "转")] == [[CHINESE[1][2]]]


def test_numbers_are_found_with_or_without_their_thousands_separators(client, library,
                                                                       settings):
    """Whisper writes 1,250,000 (and German speech 1.000): the number is found as it is
    typed, with or without the separators, and is one number, not three."""
    said = [(0.0, 3.0, "The bridge cost 1,250,000 dollars, or 3.5 million in all."),
            (3.0, 6.0, "Die Brücke kostet 1.000 Euro pro Meter, 10,5 pro Tag.")]
    publish_transcript(settings, library["silent.wav"], said, language=None)
    for q, expected in (("1250000", said[0][2]), ("1,250,000", said[0][2]),
                        ("1.250.000 dollars", said[0][2]), ("1000 euro", said[1][2]),
                        ("1,000", said[1][2]), ("3.5", said[0][2]), ("10,5", said[1][2])):
        hits = found(client, q)
        assert [lines(h) for h in hits] == [[expected]], q
    assert found(client, "250") == []  # a part of 1,250,000 is no number said
    assert found(client, "35") == []  # 3.5 is no thousands
    html = client.get("/search", query_string={"q": "1250000"}).get_data(as_text=True)
    assert "The bridge cost <mark>1,250,000</mark> dollars" in html


def test_chinese_is_found_in_either_script(client, library, settings, clip):
    """Transcripts come out in CHINESE_SCRIPT (Simplified by default), names in whatever
    script their owner wrote: a query in Traditional characters finds Simplified text, and
    the other way round, each marked where it is."""
    assert lines(found(client, "天氣")[0]) == [CHINESE[0][2], CHINESE[1][2]]  # 天气
    assert lines(found(client, "討論")[0]) == [CHINESE[0][2]]  # 讨论
    assert lines(found(client, "下午天氣會好轉")[0]) == [CHINESE[1][2]]
    assert found(client, "討論天氣") == []  # still a phrase
    vid = upload_ok(client, clip, "臺灣颱風報導.wav")["id"]
    hits = found(client, "台湾台风报导")
    assert names(hits) == ["臺灣颱風報導.wav"] and hits[0]["video"]["id"] == vid
    assert names(found(client, "台風")) == ["臺灣颱風報導.wav"]  # 台 and 颱, 风 and 風
    html = client.get("/search", query_string={"q": "天氣"}).get_data(as_text=True)
    assert "讨论北京的<mark>天气</mark>。" in html and "北京<mark>天气</mark>.wav" in html


def test_japanese_is_found_inside_a_segment(client, library):
    assert lines(found(client, "京都")[0]) == [JAPANESE[0][2], JAPANESE[1][2]]  # 東京都 too
    assert lines(found(client, "東京都")[0]) == [JAPANESE[0][2]]
    assert lines(found(client, "天気予報")[0]) == [JAPANESE[0][2]]
    assert lines(found(client, "降る")[0]) == [JAPANESE[1][2]]
    assert lines(found(client, "こんにちは")[0]) == [JAPANESE[0][2]]
    assert found(client, "雨が降った") == []
    # Japanese and Chinese terms in one query: both in one segment, or nothing.
    assert found(client, "京都 天气") == []
    assert lines(found(client, "明日 京都")[0]) == [JAPANESE[1][2]]


def test_punctuation_between_kana_separates_words_on_both_databases(client, library, settings):
    """The katakana middle dot (and ゠), though in the kana block, is punctuation:
    it separates words, as SQLite's tokenizer takes it, so PostgreSQL finds the same."""
    said = "ドナルド・トランプ大統領が来日しました。"
    publish_transcript(settings, library["silent.wav"], [(0.0, 3.0, said)], language=None)
    for q in ("・", "゠", "・・"):
        assert "no letter or digit" in assert_json_error(search(client, q), 422)["message"], q
    for q in ("ドナルド・トランプ", "トランプ", "ド", "・トランプ", "ドナルド トランプ"):
        hits = found(client, q)
        assert names(hits) == ["silent.wav"] and lines(hits[0]) == [said], q
    # The two words, not one run across the dot.
    assert found(client, "ドト") == []
    assert found(client, "ドナルドトランプ") == []


def test_korean_is_found_inside_a_word_with_its_particles(client, library, settings, clip):
    """Korean writes particles and endings onto the word (서울에서, 서울은, 서울입니다):
    Hangul is indexed as Chinese and Japanese are, so 서울 is found inside them; the spaces
    between Korean words still separate, and Latin words stay whole words."""
    said = [(0.0, 3.0, "서울입니다. 오늘 서울의 날씨는 맑겠습니다."),
            (3.0, 6.0, "내일은 부산에서 비가 오겠습니다. KBS뉴스입니다.")]
    publish_transcript(settings, library["silent.wav"], said, language=None)
    for q, expected in (("서울", [said[0][2]]), ("날씨", [said[0][2]]),
                        ("서울 날씨", [said[0][2]]), ("부산", [said[1][2]]),
                        ("부산에서", [said[1][2]]), ("비", [said[1][2]]),
                        ("뉴스", [said[1][2]]), ("kbs", [said[1][2]])):
        hits = found(client, q)
        assert names(hits) == ["silent.wav"] and lines(hits[0]) == expected, q
    assert found(client, "서울 부산") == []  # in two different lines
    assert found(client, "다오") == []  # 입니다. 오늘: two words, not one run
    assert found(client, "에서부산") == []  # a phrase, in this order
    assert found(client, "kb") == []  # Latin: whole words still
    vid = upload_ok(client, clip, "서울여행기.wav")["id"]
    assert [h["video"]["id"] for h in found(client, "여행") if h["name_matches"]] == [vid]
    html = client.get("/search", query_string={"q": "서울"}).get_data(as_text=True)
    assert "<mark>서울</mark>입니다. 오늘 <mark>서울</mark>의 날씨는" in html
    assert "<mark>서울</mark>여행기.wav" in html


def test_cyrillic_e_and_yo_and_stress_marks_do_not_matter(client, library, settings, clip):
    """Whisper writes ещё or еще: ё is е, as é is e, and a stress mark (приве́т) does not
    count; Ukrainian ґ is г and the apostrophe ʼ (U+02BC) is the one typed, '. Letters
    that are letters of their own stay so: й is not и, ї is not і."""
    said = [(0.0, 3.0, "Ещё раз: приве́т всем, мой друг."),
            (3.0, 6.0, "Погода еще не решена, зеленый свет, об\u00adлака."),
            (6.0, 9.0, "Ґанок старий, пʼять хвилин, їх дім.")]
    publish_transcript(settings, library["silent.wav"], said, language=None)
    for q, expected in (("еще", said[:2]), ("ещё", said[:2]), ("ЕЩЁ", said[:2]),
                        ("зелёный", [said[1]]), ("облака", [said[1]]),
                        ("привет", [said[0]]), ("приве́т всем", [said[0]]),
                        ("мой", [said[0]]), ("ганок", [said[2]]), ("ҐАНОК", [said[2]]),
                        ("п'ять", [said[2]]), ("п’ять хвилин", [said[2]]),
                        ("їх", [said[2]])):
        hits = found(client, q)
        assert names(hits) == ["silent.wav"], q
        assert lines(hits[0]) == [s[2] for s in expected], q
    assert found(client, "мои") == [] and found(client, "іх") == []
    vid = upload_ok(client, clip, "Ёлка.wav")["id"]
    [hit] = found(client, "елка")
    assert hit["video"]["id"] == vid and hit["name_matches"]
    html = client.get("/search", query_string={"q": "еще"}).get_data(as_text=True)
    assert "<mark>Ещё</mark> раз" in html and "Погода <mark>еще</mark> не" in html
    html = client.get("/search", query_string={"q": "привет"}).get_data(as_text=True)
    assert "раз: <mark>приве́т</mark> всем" in html
    html = client.get("/search", query_string={"q": "облака"}).get_data(as_text=True)
    assert "свет, <mark>об\u00adлака</mark>." in html


def test_arabic_and_hebrew_are_found_with_or_without_their_vowel_points(client, library,
                                                                        settings, clip):
    """Most Arabic and Hebrew is written without vowel points, some with (a Quran quote,
    a children's text, whisper now and then): either finds the other. Arabic's forms of
    alef, ى/ي and ة/ه, and the stretching tatweel do not count either; letters that are
    letters of their own (ت is not ه) stay apart."""
    said = [(0.0, 3.0, "كَتَبَ الطالبُ رسالةً إلى المدرسة."),
            (3.0, 6.0, "قـــال مصطفى: أهلاً وسهلاً"),
            (6.0, 9.0, "שָׁלוֹם עֲלֵיכֶם, מה שלומך?")]
    publish_transcript(settings, library["silent.wav"], said, language=None)
    for q, expected in (("كتب", [said[0]]), ("كَتَبَ", [said[0]]), ("الطالب", [said[0]]),
                        ("رساله", [said[0]]), ("الي المدرسه", [said[0]]),
                        ("قال", [said[1]]), ("مصطفي", [said[1]]), ("اهلا", [said[1]]),
                        ("שלום", [said[2]]), ("שָׁלוֹם עליכם", [said[2]])):
        hits = found(client, q)
        assert names(hits) == ["silent.wav"], q
        assert lines(hits[0]) == [s[2] for s in expected], q
    assert found(client, "رسالت") == [] and found(client, "שלומ") == []
    html = client.get("/search", query_string={"q": "كتب"}).get_data(as_text=True)
    assert "<mark>كَتَبَ</mark> الطالبُ" in html
    html = client.get("/search", query_string={"q": "שלום"}).get_data(as_text=True)
    assert "<mark>שָׁלוֹם</mark> עֲלֵיכֶם" in html


def test_every_form_of_a_word_is_found_in_the_transcripts_language(client, settings, clip):
    """Transcripts are indexed by their words' stems in their own language (English,
    German and Russian here): any form of a word finds the others, in the name too once the
    transcript says its language, and the page marks the forms it found."""
    english = upload_ok(client, clip, "weekly reports.wav")["id"]
    publish_transcript(settings, english, [
        (0.0, 2.0, "The reports were published yesterday."),
        (2.0, 4.0, "Reporting live from the harbour."),
        (4.0, 6.0, "She runs along the harbour every morning.")], language="en")
    german = upload_ok(client, clip, "vortrag.wav")["id"]
    publish_transcript(settings, german, [
        (0.0, 2.0, "Die Berichte sind fertig."),
        (2.0, 4.0, "Wir haben viele alte Häuser gesehen.")], language="de")
    russian = upload_ok(client, clip, "новости.wav")["id"]
    publish_transcript(settings, russian, [(0.0, 2.0, "Последние новости дня.")],
                       language="ru")

    for q in ("report", "reported", "REPORTS"):
        [hit] = found(client, q)
        assert hit["video"]["id"] == english and hit["name_matches"], q
        assert lines(hit) == ["The reports were published yesterday.",
                              "Reporting live from the harbour."], q
    assert lines(found(client, "running harbour")[0]) == [
        "She runs along the harbour every morning."]
    assert [lines(h) for h in found(client, "bericht")] == [["Die Berichte sind fertig."]]
    assert [lines(h) for h in found(client, "Haus alt")] == [
        ["Wir haben viele alte Häuser gesehen."]]
    [hit] = found(client, "новость")
    assert hit["video"]["id"] == russian and hit["name_matches"]
    assert found(client, "repo") == [] and found(client, "berich") == []  # words, not prefixes

    html = client.get("/search", query_string={"q": "report"}).get_data(as_text=True)
    assert "weekly <mark>reports</mark>.wav" in html
    assert "The <mark>reports</mark> were published yesterday." in html
    assert "<mark>Reporting</mark> live from the harbour." in html
    html = client.get("/search", query_string={"q": "haus"}).get_data(as_text=True)
    assert "Wir haben viele alte <mark>Häuser</mark> gesehen." in html


def test_a_name_is_indexed_in_the_language_asked_for_at_upload(client, clip):
    """Before any transcript, the language given at upload is the name's; without one the
    name's words are indexed as they are."""
    with open(clip, "rb") as fh:
        resp = client.post("/api/v1/videos", data={"file": (fh, "Berichte 2026.wav"),
                                                    "language": "de"},
                           content_type="multipart/form-data")
    assert resp.status_code == 201, resp.get_json()
    plain = upload_ok(client, clip, "Berichte alt.wav")["id"]
    assert names(found(client, "bericht")) == ["Berichte 2026.wav"]
    assert sorted(names(found(client, "berichte"))) == ["Berichte 2026.wav",
                                                       "Berichte alt.wav"]
    assert plain in {h["video"]["id"] for h in found(client, "berichte alt")}


def test_thai_lao_khmer_and_burmese_words_are_found_inside_running_text(client, library,
                                                                          settings, clip):
    """Thai, Lao, Khmer and Burmese write no spaces between words: a sentence is cut into
    its dictionary words (ICU's), so a word is found inside it and a query of several
    words is a phrase of them, in that order. A compound the dictionary holds whole (Khmer
    ភាសាខ្មែរ) is one word."""
    said = [(0.0, 1.5, "ฉันชอบภาษาไทยมาก"),  # I like the Thai language very much
            (1.5, 3.0, "เด็กๆเล่นกันในสวน"),  # the children play in the garden
            (3.0, 3.5, "ຂ້ອຍຮັກພາສາລາວ"),  # I love the Lao language
            (3.5, 4.5, "ຂ້ອຍມີໝາໜຶ່ງໂຕ"),  # I have a dog (ໝ, not ຫມ as NFKC spells it)
            (4.5, 6.0, "ខ្ញុំស្រឡាញ់ភាសាខ្មែរ"),  # I love the Khmer language
            (6.0, 7.5, "ខ្ញុំចូលចិត្តភាសានេះ"),  # I like this language
            (7.5, 9.0, "ကျွန်တော်မြန်မာစကားပြောတတ်တယ်။")]  # I can speak Burmese
    publish_transcript(settings, library["silent.wav"], said, language=None)
    for q, expected in (("ภาษา", [0]), ("ภาษาไทย", [0]), ("ไทย ภาษา", [0]), ("มาก", [0]),
                        ("เด็ก", [1]), ("เด็กๆ", [1]), ("สวน", [1]),
                        ("ພາສາ", [2]), ("ພາສາລາວ", [2]), ("ຂ້ອຍ", [2, 3]), ("ໝາ", [3]),
                        ("ខ្ញុំ", [4, 5]), ("ភាសាខ្មែរ", [4]), ("ភាសា", [5]),
                        ("မြန်မာ", [6]), ("ကျွန်တော်", [6])):
        hits = found(client, q)
        assert names(hits) == ["silent.wav"], q
        assert lines(hits[0]) == [said[i][2] for i in expected], q
    # Words, not any letters: ษาไ is inside ภาษาไทย, but no word; a phrase is in its order.
    for q in ("ษาไ", "ไทยภาษา", "ชอบไทย", "ภาษาลาว"):
        assert found(client, q) == [], q
    vid = upload_ok(client, clip, "ภาษาไทยวันละคำ.wav")["id"]  # a word a day
    [hit] = [h for h in found(client, "ไทย") if h["name_matches"]]
    assert hit["video"]["id"] == vid
    html = client.get("/search", query_string={"q": "ภาษาไทย"}).get_data(as_text=True)
    assert "ฉันชอบ<mark>ภาษาไทย</mark>มาก" in html and "<mark>ภาษาไทย</mark>วันละคำ.wav" in html
    html = client.get("/search", query_string={"q": "มาก ชอบ"}).get_data(as_text=True)
    assert "ฉัน<mark>ชอบ</mark>ภาษาไทย<mark>มาก</mark>" in html
    html = client.get("/search", query_string={"q": "เด็ก"}).get_data(as_text=True)
    assert "<mark>เด็ก</mark>ๆเล่นกัน" in html
    html = client.get("/search", query_string={"q": "မြန်မာ"}).get_data(as_text=True)
    assert "ကျွန်တော်<mark>မြန်မာ</mark>စကားပြော" in html


@pytest.mark.parametrize("q", [
    'weather" OR "nothing', "weather OR nothing", "NEAR(weather sports)", "weather*",
    "weather:*", "^weather", "-weather", "weather AND", "(weather", "weather NOT sports",
    "'; DROP TABLE videos; --", "a & !b | c:*", "weather' & 'sports", "\\'weather",
    '"', "'", "*", "(", ":*", "!!!", "\x00weather",
])
def test_query_syntax_is_only_ever_searched_for(client, library, database_url, q):
    resp = search(client, q)
    assert resp.status_code in (200, 422), (resp.status_code, resp.data[:300])
    if resp.status_code == 422:  # nothing but punctuation
        assert not re.search(r"\w", q.replace("_", "")), q
        assert "no letter or digit" in assert_json_error(resp, 422)["message"]
        return
    words = set(re.findall(r"[a-z]+", q.lower()))
    expected = ["weather report.wav"] if words <= {"weather"} else []
    assert names(resp.get_json()) == expected, q
    # The tables are all still there, and whole.
    with get_engine(database_url).connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM videos")).scalar() == 5


def test_operators_are_words(client, library, settings):
    vid = library["silent.wav"]
    publish_transcript(settings, vid, [(1.0, 2.0, "rain OR shine, and NOT near the weather")])
    assert lines(found(client, "rain OR shine")[0]) == [
        "rain OR shine, and NOT near the weather"]
    assert names(found(client, "not near")) == ["silent.wav"]
    assert found(client, "weath*") == []  # no prefix search of words


@pytest.mark.parametrize(("params", "says"), [
    ({}, "q"), ({"q": ""}, "q"), ({"q": "   \t "}, "empty"), ({"q": "x" * 201}, "q"),
    ({"q": "…!?"}, "no letter or digit"),
])
def test_bad_queries_are_422_with_a_clear_message(client, library, params, says):
    """Each names the parameter in `errors` as every 422 does (README), the search's own
    refusals (nothing but spaces, no letter or digit) too: they had the message alone."""
    resp = client.get("/api/v1/search", query_string=params)
    body = assert_json_error(resp, 422)
    assert says in json.dumps(body), body
    assert list(body["errors"]) == ["query"] and list(body["errors"]["query"]) == ["q"], body


def test_a_query_of_200_characters_is_searched(client, library):
    q = ("weather " * 25)[:200]
    assert names(found(client, q)) == ["weather report.wav"]


# -- order and pages ---------------------------------------------------------------------------

def test_best_match_first_then_newest_and_pages(client, settings, clip):
    ids = []
    for i in range(5):
        ids.append(upload_ok(client, clip, f"clip {i}.wav")["id"])
    counts = [1, 3, 1, 2, 1]  # segments that say "budget", per video
    for vid, n in zip(ids, counts, strict=True):
        publish_transcript(settings, vid, [(float(i), i + 1.0, f"line {i} about the budget")
                                           for i in range(n)] + [(9.0, 10.0, "goodbye")])
    named = upload_ok(client, clip, "Budget 2027.wav")["id"]  # a name match, no transcript
    # name match; then 3, 2 segments; then the three with 1, newest first
    expected = [named, ids[1], ids[3], ids[4], ids[2], ids[0]]
    resp = search(client, "budget", page_size=4)
    assert total_of(resp) == 6
    assert json.loads(resp.headers["X-Pagination"])["total_pages"] == 2
    first = resp.get_json()
    assert [h["video"]["id"] for h in first] == expected[:4]
    assert [h["segment_count"] for h in first] == [0, 3, 2, 1]
    assert [len(h["segments"]) for h in first] == [0, 3, 2, 1]
    second = search(client, "budget", page_size=4, page=2)
    assert [h["video"]["id"] for h in second.get_json()] == expected[4:]
    past = search(client, "budget", page_size=4, page=3)
    assert past.status_code == 200 and past.get_json() == [] and total_of(past) == 6
    huge = search(client, "budget", page=10**15)
    assert huge.status_code == 200 and huge.get_json() == [] and total_of(huge) == 6
    none = search(client, "nowhere")
    assert none.get_json() == [] and total_of(none) == 0


def test_at_most_three_segments_per_video_earliest_first(client, settings, clip):
    vid = upload_ok(client, clip, "long.wav")["id"]
    publish_transcript(settings, vid, [(float(i), i + 0.5, f"{i}: the same word again")
                                       for i in range(10)])
    [hit] = found(client, "word")
    assert hit["segment_count"] == 10
    assert [s["start"] for s in hit["segments"]] == [0.0, 1.0, 2.0]
    page = client.get("/search", query_string={"q": "word"}).get_data(as_text=True)
    assert re.search(r'<li class="more"><a href="/videos/[^"]+">and 7 more matching lines</a>',
                     page), page


def test_more_matching_lines_lead_to_a_page_that_marks_them(client, settings, clip):
    """"and 7 more matching lines" led to the video page, where nothing showed which of its
    lines they were: it carries the query there, and the page marks the lines holding every
    word of it (not those holding one), says how many, and links back to the search."""
    vid = upload_ok(client, clip, "long.wav")["id"]
    segments = []
    for i in range(10):
        segments.append((2.0 * i, 2.0 * i + 1, f"{i}: the budget report again"))
        segments.append((2.0 * i + 1, 2.0 * i + 2, f"{i}: only the budget"))
    publish_transcript(settings, vid, segments)
    page = client.get("/search", query_string={"q": "budget reports"}).get_data(as_text=True)
    more = BeautifulSoup(page, "html.parser").select_one("li.more a")
    assert more.get_text() == "and 7 more matching lines", page
    resp = client.get(more["href"])
    assert resp.status_code == 200
    soup = BeautifulSoup(resp.get_data(as_text=True), "html.parser")
    matches = soup.select("#transcript button.line.match")
    assert [float(b["data-start"]) for b in matches] == [2.0 * i for i in range(10)]
    assert [str(m) for m in matches[3].select("mark")] == ["<mark>budget</mark>",
                                                           "<mark>report</mark>"]
    assert not soup.select("#transcript button.line:not(.match) mark")
    note = soup.select_one("#transcript-matches")
    assert " ".join(note.get_text().split()) == (
        "10 lines hold budget reports: they are marked. Back to the search")
    assert note.q.get_text() == "budget reports"  # quoted by the browser
    assert note.a["href"] == "/search?q=budget+reports"
    # Without the query (the video's own link), nothing is marked or said.
    plain = BeautifulSoup(client.get(f"/videos/{vid}").get_data(as_text=True), "html.parser")
    assert not plain.select("#transcript mark, #transcript .match, #transcript-matches")
    # A query no line holds says so; one without a word marks nothing and says nothing.
    none = BeautifulSoup(client.get(f"/videos/{vid}", query_string={"q": "weather"})
                         .get_data(as_text=True), "html.parser")
    assert " ".join(none.select_one("#transcript-matches").get_text().split()) == (
        "No line holds weather. Back to the search")
    assert not none.select("#transcript mark")
    for q in ("", "  ", "!!!", "x" * 201):
        resp = client.get(f"/videos/{vid}", query_string={"q": q})
        assert resp.status_code == 200
        assert "transcript-matches" not in resp.get_data(as_text=True), q


def test_the_results_a_runs_end_brings_keep_the_pages_marks(client, settings, clip):
    """The panel's last poll brings the results anew (out of band): without the page's `q`
    they had no marks, and the lines found went unmarked the moment a run ended. The panel
    carries it on: its forms post it, its polls ask with it."""
    vid = upload_ok(client, clip, "long.wav")["id"]
    publish_transcript(settings, vid, [(0.0, 1.0, "the budget report"), (1.0, 2.0, "other")])
    page = BeautifulSoup(client.get(f"/videos/{vid}", query_string={"q": "budget"})
                         .get_data(as_text=True), "html.parser")
    assert [i["value"] for i in page.select("#progress-panel form input[name=q]")] == [
        "budget", "budget"]
    plain = BeautifulSoup(client.get(f"/videos/{vid}").get_data(as_text=True), "html.parser")
    assert not plain.select("#progress-panel input[name=q]")
    last = BeautifulSoup(client.get(f"/videos/{vid}/panel",
                                    query_string={"poll": "1", "q": "budget"})
                         .get_data(as_text=True), "html.parser")
    results = last.select_one("#results[hx-swap-oob]")
    assert [str(m) for m in results.select("#transcript .line.match mark")] == [
        "<mark>budget</mark>"]
    assert results.select_one("#transcript-matches")
    unmarked = BeautifulSoup(client.get(f"/videos/{vid}/panel", query_string={"poll": "1"})
                             .get_data(as_text=True), "html.parser")
    assert not unmarked.select("#transcript mark, #transcript-matches")


def test_english_translations_are_found_and_say_so(client, library, settings):
    """A task run with `translate` publishes an English translation beside the transcript:
    a person searching in English finds the German video, and is told the line found is
    the translation (it links to the same moment)."""
    said = [(0.0, 3.0, "Der Igel schläft im Garten."), (3.0, 6.0, "Morgen regnet es in Berlin.")]
    english = [(0.0, 3.0, "The hedgehog sleeps in the garden."),
               (3.0, 6.0, "Tomorrow it rains in Berlin.")]
    vid = library["silent.wav"]
    publish_transcript(settings, vid, said, language="de", translation=english)
    [hit] = found(client, "hedgehog garden")
    assert hit["video"]["id"] == vid and hit["segment_count"] == 1
    assert hit["segments"] == [{"start": 0.0, "end": 3.0, "text": english[0][2],
                                "translation": True}]
    [hit] = found(client, "regnet")
    assert hit["segments"] == [{"start": 3.0, "end": 6.0, "text": said[1][2],
                                "translation": False}]
    # Both lines of one moment: the transcript's first.
    [hit] = found(client, "berlin")
    assert hit["segment_count"] == 2
    assert [(s["text"], s["translation"]) for s in hit["segments"]] == [
        (said[1][2], False), (english[1][2], True)]
    html = client.get("/search", query_string={"q": "hedgehog"}).get_data(as_text=True)
    assert re.search(r'<li class="translation" lang="en" dir="ltr"><a class="moment" '
                     rf'href="/videos/{vid}\?t=0.000"[^>]*>\s*<time>0:00</time> The '
                     r'<mark>hedgehog</mark> sleeps in the garden. '
                     r'<span class="note">\(English translation\)</span></a></li>', html), html
    # The translation is indexed by its English stems, the transcript by its German ones.
    [hit] = found(client, "raining")
    assert [(s["text"], s["translation"]) for s in hit["segments"]] == [(english[1][2], True)]
    html = client.get("/search", query_string={"q": "raining"}).get_data(as_text=True)
    assert "Tomorrow it <mark>rains</mark> in Berlin." in html
    assert lines(found(client, "Gartens")[0]) == [said[0][2]]  # Garten
    html = client.get("/search", query_string={"q": "regnet"}).get_data(as_text=True)
    assert "Morgen <mark>regnet</mark> es in Berlin." in html
    assert "(English translation)" not in html
    # The next transcript published without a translation takes the old one's lines away.
    publish_transcript(settings, vid, said, language="de")
    assert found(client, "hedgehog") == []
    assert lines(found(client, "igel")[0]) == [said[0][2]]
    publish_transcript(settings, vid, said, language="de", translation=english)
    assert client.delete(f"/api/v1/videos/{vid}").status_code == 204
    assert found(client, "hedgehog") == [] and found(client, "igel") == []


# -- the index follows the data ------------------------------------------------------------------

def test_a_new_transcript_replaces_the_old_one_in_the_index(client, settings, library):
    vid = library["weather report.wav"]
    publish_transcript(settings, vid, [(0.0, 1.0, "A completely different forecast.")])
    assert found(client, "mountains") == []
    hits = found(client, "forecast")
    assert names(hits) == ["weather report.wav"] and lines(hits[0]) == [
        "A completely different forecast."]
    # The name stays searchable; the old lines do not.
    assert found(client, "weather")[0]["segment_count"] == 0


def test_a_stale_attempt_publishes_and_indexes_nothing(client, settings, library, db_session):
    from webapp.services import progress

    vid = library["tenki.wav"]
    task_id = publish_transcript(settings, vid, [(0.0, 1.0, "first words")])
    assert names(found(client, "first words")) == ["tenki.wav"]
    # An attempt that is no longer the step's running one completes: refused, rolled back.
    assert not progress.complete_subtask(db_session, task_id, "transcribe", 1, video_id=vid,
                                         folder="runs/x/transcribe.1",
                                         segments=[(0.0, 1.0, "stale words")])
    assert found(client, "stale") == []
    assert names(found(client, "first words")) == ["tenki.wav"]


def test_a_deleted_video_is_gone_from_the_index(client, library, database_url):
    vid = library["北京天气.wav"]
    assert client.delete(f"/api/v1/videos/{vid}").status_code == 204
    assert found(client, "天气") == []
    assert found(client, "北京") == []
    with get_engine(database_url).connect() as conn:
        left = conn.execute(text("SELECT COUNT(*) FROM search_entries WHERE video_id = :v"),
                            {"v": vid}).scalar()
        assert left == 0
        if database_url.startswith("sqlite"):  # the FTS5 index agrees with its table
            conn.execute(text("INSERT INTO search_fts(search_fts, rank) "
                              "VALUES ('integrity-check', 1)"))
    assert names(found(client, "weather")) == ["weather report.wav"]


def test_flask_reindex_indexes_what_was_published_before_search(app, client, settings, clip,
                                                               database_url):
    vid = upload_ok(client, clip, "old talk.wav")["id"]
    # Published as before search existed: files only, nothing indexed, no name either.
    publish_files(settings, vid, "transcribe", transcript_files([(3.0, 5.5, "An old lecture.")]))
    with get_engine(database_url).begin() as conn:
        conn.execute(text("DELETE FROM search_entries"))
    assert found(client, "lecture") == [] and found(client, "old talk") == []

    result = app.test_cli_runner().invoke(args=["reindex"])
    assert result.exit_code == 0, result.output
    assert re.match(r"indexed 1 videos \(1 transcript segments\) in [\d.]+ s; the index takes",
                    result.output), result.output
    [hit] = found(client, "lecture")
    assert hit["segments"] == [{"start": 3.0, "end": 5.5, "text": "An old lecture.",
                                "translation": False}]
    assert names(found(client, "old talk")) == ["old talk.wav"]
    # Run again: the same index, nothing twice.
    assert app.test_cli_runner().invoke(args=["reindex"]).exit_code == 0
    assert found(client, "lecture")[0]["segment_count"] == 1


def test_flask_reindex_indexes_published_translations(app, client, settings, clip,
                                                      database_url):
    vid = upload_ok(client, clip, "vortrag.wav")["id"]
    publish_files(settings, vid, "transcribe", transcript_files(
        [(3.0, 5.5, "Ein alter Vortrag.")], "de", translation=[(3.0, 5.5, "An old lecture.")]))
    with get_engine(database_url).begin() as conn:
        conn.execute(text("DELETE FROM search_entries"))

    assert app.test_cli_runner().invoke(args=["reindex"]).exit_code == 0
    [hit] = found(client, "lecture")
    assert hit["segments"] == [{"start": 3.0, "end": 5.5, "text": "An old lecture.",
                                "translation": True}]
    assert lines(found(client, "vortrag")[0]) == ["Ein alter Vortrag."]


# -- the pages -----------------------------------------------------------------------------------

def test_every_page_has_the_search_box(client, library):
    for path in ("/", f"/videos/{library['tenki.wav']}", "/search"):
        html = client.get(path).get_data(as_text=True)
        assert re.search(r'<form id="search-form"[^>]*role="search"[^>]*action="/search"', html)
        assert 'name="q"' in html, path


def test_search_page_lists_videos_with_marked_lines_linking_to_their_moment(client, library):
    resp = client.get("/search", query_string={"q": "CREME"})
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    vid = library["Crème brûlée.wav"]
    assert "1 video matches" in html
    assert f'href="/videos/{vid}?t=3.000"' in html
    assert "<mark>Crème</mark> brûlée.wav" in html  # the name
    assert "Heute backen wir eine <mark>Crème</mark> brûlée." in html
    assert "Die <mark>CRÈME</mark> muss" in html
    assert "<time>0:03</time>" in html
    html = client.get("/search", query_string={"q": "京都"}).get_data(as_text=True)
    assert "東<mark>京都</mark>の天気予報です" in html and "明日は<mark>京都</mark>で" in html


def test_marks_hold_whole_letters_and_half_width_kana_is_kana(client, settings, clip):
    """A letter whose accent has no precomposed form (Yoruba ẹ́: ẹ + U+0301) is marked with
    its accent; half-width katakana (ｶﾞ: ｶ + the half-width voicing mark) is found and
    marked as the full-width kana it stands for (ガ), as NFKC says."""
    yoruba = "Mo lọ sí ilé, ilẹ́ wa dára."
    vid = upload_ok(client, clip, "ｶﾞｲﾄﾞ ﾋﾞﾃﾞｵ.wav")["id"]
    publish_transcript(settings, vid, [(0.0, 2.0, yoruba)], language=None)
    html = client.get("/search", query_string={"q": "ile"}).get_data(as_text=True)
    assert "Mo lọ sí <mark>ilé</mark>, <mark>ilẹ́</mark> wa dára." in html
    for q in ("ガイド", "ビデオ", "ｶﾞｲﾄﾞ", "ガイド ビデオ"):
        assert names(found(client, q)) == ["ｶﾞｲﾄﾞ ﾋﾞﾃﾞｵ.wav"], q
    html = client.get("/search", query_string={"q": "ガイド"}).get_data(as_text=True)
    assert "<mark>ｶﾞｲﾄﾞ</mark> ﾋﾞﾃﾞｵ.wav" in html
    assert found(client, "カイト") == []  # the voicing mark still counts


def test_search_page_escapes_what_it_shows(client, settings, clip):
    vid = upload_ok(client, clip, "<b>bold<b> & co.wav")["id"]
    publish_transcript(settings, vid, [(0.0, 1.0, "<script>alert('bold')</script> & more")])
    html = client.get("/search", query_string={"q": "bold"}).get_data(as_text=True)
    assert "<script>alert" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(&#39;<mark>bold</mark>&#39;)&lt;/script&gt; &amp; more" in html
    assert "&lt;b&gt;<mark>bold</mark>&lt;b&gt; &amp; co.wav" in html
    html = client.get("/search", query_string={"q": "<mark>"}).get_data(as_text=True)
    assert "<q>&lt;mark&gt;</q>" in html


def test_search_page_says_what_is_wrong_with_a_query(client, library):
    resp = client.get("/search", query_string={"q": "   "})
    assert resp.status_code == 422
    assert "The search text is empty" in resp.get_data(as_text=True)
    # Its tab was titled "– search" (the spaces said as nothing); a search's title is its words.
    assert BeautifulSoup(resp.data, "html.parser").title.get_text() == "Search · vidpipe"
    page = client.get("/search", query_string={"q": "  weather  "}).get_data(as_text=True)
    assert BeautifulSoup(page, "html.parser").title.get_text() == "weather – search · vidpipe"
    resp = client.get("/search", query_string={"q": "x" * 300})
    assert resp.status_code == 422 and "at most 200" in resp.get_data(as_text=True)
    assert client.get("/search").status_code == 200  # the form alone
    # Both words are said, in two lines: nothing matches, and the page says what to try.
    resp = client.get("/search", query_string={"q": "backen Bäcker"})
    assert resp.status_code == 200
    summary = " ".join(BeautifulSoup(resp.get_data(as_text=True), "html.parser").select_one(
        "#search-summary").get_text().split())
    assert summary.startswith("No video matches backen Bäcker.") and "0 videos" not in summary
    assert "one line" in summary and "try fewer words" in summary


@pytest.mark.parametrize(("t", "start_at"), [
    ("9.87654", "9.877"), ("0", "0.000"), ("10", "10.000"), ("12.3", None), ("10.5", None),
    ("abc", None), ("-1", None), ("nan", None), ("inf", None), ("1e400", None), ("", None),
])
def test_video_page_starts_its_player_at_t(client, settings, clip, t, start_at):
    vid = upload_ok(client, clip, "a.wav")["id"]
    publish_files(settings, vid, "extract_audio", {"audio.wav": clip.read_bytes()})
    resp = client.get(f"/videos/{vid}", query_string={"t": t})
    assert resp.status_code == 200
    found_at = re.search(r'<audio id="player"[^>]*data-start-at="([^"]+)"',
                         resp.get_data(as_text=True))
    assert (found_at.group(1) if found_at else None) == start_at


def test_openapi_describes_search(client):
    spec = client.get("/api/openapi.json").get_json()
    op = spec["paths"]["/api/v1/search"]["get"]
    q = next(p for p in op["parameters"] if p["name"] == "q")
    assert q["required"] and q["schema"]["maxLength"] == 200 and q["schema"]["minLength"] == 1
    # What is folded, as README says.
    assert all(said in q["description"]
               for said in ("Latin", "ё against е", "ґ", "Arabic and Hebrew", "Korean",
                            "Thai, Lao, Khmer and Burmese"))
    assert {"200", "422"} <= set(op["responses"])
    hit = spec["components"]["schemas"]["SearchHit"]
    assert set(hit["properties"]) == {"video", "name_matches", "segment_count", "segments"}
    segment = spec["components"]["schemas"]["SearchSegment"]["properties"]
    assert set(segment) == {"start", "end", "text", "translation"}


# -- with the real pipeline ------------------------------------------------------------------------

SPOKEN = ("Good evening. The harbour lights are shining tonight. "
          "Tomorrow we sail to the island of penguins.")


@pytest.mark.e2e
def test_a_processed_video_is_found_by_what_was_said(client, settings, tmp_path):
    path = mediagen.make_speech_video(tmp_path / "evening.mp4", SPOKEN)
    vid = upload_ok(client, path)["id"]
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    run_worker()
    assert progress_of(client, vid)["status"] == "completed"
    transcript = client.get(f"/api/v1/videos/{vid}/artifacts/transcript.json").get_json()
    [hit] = found(client, "ISLAND")
    assert hit["video"]["id"] == vid and hit["segment_count"] == 1
    [segment] = hit["segments"]
    said = next(s for s in transcript["segments"] if "island" in s["text"].lower())
    assert (segment["start"], segment["end"], segment["text"]) == (
        said["start"], said["end"], said["text"])
    assert 0 < segment["start"] < segment["end"] <= transcript["duration"] + 0.5
    # Reprocess: the new publication's segments replace the old ones (no duplicates).
    assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
    run_worker()
    assert progress_of(client, vid)["status"] == "completed"
    assert found(client, "island")[0]["segment_count"] == 1
    assert client.delete(f"/api/v1/videos/{vid}").status_code == 204
    assert found(client, "island") == []
