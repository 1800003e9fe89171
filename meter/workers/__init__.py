"""Several SIP worker processes on one port (`[sip] workers = N`, issue 11 "both cores").

One Python process handles SIP on one core. With N workers the node's process (the *owner*) keeps
what must be one per node: the license ledger and its metering join, the durable state, the admin
server and /metrics, H.323, Smart Licensing, the cluster sync; it is also SIP worker 0. N-1 more
processes each run their own SIP core (transport, transactions, dialogs, routing) on the same UDP
port, joined with SO_REUSEPORT: Linux hashes each datagram's source and destination to one socket
of the group, so one endpoint stays with one worker.

- **One ledger** (P3 once, counts that never drift): a worker's SIP core asks its questions
  (``on_register``, ``on_invite``) of the owner over a private socket pair and continues when the
  verdict comes back (``meter.sip.hooks.PendingVerdict``); it tells the owner every outcome
  (bindings, answered, confirmed, ended) in order on the same socket. Only the owner charges and
  releases, so a license is charged once whichever worker saw the request.
- **Every worker sees every binding**: a worker sends an AOR's whole binding set with each change;
  the owner applies it to its location (which the admin pages, the state journal and worker 0's
  routing read) and sends it on to the other workers. Bindings expire only in the owner, which then
  releases the registration and sends the empty set: a replica never releases anything.
- **Answers come back to the right worker**: each worker names its own UDP port in Via,
  Record-Route and Path and sends its requests from it; initial requests arrive on the shared port
  and their answers leave by it (``meter.sip.transport.Transports.start_worker``).
- **A worker lost** (killed, crashed): the owner ends that worker's calls and releases its
  pending reservations (their dialogs died with it), then starts a new worker after a second.

A single large peer (one lab registrar or SBC sending everything from one address and port) hashes
to one worker: its traffic is served by one core, the others serve everything else. That is the
same as Kamailio's UDP receivers on one socket would do for a connected peer; spreading it would
need per-message dispatch by Call-ID, which costs more than the parse it would spread.

Files: ``link`` (framing), ``remote`` (a worker's hooks), ``pool`` (the owner's side),
``worker`` (a worker process's main), ``stats`` (one /metrics for all of them).
"""
