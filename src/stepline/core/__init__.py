"""The pure core: definitions, validation, DAG logic and states. No I/O, no adapters."""
