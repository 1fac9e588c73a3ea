"""Alembic migrations on existing data: outputs written before versioning stay published."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from tests.conftest import BACKENDS, private_schema
from webapp import create_app
from webapp.config import PROJECT_ROOT, Settings
from webapp.db import get_engine
from webapp.services.storage import STEP_OUTPUTS


def alembic(url: str) -> Config:
    cfg = Config(str(PROJECT_ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logger"] = False
    return cfg


@pytest.fixture(params=BACKENDS)
def empty_url(request, tmp_path):
    """A database with no tables yet, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    with private_schema("vidpipe_mig") as url:
        yield url


def test_outputs_of_old_runs_are_published_by_the_upgrade(empty_url, tmp_path, monkeypatch):
    url = empty_url
    settings = Settings.from_env(database_url=url, media_root=tmp_path / "media")
    command.upgrade(alembic(url), "0002")
    vid, task = "0b6f5d6e-0000-4000-8000-000000000001", "0b6f5d6e-0000-4000-8000-0000000000aa"
    with get_engine(url).begin() as conn:
        conn.execute(text(
            "INSERT INTO videos (id, original_filename, stored_name, size_bytes, format_name, "
            "duration, has_audio, has_video, created_at) VALUES "
            "(:v, 'old.mp4', 'source.mp4', 1, 'mov', 1.0, true, true, '2026-11-01 10:00:00')"),
            {"v": vid})
        conn.execute(text(
            "INSERT INTO processing_tasks (id, video_id, mode, status, created_at, version) "
            "VALUES (:t, :v, 'run_sync', 'completed', '2026-11-01 10:00:01', 9)"),
            {"t": task, "v": vid})
        for position, step in enumerate(STEP_OUTPUTS):
            # transcode failed in that run: its file must not be published
            status = "failed" if step == "transcode" else "completed"
            conn.execute(text(
                "INSERT INTO subtasks (task_id, name, position, weight, status, progress, "
                "attempt, reused) VALUES (:t, :n, :p, 25, :s, 100, 1, false)"),
                {"t": task, "n": step, "p": position, "s": status})
    legacy = settings.media_root / "videos" / vid / "artifacts"
    legacy.mkdir(parents=True)
    for names in STEP_OUTPUTS.values():
        for name in names:
            (legacy / name).write_bytes(f"old {name}".encode())
    (legacy / "captions.srt").unlink()  # an incomplete set is not published either
    monkeypatch.setenv("MEDIA_ROOT", str(settings.media_root))

    command.upgrade(alembic(url), "head")

    with get_engine(url).connect() as conn:
        rows = conn.execute(text("SELECT step, task_id, attempt, folder FROM publications")).all()
    assert sorted(rows) == [("extract_audio", task, 1, "artifacts"),
                            ("thumbnails", task, 1, "artifacts")]
    client = create_app(settings).test_client()
    listed = client.get(f"/api/v1/videos/{vid}/artifacts").get_json()
    assert sorted(a["name"] for a in listed) == sorted(
        STEP_OUTPUTS["extract_audio"] + STEP_OUTPUTS["thumbnails"])
    assert all(a["task_id"] == task for a in listed)
    poster = client.get(f"/api/v1/videos/{vid}/artifacts/poster.jpg")
    assert poster.status_code == 200 and poster.data == b"old poster.jpg"
    command.downgrade(alembic(url), "0002")  # and back


def assert_found(client, video_id: str, cases) -> None:
    """Each (query, whether the name matches, the segments' texts) is the one hit, of the
    video."""
    for q, name_matches, lines in cases:
        [hit] = client.get("/api/v1/search", query_string={"q": q}).get_json()
        assert hit["video"]["id"] == video_id and hit["name_matches"] is name_matches, q
        assert [s["text"] for s in hit["segments"]] == lines, q


def write_transcript(settings, vid: str, task: str, segments, language: str,
                     translation=()) -> str:
    """The transcribe step's files of these segments, as `task`'s first attempt wrote them
    under MEDIA_ROOT; their folder."""
    from tests.helpers import transcript_files

    folder = f"runs/{task}/transcribe.1"
    published = settings.media_root / "videos" / vid / folder
    published.mkdir(parents=True)
    for name, data in transcript_files(segments, language, translation).items():
        (published / name).write_bytes(data)
    return folder


