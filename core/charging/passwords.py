"""Per-pile Basic-auth passwords, stored as salted scrypt hashes (never in plaintext).

Format: ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``, so parameters can be raised later without
invalidating stored hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

_LOG2_N, _R, _P, _DKLEN = 14, 8, 1, 32


def hash_password(password: str, *, log2_n: int = _LOG2_N) -> str:
    if not password:
        raise ValueError("empty password")
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=1 << log2_n, r=_R, p=_P, dklen=_DKLEN, maxmem=64 * 1024 * 1024
    )
    b64 = base64.b64encode
    return f"scrypt${log2_n}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, log2_n, r, p, salt_b64, hash_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
        digest = hashlib.scrypt(
            password.encode(),
            salt=salt,
            n=1 << int(log2_n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=64 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)
