"""The local stack harness: the bundled data set and its split, every party's keys and
stores, the embedded broker with the services as real processes, and ID alignment by
PSI, for the demo, ``fedscreen evaluate``, the benchmark and the tests. A harness, never
a service: it sees every party's data."""