def insert_published_transcript(conn, vid: str, task: str, folder: str, name: str,
                                language: str | None = None) -> None:
    """A video named `name` whose completed task published a transcript in `folder` (in
    `language`)."""
    conn.execute(text(
        "INSERT INTO videos (id, original_filename, stored_name, size_bytes, format_name, "
        "duration, has_audio, has_video, created_at, language) VALUES "
        "(:v, :n, 'source.mp4', 1, 'mov', 9.0, true, true, '2026-11-01 10:00:00', :l)"),
        {"v": vid, "n": name, "l": language})
    conn.execute(text(
        "INSERT INTO processing_tasks (id, video_id, mode, status, created_at, version) "
        "VALUES (:t, :v, 'run_sync', 'completed', '2026-11-01 10:00:01', 9)"),
        {"t": task, "v": vid})
    conn.execute(text(
        "INSERT INTO publications (video_id, step, task_id, attempt, folder, published_at) "
        "VALUES (:v, 'transcribe', :t, 1, :f, '2026-11-01 10:00:05')"),
        {"v": vid, "t": task, "f": folder})


def insert_entry(conn, vid: str, kind: str, position: int, shown: str,
                 terms: list[str]) -> None:
    """A search entry of `shown` with the terms an earlier revision's code made of it."""
    from webapp.services import searchterms

    postgres = conn.dialect.name == "postgresql"
    value = searchterms.tsvector(terms) if postgres else " ".join(terms)
    conn.execute(text(
        "INSERT INTO search_entries (video_id, kind, position, start_time, end_time, "
        "text, terms) VALUES (:v, :k, :p, 0, 4, :s, "
        + ("CAST(:t AS tsvector))" if postgres else ":t)")),
        {"v": vid, "k": kind, "p": position, "s": shown, "t": value})


def test_the_search_index_is_filled_from_what_was_published(empty_url, tmp_path, monkeypatch):
    """0007 indexes the names and published transcripts of the videos already there."""
    url = empty_url
    settings = Settings.from_env(database_url=url, media_root=tmp_path / "media")
    command.upgrade(alembic(url), "0006")
    vid, task = "0b6f5d6e-0000-4000-8000-000000000002", "0b6f5d6e-0000-4000-8000-0000000000bb"
    folder = write_transcript(settings, vid, task, [(0.0, 4.0, "Der Käse reift im Keller."),
                                                    (4.0, 9.0, "上海的天气很好。")], "de")
    with get_engine(url).begin() as conn:
        insert_published_transcript(conn, vid, task, folder, "Vortrag über Käse.mp4")
    monkeypatch.setenv("MEDIA_ROOT", str(settings.media_root))

    command.upgrade(alembic(url), "head")

    client = create_app(settings).test_client()
    for q, lines in (("kase", ["Der Käse reift im Keller."]), ("天气", ["上海的天气很好。"]),
                     ("vortrag", [])):
        [hit] = client.get("/api/v1/search", query_string={"q": q}).get_json()
        assert hit["video"]["id"] == vid and [s["text"] for s in hit["segments"]] == lines, q
    command.downgrade(alembic(url), "0006")  # and back
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM videos")).scalar() == 1


def test_the_search_index_is_made_again_for_either_chinese_script(empty_url, tmp_path,
                                                                  monkeypatch):
    """0011 makes the terms again: an index 0010 made of Traditional characters as written
    is found by today's queries, which compare Chinese characters in Simplified."""
    from webapp.services import searchterms

    url = empty_url
    settings = Settings.from_env(database_url=url, media_root=tmp_path / "media")
    vid, task = "0b6f5d6e-0000-4000-8000-000000000003", "0b6f5d6e-0000-4000-8000-0000000000cc"
    said = "臺灣明天天氣很好。"
    folder = write_transcript(settings, vid, task, [(0.0, 4.0, said)], "zh")
    monkeypatch.setenv("MEDIA_ROOT", str(settings.media_root))
    command.upgrade(alembic(url), "0010")
    with get_engine(url).begin() as conn:
        insert_published_transcript(conn, vid, task, folder, "颱風.mp4")
        # The entries as 0010's code made them: the characters' bigrams as written.
        for kind, shown in (("name", "颱風.mp4"), ("segment", said)):
            run = shown.split(".")[0].rstrip("。")
            terms = [*searchterms.bigrams(run), run[-1]] + (["mp4"] if kind == "name" else [])
            insert_entry(conn, vid, kind, 0, shown, terms)

    command.upgrade(alembic(url), "head")

    assert_found(create_app(settings).test_client(), vid, (
        ("台湾明天", False, [said]), ("天气", False, [said]), ("台风", True, [])))
    with get_engine(url).connect() as conn:  # made again, not added to
        assert conn.execute(text("SELECT COUNT(*) FROM search_entries")).scalar() == 2
    command.downgrade(alembic(url), "0010")  # and back


