"""Provider adapters: canonical request -> upstream HTTP request -> canonical response."""
