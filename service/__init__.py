"""The gRPC service: proto <-> domain converters, errors, health, server lifecycle."""
