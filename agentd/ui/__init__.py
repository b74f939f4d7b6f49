"""Views for people: the status table, `agentd top`, readable events, `agentd report` (PNG)."""
