"""What coderund does, one module per concern; storage and Docker come in as objects."""
from .accounts import Accounts, Login
from .execution import Executor
from .keys import ApiKeys
from .live import LiveBridge, LiveRuns
from .tasks import TaskService
from .webhooks import Webhooks

__all__ = ["Accounts", "ApiKeys", "Executor", "LiveBridge", "LiveRuns", "Login", "TaskService", "Webhooks"]