def test_the_search_index_is_made_again_for_korean_and_cyrillic(empty_url, tmp_path,
                                                                monkeypatch):
    """0012 makes the terms again: an index 0011 made of Korean words whole (서울입니다)
    and of ё as written is found by today's queries, which look for a Korean word inside
    them (서울) and fold ё to е."""
    url = empty_url
    settings = Settings.from_env(database_url=url, media_root=tmp_path / "media")
    vid, task = "0b6f5d6e-0000-4000-8000-000000000004", "0b6f5d6e-0000-4000-8000-0000000000dd"
    said, russian = "서울입니다. 내일은 부산에서 만나요.", "Ещё раз о погоде."
    folder = write_transcript(settings, vid, task, [(0.0, 4.0, said), (4.0, 8.0, russian)],
                              "ko")
    monkeypatch.setenv("MEDIA_ROOT", str(settings.media_root))
    command.upgrade(alembic(url), "0011")
    with get_engine(url).begin() as conn:
        insert_published_transcript(conn, vid, task, folder, "서울여행.mp4")
        # The entries as 0011's code made them: Korean words whole, ё as written.
        insert_entry(conn, vid, "name", 0, "서울여행.mp4", ["서울여행", "mp4"])
        insert_entry(conn, vid, "segment", 0, said, ["서울입니다", "내일은", "부산에서", "만나요"])
        insert_entry(conn, vid, "segment", 1, russian, ["ещё", "раз", "о", "погоде"])

    command.upgrade(alembic(url), "head")

    assert_found(create_app(settings).test_client(), vid, (
        ("서울", True, [said]), ("부산", False, [said]), ("여행", True, []),
        ("еще", False, [russian]), ("ещё", False, [russian])))
    with get_engine(url).connect() as conn:  # made again, not added to
        assert conn.execute(text("SELECT COUNT(*) FROM search_entries")).scalar() == 3
    command.downgrade(alembic(url), "0011")  # and back


def test_the_search_index_is_made_again_for_thai_lao_khmer_and_burmese(empty_url, tmp_path,
                                                                       monkeypatch):
    """0013 makes the terms again: an index 0012 made of a Thai (Lao, Khmer, Burmese)
    sentence as one term is found by today's queries, which look for its dictionary
    words; and one it made of an English transcript's words as written is found by any
    form of them (their stems)."""
    url = empty_url
    settings = Settings.from_env(database_url=url, media_root=tmp_path / "media")
    vid, task = "0b6f5d6e-0000-4000-8000-000000000005", "0b6f5d6e-0000-4000-8000-0000000000ee"
    thai, burmese = "ฉันชอบภาษาไทยมาก", "ကျွန်တော်မြန်မာစကားပြောတတ်တယ်။"
    folder = write_transcript(settings, vid, task, [(0.0, 4.0, thai), (4.0, 8.0, burmese)],
                              "th")
    monkeypatch.setenv("MEDIA_ROOT", str(settings.media_root))
    command.upgrade(alembic(url), "0012")
    with get_engine(url).begin() as conn:
        insert_published_transcript(conn, vid, task, folder, "ภาษาไทยวันละคำ.mp4")
        # The entries as 0012's code made them: each run of letters one term.
        insert_entry(conn, vid, "name", 0, "ภาษาไทยวันละคำ.mp4", ["ภาษาไทยวันละคำ", "mp4"])
        insert_entry(conn, vid, "segment", 0, thai, [thai])
        insert_entry(conn, vid, "segment", 1, burmese, [burmese.rstrip("။")])
    english, english_task = ("0b6f5d6e-0000-4000-8000-000000000006",
                             "0b6f5d6e-0000-4000-8000-0000000000ef")
    said = "The reports were published."
    english_folder = write_transcript(settings, english, english_task, [(0.0, 3.0, said)],
                                      "en")
    with get_engine(url).begin() as conn:
        insert_published_transcript(conn, english, english_task, english_folder,
                                    "weekly reports.mp4", "en")
        insert_entry(conn, english, "name", 0, "weekly reports.mp4", ["weekly", "reports", "mp4"])
        insert_entry(conn, english, "segment", 0, said, ["the", "reports", "were", "published"])

    command.upgrade(alembic(url), "head")

    assert_found(create_app(settings).test_client(), vid, (
        ("ภาษา", True, [thai]), ("ภาษาไทย", True, [thai]), ("มาก", False, [thai]),
        ("คำ", True, []), ("မြန်မာ", False, [burmese])))
    assert_found(create_app(settings).test_client(), english, (
        ("report", True, [said]), ("publishing", False, [said])))
    with get_engine(url).connect() as conn:  # made again, not added to
        assert conn.execute(text("SELECT COUNT(*) FROM search_entries")).scalar() == 5
    command.downgrade(alembic(url), "0012")  # and back


