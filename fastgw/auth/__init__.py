"""Who is calling: API keys (sha256 hashes from the configuration), JWT / OIDC
tokens (the native verifier, JWKS cached and refreshed), and IP rules.

Nothing here does I/O of its own: the JWKS fetch is a function handed in by
the pipeline (it goes through the gateway's upstream client).
"""

from fastgw.auth.ip import IpRules
from fastgw.auth.jwt import JwtAuth
from fastgw.auth.keys import KeyStore
from fastgw.auth.principal import ModelGlobs, Principal

__all__ = ["IpRules", "JwtAuth", "KeyStore", "ModelGlobs", "Principal"]
