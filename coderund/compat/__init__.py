"""Foreign APIs' translations (Judge0, ...): pure functions from their requests to TaskRequests and
from stored tasks to their answers. Their routes are thin, in api/compat; the worker never knows them."""
from __future__ import annotations

from ..domain import Task
from ..plugins import Plugins
from . import judge0


def webhook(task: Task, plugins: Plugins) -> tuple[str, bytes] | None:
    """The method and body of a finished task's callback in its API's own terms; None: coderund's."""
    if (task.compat or {}).get("api") == "judge0":
        return "PUT", judge0.callback_body(task, plugins)
    return None
