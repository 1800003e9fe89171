"""SIP node: transports, RFC 3261 transactions, registrar, proxy and dialogs.

Entry point: :class:`meter.sip.node.SipNode`; settings: :class:`meter.sip.settings.SipSettings`;
metering hooks: :mod:`meter.sip.policy`.
"""
