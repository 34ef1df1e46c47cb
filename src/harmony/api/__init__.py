"""HTTP API: thin routers over the routing service, plus request plumbing."""
