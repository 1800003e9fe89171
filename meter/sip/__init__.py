"""SIP node, split along Kamailio's concerns (the concepts, not the C):

- transport (``transport``: UDP/TCP sockets, connections keyed by (transport, host, port))
- tm (``transaction``: RFC 3261 §17 state machines; ``core``: the §16 proxy core)
- rr and lookup (``router``, ``routing``: Route/Record-Route, next hops, connection reuse)
- registrar and usrloc (``registrar``: REGISTER handling; ``location``: the bindings)
- dialog (``call_control``: what happens to calls; ``dialogs``: the call table;
  ``session_timer``: RFC 4028)

Entry point: :class:`meter.sip.node.SipNode`; settings: :class:`meter.sip.settings.SipSettings`;
the metering hooks' contract: :mod:`meter.sip.hooks`. A new header edit goes where its purpose
lives (the proxy core for RFC 3261 §16.6 edits, ``call_control`` for a call's, ``registrar`` for
a REGISTER's); a new transport goes in ``transport`` with its key's first element.
"""
