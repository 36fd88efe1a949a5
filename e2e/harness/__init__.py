"""End-to-end harness for apiguard: a real Envoy, an echo upstream, a JWKS server, tokens."""

from .echo import EchoUpstream
from .envoy import Envoy, EnvoyStartError, ExternalEnvoy
from .http import Response, request
from .jwks_server import JwksServer

__all__ = [
    "EchoUpstream",
    "Envoy",
    "EnvoyStartError",
    "ExternalEnvoy",
    "JwksServer",
    "Response",
    "request",
]
