"""The one home of Lishui's contract: topics, payloads, metric catalogue, settings, database access
and the service lifecycle. Every service imports from here; no service imports another."""
