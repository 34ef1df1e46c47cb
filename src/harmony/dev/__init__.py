"""Developer tooling, not production: the dev stack (`harmony up`, `demo`) and the simulators."""
