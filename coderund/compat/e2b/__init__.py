"""E2B's protocol: its REST API (api.py), envd's calls inside a sandbox (envd.py) over the Connect
protocol (connect.py), with envd's messages (messages.py) in Protocol Buffers' formats (proto.py).
Pure translations; the routes are in coderund/api/compat/e2b_routes.py."""
