"""The exchange side of the architecture: the Exchange interface and its adapters, the broadcast
hub, the ExchangeService server and the RemoteExchange client."""
