"""Process chaos: real nodes behind a fault-injecting proxy, checked for linearizability."""
