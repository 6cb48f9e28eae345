"""Build tokens (HS256, aud = prefix/spec, origin, exp) and the per-IP fixed-window rate limit."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from jose import jwt

from binderapi.errors import ForbiddenError
from binderapi.ratelimit import RateLimiter, client_bucket
from binderapi.tokens import BuildTokens, request_origin, token_key

SECRET = "ab" * 32


def tokens(check_origin: bool = True) -> BuildTokens:
    return BuildTokens(SECRET, 300, check_origin)


def test_valid_token_round_trip():
    t = tokens()
    claims = t.verify(t.mint("gh/a/b/HEAD", "frontend.example"), "gh/a/b/HEAD", "frontend.example")
    assert claims["aud"] == "gh/a/b/HEAD" and claims["origin"] == "frontend.example"
    assert claims["exp"] - time.time() == pytest.approx(300, abs=5)


def test_hex_secret_is_decoded_like_binderhub():
    assert token_key(SECRET) == bytes.fromhex(SECRET)
    assert token_key("not hex at all") == b"not hex at all"
    # a token signed by anyone holding the same hex secret (e.g. BinderHub) verifies
    foreign = jwt.encode({"aud": "gh/a/b/HEAD", "origin": "o", "exp": int(time.time()) + 60}, bytes.fromhex(SECRET), algorithm="HS256")
    assert tokens().verify(foreign, "gh/a/b/HEAD", "o")["origin"] == "o"


@pytest.mark.parametrize("case", ["forged", "expired", "audience", "origin", "garbage", "alg-none"])
def test_bad_tokens_are_refused(case):
    t = tokens()
    now = time.time()
    token = {
        "forged": jwt.encode({"aud": "gh/a/b/HEAD", "origin": "o", "exp": int(now) + 60}, "other-secret", algorithm="HS256"),
        "expired": t.mint("gh/a/b/HEAD", "o", now=now - 1000),
        "audience": t.mint("gh/other/repo/HEAD", "o"),
        "origin": t.mint("gh/a/b/HEAD", "evil.example"),
        "garbage": "not.a.jwt",
        "alg-none": "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJhdWQiOiJnaC9hL2IvSEVBRCIsIm9yaWdpbiI6Im8ifQ.",
    }[case]
    with pytest.raises(ForbiddenError, match="Invalid build token"):
        t.verify(token, "gh/a/b/HEAD", "o")


@pytest.mark.parametrize("case", ["no exp", "aud list", "aud list of one", "no aud"])
def test_tokens_without_exp_or_with_a_list_audience_are_refused(case):
    """A token without ``exp`` would be valid forever; ``aud`` as a list (which JWT allows and
    python-jose matches by membership) would let one token pass for several specs."""
    key, exp = bytes.fromhex(SECRET), int(time.time()) + 60
    claims = {
        "no exp": {"aud": "gh/a/b/HEAD", "origin": "o"},
        "aud list": {"aud": ["gh/a/b/HEAD", "gh/c/d/HEAD"], "origin": "o", "exp": exp},
        "aud list of one": {"aud": ["gh/a/b/HEAD"], "origin": "o", "exp": exp},
        "no aud": {"origin": "o", "exp": exp},
    }[case]
    with pytest.raises(ForbiddenError, match="Invalid build token"):
        tokens().verify(jwt.encode(claims, key, algorithm="HS256"), "gh/a/b/HEAD", "o")


def test_origin_check_can_be_switched_off():
    t = tokens(check_origin=False)
    assert t.verify(t.mint("gh/a/b/HEAD", "elsewhere"), "gh/a/b/HEAD", "o")


def test_request_origin_prefers_origin_header():
    assert request_origin("https://frontend.example:8443", "binder.example") == "frontend.example:8443"
    assert request_origin(None, "binder.example") == "binder.example"


def test_token_command_mints_a_verifiable_token():
    env = {"BINDERHUB_BUILD_TOKEN_SECRET": SECRET, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "binderapi", "token", "gh/a/b/HEAD", "--origin", "frontend.example"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert tokens().verify(result.stdout.strip(), "gh/a/b/HEAD", "frontend.example")


def test_token_command_needs_a_secret():
    result = subprocess.run([sys.executable, "-m", "binderapi", "token", "gh/a/b/HEAD", "--origin", "x"],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode != 0 and "build_token_secret" in result.stderr and "Traceback" not in result.stderr


def test_fixed_window():
    limiter = RateLimiter(limit=3, period_seconds=100, clean_seconds=1000)
    states = [limiter.increment("1.2.3.4", now=1000.0 + i) for i in range(5)]
    assert [s.remaining for s in states] == [2, 1, 0, -1, -2]  # keeps counting past the limit
    assert [s.exceeded for s in states] == [False, False, False, True, True]
    assert states[-1].headers() == {"x-ratelimit-limit": "3", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1100"}
    assert states[-1].retry_after(now=1004.0) == 96
    assert limiter.increment("5.6.7.8", now=1005.0).remaining == 2  # per client
    assert limiter.increment("1.2.3.4", now=1100.0).remaining == 2  # a new window


def test_expired_windows_are_swept():
    limiter = RateLimiter(limit=1, period_seconds=10, clean_seconds=60)
    for i in range(100):
        limiter.increment(f"10.0.0.{i}", now=1000.0)
    assert len(limiter) == 100
    limiter.increment("192.0.2.1", now=1000.0 + 61)
    assert len(limiter) == 1


def test_ipv6_clients_share_their_64():
    limiter = RateLimiter(limit=1, period_seconds=100, clean_seconds=1000)
    assert limiter.increment("2001:db8:a:b::1", now=1000.0).remaining == 0
    assert limiter.increment("2001:db8:a:b:1234:5678:9abc:def0", now=1001.0).exceeded  # same /64
    assert not limiter.increment("2001:db8:a:c::1", now=1002.0).exceeded  # the next /64
    assert not limiter.increment("192.0.2.1", now=1003.0).exceeded and limiter.increment("192.0.2.1", now=1004.0).exceeded
    assert client_bucket("2001:db8:a:b::1") == "2001:db8:a:b::/64" and client_bucket("unknown") == "unknown"
