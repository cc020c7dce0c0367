"""Files a client stores ahead of the runs that name them (Jobe's file cache)."""
from __future__ import annotations

from ..errors import PayloadTooLarge, ValidationFailed
from ..repository.stored_files import StoredFiles


MAX_FILE_ID = 128


class FileStore:
    def __init__(self, files: StoredFiles, *, max_file_bytes: int) -> None:
        self.files = files
        self.max_file_bytes = max_file_bytes

    async def put(self, user_id: int, file_id: str, content: bytes) -> None:
        if len(file_id) > MAX_FILE_ID:
            raise ValidationFailed(f"A file id may be at most {MAX_FILE_ID} characters long.")
        if len(content) > self.max_file_bytes:
            raise PayloadTooLarge(f"A stored file may hold at most {self.max_file_bytes // 1024} KiB.")
        await self.files.put(user_id, file_id, content)

    async def exists(self, user_id: int, file_id: str) -> bool:
        return await self.files.exists(user_id, file_id)

    async def take(self, user_id: int, file_ids: list[str]) -> dict[str, bytes] | None:
        """Every named file's content, or None when any of them is not (or no longer) stored."""
        found = await self.files.take(user_id, sorted(set(file_ids)))
        return found if len(found) == len(set(file_ids)) else None
