"""The built-in backends: treq (default) and a raw twisted.web.client.Agent."""
