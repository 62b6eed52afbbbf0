"""Dispatchers: claim due work, plan which of it goes now, send the webhooks, record outcomes.

A timer's way through a dispatcher is a pipeline, one module a stage:

- ``claimer``: due work to leased rows (key claims under advisory locks, ranked claims under a
  binding cap, the resource pass);
- ``planner``: caps, pacing, priority, resource choice, per-host limits and circuits, and why
  the others wait (``hosts`` holds the per-host gate and the breaker);
- ``sender``: HTTP out (the address guard, signing, timeouts, body cap);
- ``recorder``: outcomes buffered and written, retries, holds released, deferrals;
- ``maintenance``: the tick, heartbeat, lease reaping, circuits, partitions;
- ``service``: lifecycle and wiring only; ``clock``: the database clock against the local one.

The claim protocol (states, leases, holds, what happens on each failure) is written once, in
docs/architecture.md, "The claim protocol"; the states and their transitions are defined in
db/states.py.
"""