def test_published_translations_are_indexed_by_the_upgrade(empty_url, tmp_path, monkeypatch):
    """0014 indexes the English translations already published in transcript.json, which
    0013's code did not index; going back removes them, which 0013's code would count as
    nothing."""
    from webapp.services import searchterms

    url = empty_url
    settings = Settings.from_env(database_url=url, media_root=tmp_path / "media")
    vid, task = "0b6f5d6e-0000-4000-8000-000000000006", "0b6f5d6e-0000-4000-8000-0000000000ff"
    said, english = "Der Igel schläft im Garten.", "The hedgehog sleeps in the garden."
    folder = write_transcript(settings, vid, task, [(0.0, 4.0, said)], "de",
                              translation=[(0.0, 4.0, english)])
    monkeypatch.setenv("MEDIA_ROOT", str(settings.media_root))
    command.upgrade(alembic(url), "0013")
    with get_engine(url).begin() as conn:
        insert_published_transcript(conn, vid, task, folder, "igel.mp4")
        # The entries as 0013's code made them: the name and the transcript only.
        insert_entry(conn, vid, "name", 0, "igel.mp4", ["igel", "mp4"])
        insert_entry(conn, vid, "segment", 0, said, searchterms.index_terms(said))

    command.upgrade(alembic(url), "head")

    client = create_app(settings).test_client()
    assert_found(client, vid, (("igel", True, [said]), ("hedgehog", False, [english])))
    [hit] = client.get("/api/v1/search", query_string={"q": "hedgehog"}).get_json()
    assert hit["segments"][0]["translation"] is True
    command.downgrade(alembic(url), "0013")
    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT kind FROM search_entries ORDER BY kind")).scalars(
            ).all() == ["name", "segment"]
    command.downgrade(alembic(url), "0012")  # and back


@pytest.mark.parametrize("start", ["0006", "0011"])
def test_a_library_with_transcribed_videos_upgrades_from_before_0013(empty_url, tmp_path,
                                                                     monkeypatch, start):
    """A transcribed video has its language on its row. The rebuilds of 0007, 0011 and 0012
    run today's code, which notes the languages it indexed stems of in search_languages, a
    table only 0013 makes: `make migrate` of any such database older than 0013 failed
    ("no such table: search_languages") and `make run` with it."""
    url = empty_url
    settings = Settings.from_env(database_url=url, media_root=tmp_path / "media")
    vid, task = "0b6f5d6e-0000-4000-8000-000000000007", "0b6f5d6e-0000-4000-8000-000000000a07"
    said = "The weather reports were published."
    folder = write_transcript(settings, vid, task, [(0.0, 4.0, said)], "en")
    monkeypatch.setenv("MEDIA_ROOT", str(settings.media_root))
    command.upgrade(alembic(url), start)
    with get_engine(url).begin() as conn:
        insert_published_transcript(conn, vid, task, folder, "forecast.mp4", "en")

    command.upgrade(alembic(url), "head")

    with get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT language FROM search_languages")).scalars().all() == [
            "en"]
    assert_found(create_app(settings).test_client(), vid, (
        ("report", False, [said]), ("forecast", True, [])))
    command.downgrade(alembic(url), "0006")  # and back


def test_a_database_at_head_is_what_the_models_describe(empty_url):
    """`alembic check` (and so `alembic revision --autogenerate`) wanted to drop the search
    index, which the migrations make in SQL of their own: FTS5's tables on SQLite, the GIN
    index on PostgreSQL."""
    command.upgrade(alembic(empty_url), "head")
    command.check(alembic(empty_url))  # raises AutogenerateDiffsDetected naming each
