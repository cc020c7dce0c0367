"""A one-shot task's files out: `outputs` patterns → `artifacts` in the result, over HTTP and the WebSocket."""
from __future__ import annotations

import base64

import pytest

from coderund.domain import MAX_ARTIFACTS, parse_task_request, select_artifacts
from coderund.errors import ValidationFailed

WRITER = """
import os, struct, zlib
os.makedirs("out/sub", exist_ok=True)
for name in ("b", "a"):
    open(f"out/{name}.csv", "w").write(f"{name},1\\n")
open("out/sub/deep.csv", "w").write("no")
open("out/notes.txt", "w").write("no")
open("plot.png", "wb").write(bytes(range(256)))
print("wrote")
"""


def test_patterns_match_part_by_part_within_the_caps():
    files = {"out/a.csv": b"a", "out/sub/c.csv": b"c", "main.py": b"x", "out": None, "plot.png": b"p"}
    artifacts, truncated = select_artifacts(files, ("out/*.csv", "plot.png"))
    assert [a.name for a in artifacts] == ["out/a.csv", "plot.png"] and not truncated
    many = {f"f{i:03}.txt": b"x" for i in range(MAX_ARTIFACTS + 3)}
    artifacts, truncated = select_artifacts(many, ("*.txt",))
    assert len(artifacts) == MAX_ARTIFACTS and truncated
    big = {"a.bin": b"x" * (5 << 20), "b.bin": b"y" * (5 << 20), "c.bin": b"z"}
    artifacts, truncated = select_artifacts(big, ("*.bin",))
    assert [a.name for a in artifacts] == ["a.bin", "c.bin"] and truncated


@pytest.mark.parametrize("outputs", ["plot.png", ["/etc/passwd"], ["../x"], ["a//b"], [""], [1], ["x"] * 17])
def test_bad_outputs_are_refused(outputs):
    with pytest.raises(ValidationFailed):
        parse_task_request({"language": "python", "code": "1", "outputs": outputs})


async def test_a_task_brings_back_the_files_it_was_asked_for(runtime_api):
    token = await runtime_api.user("artifacts")
    result = await runtime_api.run(token, language="python", code=WRITER, outputs=["out/*.csv", "plot.png", "none.*"])
    assert result["verdict"] == "ok" and result["stdout"] == "wrote\n"
    assert [(a["name"], a["size"]) for a in result["artifacts"]] == [("out/a.csv", 4), ("out/b.csv", 4), ("plot.png", 256)]
    assert base64.b64decode(result["artifacts"][2]["content_base64"]) == bytes(range(256))
    assert result["artifacts_truncated"] is False
    plain = await runtime_api.run(token, language="python", code=WRITER)
    assert "artifacts" not in plain  # asked for nothing, nothing comes back


async def test_a_compiled_programs_artifacts_leave_out_its_build(api):
    token = await api.user("artifacts-c")
    code = '#include <stdio.h>\nint main(void) { FILE *f = fopen("out.txt", "w"); fputs("hi", f); fclose(f); return 0; }\n'
    result = await api.run(token, language="c", code=code, outputs=["*"])
    assert [a["name"] for a in result["artifacts"]] == ["out.txt"], result


async def test_artifacts_come_over_the_websocket(api):
    token = await api.user("artifacts-ws")
    async with api.session.ws_connect(f"{api.base.replace('http', 'ws', 1)}/ws",
                                      headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send_json({"type": "run", "task": {"language": "python", "code": WRITER, "outputs": ["plot.png"]}})
        while (message := await ws.receive_json(timeout=60))["type"] != "result":
            if message["type"] == "accepted":
                await ws.send_json({"type": "eof"})
    assert [a["name"] for a in message["result"]["artifacts"]] == ["plot.png"]
