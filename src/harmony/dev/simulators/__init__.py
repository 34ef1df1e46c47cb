"""In-memory simulators of a CRM and an ACD speaking Harmony's generic protocol (docs/protocol.md).

``crm`` creates chats/emails and plays the agents' accept/complete cycle; ``acd`` picks the
longest-idle qualified agent for every routing request. Both are FastAPI apps for local runs,
load tests and end-to-end tests; neither persists anything.
"""
