"""H.323: the RAS gatekeeper (standalone) and RAS forwarding (inline). See node.py, gatekeeper.py, inline.py, policy.py."""
