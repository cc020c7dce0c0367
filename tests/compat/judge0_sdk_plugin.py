"""A pytest plugin that points the judge0 SDK's hosted clients at a coderund server, to run the SDK's
own test suite (judge0/judge0-python tests/) unmodified against it:

    JUDGE0_TEST_URL=http://127.0.0.1:8080/judge0 JUDGE0_TEST_KEY=crd_... \\
        pytest -p tests.compat.judge0_sdk_plugin path/to/judge0-python/tests

Every hosted flavour (Judge0 Cloud, RapidAPI, AllThingsDev; CE and Extra CE) goes to the one URL and
authenticates with the one key, which coderund's Judge0 API takes in any of their headers.
"""
from __future__ import annotations

import json
import os

from judge0 import clients

URL = os.environ["JUDGE0_TEST_URL"]
KEY = os.environ["JUDGE0_TEST_KEY"]

for name in ("Judge0CloudCE", "Judge0CloudExtraCE", "RapidJudge0CE", "RapidJudge0ExtraCE", "ATDJudge0CE", "ATDJudge0ExtraCE"):
    getattr(clients, name).DEFAULT_ENDPOINT = URL
os.environ.update({"JUDGE0_RAPID_API_KEY": KEY, "JUDGE0_ATD_API_KEY": KEY,
                   "JUDGE0_CLOUD_CE_AUTH_HEADERS": json.dumps({"X-Auth-Token": KEY}),
                   "JUDGE0_CLOUD_EXTRA_CE_AUTH_HEADERS": json.dumps({"X-Auth-Token": KEY})})
_cloud_init = clients.Judge0Cloud.__init__


def _with_key(self, endpoint, headers=None, **kwargs):  # the keyless preview clients get the key too
    _cloud_init(self, endpoint, headers or {"X-Auth-Token": KEY}, **kwargs)


clients.Judge0Cloud.__init__ = _with_key
