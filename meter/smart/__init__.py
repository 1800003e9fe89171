"""Smart Licensing's agent: the node's side of the conversation with a Smart Software Manager."""
