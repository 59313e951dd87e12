"""The TLS policy: always verify, optionally against a custom CA bundle."""

from __future__ import annotations

from twisted.internet.ssl import trustRootFromCertificates
from twisted.web.client import BrowserLikePolicyForHTTPS

from .settings import effective_ca_bundle, load_ca_bundle


def build_policy() -> BrowserLikePolicyForHTTPS:
    """Browser-like verification (service_identity checks DNS and IP names);
    the CA bundle in force, when there is one, replaces the platform roots."""
    bundle = effective_ca_bundle()
    if bundle is None:
        return BrowserLikePolicyForHTTPS()
    path, source = bundle
    return BrowserLikePolicyForHTTPS(trustRoot=trustRootFromCertificates(load_ca_bundle(path, source)))
