"""dialogs: stores and lists private messages, one single-shard query per request."""
