"""The routing core: the domain model, its rules and use cases, and the ports it needs. No I/O."""
