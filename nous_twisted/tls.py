"""The TLS policy: always verify, optionally against a custom CA bundle."""

from __future__ import annotations

import os
import re

from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.web.client import BrowserLikePolicyForHTTPS

from .settings import Settings

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)

# (path, where it came from), or None for the platform's trust roots.
Bundle = tuple[str, str] | None


def load_ca_bundle(path: str, source: str) -> list[Certificate]:
    """The certificates of a PEM file; a clear ValueError when it has none."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{source} must be a path to a PEM file, not {type(path).__name__}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{source} = {str(path)!r}: cannot read the CA bundle: {e.strerror}") from None
    blocks = _PEM_CERT.findall(data)
    if not blocks:
        raise ValueError(f"{source} = {str(path)!r}: no PEM certificate found in the file")
    try:
        return [Certificate.loadPEM(b) for b in blocks]
    except Exception as e:
        raise ValueError(f"{source} = {str(path)!r}: a certificate does not parse: {e}") from None


def effective_bundle(settings: Settings) -> Bundle:
    """The CA bundle in force and where it came from, or None for platform trust."""
    if settings.ca_bundle is not None:
        return settings.ca_bundle, "configure(ca_bundle=...)"
    env = os.environ.get("SSL_CERT_FILE")
    if env:
        return env, "the environment variable SSL_CERT_FILE"
    return None


def build_policy(bundle: Bundle) -> BrowserLikePolicyForHTTPS:
    """Browser-like verification (service_identity checks DNS and IP names);
    ``bundle``, when given, replaces the platform roots."""
    if bundle is None:
        return BrowserLikePolicyForHTTPS()
    path, source = bundle
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(load_ca_bundle(path, source)))
