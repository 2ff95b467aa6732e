"""The exchange_connector's heart: the broadcast hub (one upstream subscription per topic, fanned
out to bounded subscriber mailboxes), the ExchangeService server, freshness and stall tracking,
shared calls and bearer-token auth. It never imports the client library."""
