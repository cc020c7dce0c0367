"""envd's messages (its process and filesystem services), defined here from E2B's published protocol:
field numbers, names and kinds as they travel, for proto.py to encode and decode. Only what the
served methods carry; a field not listed is skipped when it comes in."""
from __future__ import annotations

from .proto import Enum, Field, Message

SIGNAL = Enum("process.Signal", {"SIGNAL_UNSPECIFIED": 0, "SIGNAL_SIGTERM": 15, "SIGNAL_SIGKILL": 9})
FILE_TYPE = Enum("filesystem.FileType", {"FILE_TYPE_UNSPECIFIED": 0, "FILE_TYPE_FILE": 1, "FILE_TYPE_DIRECTORY": 2,
                                         "FILE_TYPE_SYMLINK": 3})

# ---- process.Process ----
PTY_SIZE = Message("process.PTY.Size", (Field(1, "cols", "uint32"), Field(2, "rows", "uint32")))
PTY = Message("process.PTY", (Field(1, "size", "message", PTY_SIZE),))
PROCESS_CONFIG = Message("process.ProcessConfig", (
    Field(1, "cmd", "string"), Field(2, "args", "string", repeated=True), Field(3, "envs", "map"),
    Field(4, "cwd", "string", optional=True)))
PROCESS_SELECTOR = Message("process.ProcessSelector", (  # oneof selector
    Field(1, "pid", "uint32", optional=True), Field(2, "tag", "string", optional=True)))
PROCESS_INPUT = Message("process.ProcessInput", (  # oneof input
    Field(1, "stdin", "bytes", optional=True), Field(2, "pty", "bytes", optional=True)))
PROCESS_INFO = Message("process.ProcessInfo", (
    Field(1, "config", "message", PROCESS_CONFIG), Field(2, "pid", "uint32"), Field(3, "tag", "string", optional=True)))

START_EVENT = Message("process.ProcessEvent.StartEvent", (Field(1, "pid", "uint32"),))
DATA_EVENT = Message("process.ProcessEvent.DataEvent", (  # oneof output
    Field(1, "stdout", "bytes", optional=True), Field(2, "stderr", "bytes", optional=True),
    Field(3, "pty", "bytes", optional=True)))
END_EVENT = Message("process.ProcessEvent.EndEvent", (
    Field(1, "exit_code", "sint32"), Field(2, "exited", "bool"), Field(3, "status", "string"),
    Field(4, "error", "string", optional=True)))
KEEPALIVE = Message("process.ProcessEvent.KeepAlive", ())
PROCESS_EVENT = Message("process.ProcessEvent", (  # oneof event
    Field(1, "start", "message", START_EVENT), Field(2, "data", "message", DATA_EVENT),
    Field(3, "end", "message", END_EVENT), Field(4, "keepalive", "message", KEEPALIVE)))

START_REQUEST = Message("process.StartRequest", (
    Field(1, "process", "message", PROCESS_CONFIG), Field(2, "pty", "message", PTY),
    Field(3, "tag", "string", optional=True), Field(4, "stdin", "bool", optional=True)))
START_RESPONSE = Message("process.StartResponse", (Field(1, "event", "message", PROCESS_EVENT),))
LIST_REQUEST = Message("process.ListRequest", ())
LIST_RESPONSE = Message("process.ListResponse", (Field(1, "processes", "message", PROCESS_INFO, repeated=True),))
SEND_INPUT_REQUEST = Message("process.SendInputRequest", (
    Field(1, "process", "message", PROCESS_SELECTOR), Field(2, "input", "message", PROCESS_INPUT)))
SEND_SIGNAL_REQUEST = Message("process.SendSignalRequest", (
    Field(1, "process", "message", PROCESS_SELECTOR), Field(2, "signal", "enum", SIGNAL)))
CLOSE_STDIN_REQUEST = Message("process.CloseStdinRequest", (Field(1, "process", "message", PROCESS_SELECTOR),))
UPDATE_REQUEST = Message("process.UpdateRequest", (
    Field(1, "process", "message", PROCESS_SELECTOR), Field(2, "pty", "message", PTY)))
CONNECT_REQUEST = Message("process.ConnectRequest", (Field(1, "process", "message", PROCESS_SELECTOR),))
CONNECT_RESPONSE = Message("process.ConnectResponse", (Field(1, "event", "message", PROCESS_EVENT),))
EMPTY = Message("Empty", ())  # SendInputResponse, SendSignalResponse, CloseStdinResponse, UpdateResponse, RemoveResponse...

# ---- filesystem.Filesystem ----
ENTRY_INFO = Message("filesystem.EntryInfo", (
    Field(1, "name", "string"), Field(2, "type", "enum", FILE_TYPE), Field(3, "path", "string"),
    Field(4, "size", "int64"), Field(5, "mode", "uint32"), Field(6, "permissions", "string"),
    Field(7, "owner", "string"), Field(8, "group", "string"), Field(9, "modified_time", "timestamp"),
    Field(10, "symlink_target", "string", optional=True), Field(11, "metadata", "map")))
PATH_REQUEST = Message("filesystem.PathRequest", (Field(1, "path", "string"),))  # Stat, MakeDir, Remove
ENTRY_RESPONSE = Message("filesystem.EntryResponse", (Field(1, "entry", "message", ENTRY_INFO),))  # Stat, MakeDir, Move
MOVE_REQUEST = Message("filesystem.MoveRequest", (Field(1, "source", "string"), Field(2, "destination", "string")))
LIST_DIR_REQUEST = Message("filesystem.ListDirRequest", (Field(1, "path", "string"), Field(2, "depth", "uint32")))
LIST_DIR_RESPONSE = Message("filesystem.ListDirResponse", (Field(1, "entries", "message", ENTRY_INFO, repeated=True),))

EVENT_TYPE = Enum("filesystem.EventType", {"EVENT_TYPE_UNSPECIFIED": 0, "EVENT_TYPE_CREATE": 1, "EVENT_TYPE_WRITE": 2,
                                           "EVENT_TYPE_REMOVE": 3, "EVENT_TYPE_RENAME": 4, "EVENT_TYPE_CHMOD": 5})
FILESYSTEM_EVENT = Message("filesystem.FilesystemEvent", (
    Field(1, "name", "string"), Field(2, "type", "enum", EVENT_TYPE), Field(3, "entry", "message", ENTRY_INFO)))
CREATE_WATCHER_REQUEST = Message("filesystem.CreateWatcherRequest", (
    Field(1, "path", "string"), Field(2, "recursive", "bool"), Field(3, "include_entry", "bool"),
    Field(4, "allow_network_mounts", "bool")))
CREATE_WATCHER_RESPONSE = Message("filesystem.CreateWatcherResponse", (Field(1, "watcher_id", "string"),))
WATCHER_REQUEST = Message("filesystem.WatcherRequest", (Field(1, "watcher_id", "string"),))  # GetWatcherEvents, RemoveWatcher
GET_WATCHER_EVENTS_RESPONSE = Message("filesystem.GetWatcherEventsResponse", (
    Field(1, "events", "message", FILESYSTEM_EVENT, repeated=True),))
