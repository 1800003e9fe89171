"""The lab Smart Software Manager (`meter ssm`): the other end of the node's Smart Licensing agent.

A small real service for a lab without Cisco's cloud: smart and virtual accounts, license pools
per tag, registration tokens, product instances and their compliance, served over HTTPS with a
CA of its own, speaking the protocol in docs/smart-protocol.md (contract C). It lives beside the
node, not inside it: nothing under meter/ imports this package but the CLI.
"""
