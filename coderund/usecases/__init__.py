"""What coderund does, one module per concern; storage and Docker come in as objects."""
from .accounts import Accounts, Login, UserAdmin
from .admission import Admission
from .execution import Executor
from .keys import ApiKeys
from .live import LiveBridge, LiveRuns
from .sandboxes import SandboxHost, Sandboxes
from .stored_files import FileStore
from .tasks import TaskService
from .webhooks import Webhooks

__all__ = ["Accounts", "Admission", "ApiKeys", "Executor", "FileStore", "LiveBridge", "LiveRuns", "Login", "SandboxHost",
           "Sandboxes", "TaskService", "UserAdmin", "Webhooks"]
