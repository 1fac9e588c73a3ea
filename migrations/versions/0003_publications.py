"""published outputs as a database fact; a step's raw error output apart from its sentence

`publications` says, for each step of each video, which task and attempt produced the files
that readers (API, UI, downloads) see, and in which folder below the video's folder they are.
Until now every run wrote straight into `videos/<id>/artifacts/`; the outputs found complete
there are published from that folder, attributed to the latest completed run of their step.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 06:00:00
"""
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LEGACY_FOLDER = "artifacts"
STEP_OUTPUTS = {  # as webapp.services.storage had them when this revision was written
    "extract_audio": ("audio.wav",),
    "transcribe": ("transcript.json", "captions.vtt", "captions.srt"),
    "thumbnails": ("poster.jpg", "storyboard.jpg", "storyboard.vtt"),
    "transcode": ("preview.mp4",),
}


def upgrade() -> None:
    op.add_column("subtasks", sa.Column("error_detail", sa.Text(), nullable=True))
    op.create_table(
        "publications",
        sa.Column("video_id", sa.String(36),
                  sa.ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("step", sa.String(32), primary_key=True),
        sa.Column("task_id", sa.String(36),
                  sa.ForeignKey("processing_tasks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("folder", sa.String(200), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_publications_task_id", "publications", ["task_id"])
    _publish_legacy_artifacts()


def _publish_legacy_artifacts() -> None:
    from webapp.config import Settings

    videos_dir = Settings.from_env().media_root / "videos"
    conn = op.get_bind()
    latest = sa.text(
        "SELECT s.task_id, s.attempt, COALESCE(s.finished_at, t.created_at) FROM subtasks s "
        "JOIN processing_tasks t ON t.id = s.task_id "
        "WHERE t.video_id = :video AND s.name = :step AND s.status = 'completed' "
        "ORDER BY t.created_at DESC LIMIT 1")
    insert = sa.text(
        "INSERT INTO publications (video_id, step, task_id, attempt, folder, published_at) "
        "VALUES (:video, :step, :task, :attempt, :folder, :at)")
    for (video_id,) in conn.execute(sa.text("SELECT id FROM videos")).all():
        folder = Path(videos_dir, video_id, LEGACY_FOLDER)
        for step, names in STEP_OUTPUTS.items():
            if not all((folder / name).is_file() for name in names):
                continue
            found = conn.execute(latest, {"video": video_id, "step": step}).first()
            if found is not None:
                conn.execute(insert, {"video": video_id, "step": step, "task": found[0],
                                      "attempt": found[1], "folder": LEGACY_FOLDER,
                                      "at": found[2]})


def downgrade() -> None:
    op.drop_index("ix_publications_task_id", table_name="publications")
    op.drop_table("publications")
    with op.batch_alter_table("subtasks", schema=None) as batch_op:
        batch_op.drop_column("error_detail")
