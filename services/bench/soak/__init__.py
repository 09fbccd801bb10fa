"""``fedscreen bench --soak``: the federated pipeline under a steady load for a bounded
time, sampled every few seconds, to catch what a 20-second benchmark cannot: memory
that grows without bound and latency that drifts.

The pipeline is the benchmark's (real processes on the embedded broker, a quick
model, 2048-bit Paillier, secure aggregation). Candidates are offered at a fixed rate
in 10 ms bursts, stamped with their send time; every ``interval_s`` a window closes and
the harness samples

- per process (every service, the broker, the harness itself): resident memory
  (``VmRSS``, and ``RssAnon``, the heap's share) and CPU, summed over the process
  group (each service runs in its own session), from ``/proc``;
- throughput: decisions read per second, and the backlog (offered, not yet decided);
- the broker: records written (end offsets of every topic), dead-lettered records
  (end offsets of every ``*.dlq`` topic) and each consumer group's lag (end offset
  minus committed offset);
- once every candidate of the window is decided: latency percentiles of the window's
  candidates (``decided_at - occurred_at``, and at the harness's decision consumer).

The analysis (pure functions at the bottom, unit-tested on synthetic series) fits a
least-squares line to each process's RSS over the second half of the run (MB/hour),
compares the first and last window, and compares the p99 latency of the last windows
with the first windows after warm-up. The verdict's thresholds are in
:class:`Thresholds`; docs/benchmarks.md#soak explains them.

State that is bounded by design is made to reach its bound inside the first half, so
that growth in the second half means a leak: prescreen remembers decided batch ids for
``decided_retention_s`` (production: 3600 s), intake keeps the last 32 event ids and
the screenings inside the frequency-cap window per customer (``rows`` customers, cap
window ``cap_window_s``). The broker is Tansu with in-memory storage, which keeps
every record: its growth is reported per record written, not judged.

The package, one job a module: ``options`` (what a soak is asked to do and the verdict's
thresholds), ``sampling`` (each window and what ``/proc`` says at its end), ``probing``
(the broker's records, dead letters and lag), ``run`` (the load loop, the accounting and
the drain), ``analysis`` (growth and drift, pure), ``report`` (the tables) and
``command`` (``fedscreen bench --soak``: run, print, write the JSON).
"""
