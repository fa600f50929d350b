"""Long operations as durable jobs on Django's Tasks API (issue 13).

- `queue`      create an Operation and put its id on the queue; cancel; summaries
- `downgrade`  the web/command side of a queued downgrade: gates 1-6, the code spent, then queued
- `tasks`      the one task, `run_operation(operation_id)`: only an id enters the queue
- `worker`     what a worker does with an id: claim, heartbeat, progress, cancel, finish
- `runners`    one function per kind: snapshot, sync, downgrade
- `liveness`   the per-operation lock a worker holds while it runs a job
- `reconcile`  jobs whose worker died: interrupted, never run twice; snapshots retried
"""
