"""Action citus_cluster_wait: wait for a Citus shard rebalance or drain, printing progress.

Ansible cannot print from inside an ``until`` loop, so this action polls from the controller:
each poll runs community.postgresql.postgresql_query on the coordinator and prints one line
(moves done / total, the move in flight). It fails with the job's error text when the job
fails, and with the progress so far when the timeout passes (the job itself keeps running).

kind=rebalance: polls citus_rebalance_status() for job_id until the job is finished.
kind=drain:     polls the shards left on node_name:node_port while the async task async_jid
                (citus_drain_node) runs, then reports that task's outcome.
"""

from __future__ import annotations

import time
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

DOCUMENTATION = r"""
---
module: citus_cluster_wait
short_description: Wait for a Citus rebalance or drain, printing progress
description:
  - Polls the coordinator and prints one progress line per poll; fails with the job's error
    text or on timeout.
options:
  kind:
    description: What to wait for.
    type: str
    choices: [rebalance, drain]
    required: true
  job_id:
    description: Background job of citus_rebalance_start (kind=rebalance).
    type: int
  node_name:
    description: Node being drained (kind=drain).
    type: str
  node_port:
    description: Port of the node being drained (kind=drain).
    type: int
  async_jid:
    description: Ansible async job id of the citus_drain_node task (kind=drain).
    type: str
  timeout:
    description: Seconds before failing.
    type: int
    default: 3600
  poll_interval:
    description: Seconds between polls.
    type: int
    default: 5
  login_unix_socket:
    description: PostgreSQL socket directory on the coordinator.
    type: str
    default: /var/run/postgresql
  login_port:
    description: PostgreSQL port on the coordinator.
    type: int
    default: 5432
  login_db:
    description: Database holding the citus extension.
    type: str
    required: true
"""

REBALANCE_STATUS = """
SELECT job_id, state::text AS state, coalesce(details, '{}'::jsonb) AS details
FROM citus_rebalance_status() WHERE job_id = %(job_id)s
UNION ALL
SELECT job_id, state::text, coalesce(details, '{}'::jsonb)
FROM citus_job_status(%(job_id)s)
WHERE NOT EXISTS (SELECT 1 FROM citus_rebalance_status() WHERE job_id = %(job_id)s)
"""

TASK_ERRORS = """
SELECT task_id, status::text AS status, message FROM pg_dist_background_task
WHERE job_id = %(job_id)s AND coalesce(message, '') <> '' ORDER BY task_id
"""

SHARDS_LEFT = """
SELECT count(*) AS shards, coalesce(sum(shard_size), 0)::bigint AS bytes FROM citus_shards
WHERE nodename = %(name)s AND nodeport = %(port)s AND citus_table_type <> 'reference'
"""

