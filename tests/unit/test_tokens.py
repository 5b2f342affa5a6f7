"""Tokens are pasted into shells and editor settings, so their shape matters as much as their randomness."""

from __future__ import annotations

import stat

from bridge_server.server.tokens import load_or_create_token, new_token, rotate_token


def test_a_fresh_token_can_follow_dash_dash_token_on_a_command_line():
    # token_urlsafe alone begins with "-" once in 64 draws; 2000 draws would hit that ~31 times.
    tokens = [new_token() for _ in range(2000)]
    assert not any(token.startswith("-") for token in tokens)
    assert len(set(tokens)) == len(tokens)
    assert all(token.startswith("ace_") and len(token) == 47 for token in tokens)


def test_the_token_file_is_private_kept_across_starts_and_replaced_by_rotate(tmp_path):
    first = load_or_create_token(tmp_path)
    assert load_or_create_token(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600
    rotated = rotate_token(tmp_path)
    assert rotated != first and load_or_create_token(tmp_path) == rotated


def test_a_token_written_by_an_older_release_is_still_accepted(tmp_path):
    (tmp_path / "token").write_text("-oldStyleTokenStartingWithADash\n")
    assert load_or_create_token(tmp_path) == "-oldStyleTokenStartingWithADash"
