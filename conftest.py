"""Every test and benchmark session: a system it starts never takes a fixed TCP port. The
exporter's [metrics] listen defaults to 127.0.0.1:9817 for users; here the supervisor is
told port 0 (any free one) in its place, whatever config a test writes (a test that checks
[metrics] listen itself takes the variable out of its system's environment)."""

import os

os.environ["SOVEREIGN_METRICS_LISTEN"] = "127.0.0.1:0"
