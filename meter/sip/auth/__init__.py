"""Authentication and admission for the SIP node (RFC 3261 §22; Kamailio's auth, auth_db and
permissions modules): the digest math (``digest``), nonces that expire and cannot be replayed
(``nonces``), the ``[auth]`` settings (``settings``), and the admission that the proxy core and the
registrar ask before they accept a request (``admission``). The credentials file the operator
manages is ``meter.store.credentials``.
"""