FINISHED = "finished"
FAILED = ("failed", "cancelled")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(
        (
            "kind",
            "job_id",
            "node_name",
            "node_port",
            "async_jid",
            "timeout",
            "poll_interval",
            "login_unix_socket",
            "login_port",
            "login_db",
        )
    )

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        _, args = self.validate_argument_spec(
            argument_spec={
                "kind": {"type": "str", "required": True, "choices": ["rebalance", "drain"]},
                "job_id": {"type": "int"},
                "node_name": {"type": "str"},
                "node_port": {"type": "int"},
                "async_jid": {"type": "str"},
                "timeout": {"type": "int", "default": 3600},
                "poll_interval": {"type": "int", "default": 5},
                "login_unix_socket": {"type": "str", "default": "/var/run/postgresql"},
                "login_port": {"type": "int", "default": 5432},
                "login_db": {"type": "str", "required": True},
            },
            required_if=[
                ["kind", "rebalance", ["job_id"]],
                ["kind", "drain", ["node_name", "node_port", "async_jid"]],
            ],
        )
        self._login = {
            "login_user": "postgres",
            "login_unix_socket": args["login_unix_socket"],
            "login_port": args["login_port"],
            "login_db": args["login_db"],
        }
        self._host = task_vars.get("inventory_hostname", "?")
        self._task_vars = task_vars
        deadline = time.monotonic() + max(1, args["timeout"])
        interval = max(1, args["poll_interval"])
        if args["kind"] == "rebalance":
            result.update(self._wait_rebalance(args["job_id"], deadline, interval, args["timeout"]))
        else:
            result.update(
                self._wait_drain(
                    args["node_name"],
                    args["node_port"],
                    args["async_jid"],
                    deadline,
                    interval,
                    args["timeout"],
                )
            )
        result["changed"] = False
        return result

    # --- helpers ----------------------------------------------------------------------------
    def _query(self, query: str, named_args: dict[str, Any]) -> list[dict[str, Any]]:
        res = self._execute_module(
            module_name="community.postgresql.postgresql_query",
            module_args={**self._login, "query": query, "named_args": named_args},
            task_vars=self._task_vars,
        )
        if res.get("failed"):
            raise AnsibleActionFail(f"query on the coordinator failed: {res.get('msg', res)}")
        rows: list[dict[str, Any]] = res.get("query_result") or []
        return rows

    def _say(self, line: str) -> None:
        display.display(f"  [{self._host}] {line}", color="cyan")

    # --- rebalance --------------------------------------------------------------------------
    def _wait_rebalance(
        self, job_id: int, deadline: float, interval: int, timeout: int
    ) -> dict[str, Any]:
        progress: list[str] = []
        while True:
            rows = self._query(REBALANCE_STATUS, {"job_id": job_id})
            if not rows:
                raise AnsibleActionFail(
                    f"rebalance job {job_id} not found (citus_rebalance_status)"
                )
            state = str(rows[0]["state"])
            details = rows[0]["details"] or {}
            counts: dict[str, int] = details.get("task_state_counts") or {}
            total = sum(int(v) for v in counts.values())
            done = int(counts.get("done", 0))
            line = f"rebalance job {job_id}: {done}/{total} moves done ({state})"
            tasks = details.get("tasks") or []
            moving = [t for t in tasks if t.get("state") == "running"]
            if moving:
                hosts = moving[0].get("hosts") or {}
                size = (moving[0].get("size") or {}).get("source")
                line += f", moving {hosts.get('source')} -> {hosts.get('target')}"
                if size:
                    line += f" ({size})"
            retried = [t for t in tasks if t.get("retried") and t.get("message")]
            last_error = str(retried[0]["message"]).strip() if retried else ""
            if last_error:
                line += f"; retrying after: {last_error[:200]}"
            self._say(line)
            progress.append(line)
            summary = {
                "job_id": job_id,
                "state": state,
                "moves_done": done,
                "moves_total": total,
                "progress": progress,
            }
            if state == FINISHED:
                return summary
            if state in FAILED or state in ("failing", "cancelling"):
                errors = self._query(TASK_ERRORS, {"job_id": job_id})
                text = "; ".join(
                    f"task {e['task_id']} ({e['status']}): {str(e['message']).strip()}"
                    for e in errors
                )
                raise AnsibleActionFail(
                    f"rebalance job {job_id} {state} after {done}/{total} moves: "
                    f"{text or 'no error message recorded'}",
                    result=summary,
                )
            if time.monotonic() >= deadline:
                raise AnsibleActionFail(
                    f"rebalance job {job_id} still {state} after {timeout} s ({done}/{total} moves"
                    " done)"
                    + (f"; its moves fail and are retried: {last_error}" if last_error else "")
                    + ". It keeps running in the background: follow it with SELECT * FROM"
                    " citus_rebalance_status(); stop it with SELECT citus_rebalance_stop();",
                    result=summary,
                )
            time.sleep(interval)

    # --- drain ------------------------------------------------------------------------------
    def _async_status(self, jid: str) -> dict[str, Any]:
        async_dir = self._remote_expand_user(
            self.get_shell_option("async_dir", default="~/.ansible_async")
        )
        res: dict[str, Any] = self._execute_module(
            module_name="ansible.legacy.async_status",
            module_args={"jid": jid, "mode": "status", "_async_dir": async_dir},
            task_vars=self._task_vars,
        )
        return res

    def _wait_drain(
        self, name: str, port: int, jid: str, deadline: float, interval: int, timeout: int
    ) -> dict[str, Any]:
        progress: list[str] = []
        first: int | None = None
        while True:
            job = self._async_status(jid)
            row = self._query(SHARDS_LEFT, {"name": name, "port": port})[0]
            left = int(row["shards"])
            first = left if first is None else max(first, left)
            line = (
                f"drain {name}:{port}: {first - left}/{first} shards moved off,"
                f" {left} left ({int(row['bytes']) // (1024 * 1024)} MiB)"
            )
            self._say(line)
            progress.append(line)
            summary = {"node": f"{name}:{port}", "shards_left": left, "progress": progress}
            if job.get("finished"):
                if job.get("failed") or job.get("rc", 0) not in (0, None):
                    raise AnsibleActionFail(
                        f"citus_drain_node({name}, {port}) failed: "
                        f"{job.get('msg') or job.get('stderr') or job}",
                        result=summary,
                    )
                if left:
                    raise AnsibleActionFail(
                        f"citus_drain_node({name}, {port}) returned but {left} shards are still"
                        " on the node: nothing was removed; look at citus_shards",
                        result=summary,
                    )
                return summary
            if job.get("failed") and not job.get("started", True):
                raise AnsibleActionFail(f"async job {jid} not found: {job.get('msg')}")
            if time.monotonic() >= deadline:
                raise AnsibleActionFail(
                    f"draining {name}:{port} still running after {timeout} s ({left} shards"
                    " left); the node was not removed. citus_drain_node keeps running on the"
                    " coordinator; run the playbook again once it is done",
                    result=summary,
                )
            time.sleep(interval)
