"""THE progress service: the only writer of task/subtask state and the only maker of totals.

Its public surface is here, so callers write `progress.start_subtask(...)`; each part is one
module: `views` (what a task's progress reads as), `queries` (how it is read: polls, pages),
`tasks` (whole tasks written) and `steps` (a step's attempts written, fenced by attempt).
Nothing else writes a task or a subtask.
"""

from webapp.services.progress.queries import (
    TAG_QUERY,
    active_task,
    latest_status,
    latest_task,
    poll_tag,
    prefetch_progress,
    progress_tag,
    runs_ahead,
    tag_of_row,
    tagged_progress,
    video_progress,
)
from webapp.services.progress.steps import (
    attempt_completed,
    attempt_is_current,
    complete_subtask,
    finish_subtask,
    report_progress,
    retry_subtask,
    start_subtask,
    subtask_status,
)
from webapp.services.progress.tasks import (
    cancel_active,
    cancel_task,
    delete_unstarted_task,
    insert_task,
    insert_task_rows,
    new_task,
    task_rows,
    task_status,
)
from webapp.services.progress.views import (
    ProgressView,
    SubtaskView,
    estimate_eta,
    initial_view,
    progress_of,
    task_view,
    weighted_total,
)

__all__ = [
    "TAG_QUERY",
    "ProgressView",
    "SubtaskView",
    "active_task",
    "attempt_completed",
    "attempt_is_current",
    "cancel_active",
    "cancel_task",
    "complete_subtask",
    "delete_unstarted_task",
    "estimate_eta",
    "finish_subtask",
    "initial_view",
    "insert_task",
    "insert_task_rows",
    "latest_status",
    "latest_task",
    "new_task",
    "poll_tag",
    "prefetch_progress",
    "progress_of",
    "progress_tag",
    "runs_ahead",
    "report_progress",
    "retry_subtask",
    "start_subtask",
    "subtask_status",
    "tag_of_row",
    "tagged_progress",
    "task_rows",
    "task_status",
    "task_view",
    "video_progress",
    "weighted_total",
]
