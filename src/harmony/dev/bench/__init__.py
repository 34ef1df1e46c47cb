"""`harmony bench`: Harmony's benchmark on PostgreSQL against the machine's own ceiling.

Modules: ``runner`` (the parts in order), ``stack`` (database and processes), ``phase`` (one
timed rate), ``peers`` (the fast ACD and CRM), ``load`` (the open-loop generator), ``wire`` (cheap
HTTP), ``served`` (``harmony serve`` with SQL counting), ``stats`` and ``report``.
"""
