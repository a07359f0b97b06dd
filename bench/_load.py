"""Load generators for the benchmarks: wrk for HTTP, pgbench for SQL. Both are bounded
by duration, run against loopback only, and return requests/s with latency percentiles."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.gateway import ready_upstreams

# A pgbench script and the values of its variables.
Script = tuple[str, dict[str, str]]


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int = 0
    requests: int = 0


def require(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise SystemExit(f"{tool} is not installed: apt-get install {package}")


_WRK_SCRIPT = """
wrk.method = %(method)s
%(headers)s
local bodies = %(bodies)s
local paths = %(paths)s
local n = 0
request = function()
  n = n + 1
  local path = nil
  if #paths > 0 then path = paths[(n %% #paths) + 1] end
  if #bodies == 0 then return wrk.format(nil, path) end
  return wrk.format(nil, path, nil, bodies[(n %% #bodies) + 1])
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %%f %%f %%f %%d %%d\\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, errors, summary.requests))
end
"""


def wrk(
    url: str,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    bodies: list[str] | None = None,
    paths: list[str] | None = None,
    connections: int,
    seconds: int,
) -> Result:
    """Closed-loop load on ``url`` (bodies, and ``paths`` on its host when given, sent
    round-robin); non-2xx answers count as errors.

    One wrk thread: on a small machine the cores go to the services being measured.
    """
    require("wrk", "wrk")
    header_lines = "\n".join(
        f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in (headers or {}).items()
    )
    script = _WRK_SCRIPT % {
        "method": json.dumps(method),
        "headers": header_lines,
        "bodies": "{" + ",".join(json.dumps(b) for b in bodies or []) + "}",
        "paths": "{" + ",".join(json.dumps(p) for p in paths or []) + "}",
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
    try:
        command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
        out = subprocess.run(
            [*command, "-s", handle.name, url],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        Path(handle.name).unlink()
    match = re.search(r"RESULT (\S+) (\S+) (\S+) (\d+) (\d+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    rps, p50, p99, errors, requests = match.groups()
    return Result(float(rps), float(p50), float(p99), int(errors), int(requests))


def pgbench(dsn: str, scripts: list[Script], clients: int, seconds: int) -> Result:
    """Run pgbench custom scripts (prepared mode; each transaction picks one of ``scripts``
    at random); percentiles from the per-transaction log.

    A script's variables become ``-D name=value``: its ``:name`` are then bind parameters
    of the prepared statement, the way an application driver sends them. They are global
    to the run, so two scripts must not give one name different values.
    """
    require("pgbench", "postgresql-15")
    with tempfile.TemporaryDirectory() as workdir:
        command = ["pgbench", "-n", "-M", "prepared", "-c", str(clients)]
        for number, (text, variables) in enumerate(scripts):
            script_path = Path(workdir) / f"script{number}.sql"
            script_path.write_text(text)
            command += ["-f", str(script_path)]
            for name, value in variables.items():
                command += ["-D", f"{name}={value}"]
        command += ["-j", str(min(2, clients)), "-T", str(seconds)]
        command += ["-l", "--log-prefix", f"{workdir}/log", dsn]
        out = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, cwd=workdir
        )
        if out.returncode != 0:
            raise RuntimeError(f"pgbench failed:\n{out.stderr}\nfirst script:\n{scripts[0][0]}")
        latencies: list[float] = []
        for log in Path(workdir).glob("log*"):
            for line in log.read_text().splitlines():
                latencies.append(int(line.split()[2]) / 1000)  # microseconds -> ms
    match = re.search(r"tps = ([\d.]+)", out.stdout)
    if match is None or not latencies:
        raise RuntimeError(f"pgbench printed no result:\n{out.stdout}")
    latencies.sort()
    return Result(
        float(match.group(1)),
        latencies[len(latencies) // 2],
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    )


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join([line, rule, *body])


def machine() -> str:
    """The machine a benchmark ran on, and how busy it was, for the table's first line."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def cpu_ticks() -> tuple[int, int]:
    """(all, stolen) CPU time of the machine since boot, in clock ticks (/proc/stat)."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


def stolen_since(start: tuple[int, int]) -> str:
    """How much of the CPU time since ``start`` (cpu_ticks()) the hypervisor took for other
    guests: on a shared VM the CPU figures of a run are inflated by about that much."""
    total, stolen = (now - then for now, then in zip(cpu_ticks(), start, strict=True))
    return f"CPU time stolen by the hypervisor during the run: {100 * stolen / max(total, 1):.0f}%"


def connection_counts(text: str) -> list[int]:
    """--concurrency's comma-separated wrk connection counts, each 1..256."""
    counts = [int(c) for c in text.split(",")]
    if not all(1 <= c <= 256 for c in counts):
        raise SystemExit("--concurrency values must be 1..256")
    return counts


def wait_for_both_upstreams(gateway_url: str, timeout_s: float = 20) -> None:
    """Until the gateway at ``gateway_url`` sees both dialogs instances ready."""
    deadline = time.monotonic() + timeout_s
    while len(ready_upstreams(gateway_url)) < 2:
        if time.monotonic() > deadline:
            raise SystemExit("the gateway did not see both dialogs instances ready")
        time.sleep(0.2)
