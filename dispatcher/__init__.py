"""Dispatchers: claim due work, plan which of it goes now, send the webhooks, record outcomes.

A timer's way through a dispatcher is a pipeline, one module a stage:

- ``claimer``: due work to leased rows (key claims under advisory locks, ranked claims under a
  binding cap, the resource pass);
- ``planner``: caps, pacing, priority, resource choice, per-host limits and circuits, and why
  the others wait (``hosts`` holds the per-host gate and the breaker);
- ``sender``: HTTP out (the address guard, signing, timeouts, body cap);
- ``recorder``: outcomes buffered and written, retries, holds released, deferrals;
- ``ownership``: until when the leases held are safe to send under (on the monotonic clock),
  and which peers are dead by what this process saw of their heartbeats;
- ``maintenance``: the tick, heartbeat (with the lease renewal), lease reaping, circuits,
  partitions;
- ``pipeline``: one claimed row's way out, each step in one place: claimed, planned (its
  instant, its host), still owned (the last check before the request), sent, recorded; and
  the revocations of claims;
- ``service``: lifecycle and wiring only, the heartbeat's renewal included;
  ``clock``: the database clock against the local one.

The claim protocol (states, leases, fencing tokens, renewal, death by observation, revocation,
what happens on each fault, and why at most one dispatcher sends a given attempt) is written
once, in docs/architecture.md, "The claim protocol" and "Once"; the states and their
transitions are defined in core/states.py.
"""
