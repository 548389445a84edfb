"""Secrets never leave: kforge.redact removes every known secret value from text and JSON data."""
from __future__ import annotations

from kforge.redact import denied, redact, redact_data

ENV = {"ANTHROPIC_API_KEY": "sk-ant-0123456789abcdef", "GITHUB_TOKEN": "ghp_abcdefghijklmnop",
       "MY_SECRET": "hunter2hunter2", "PATH": "/usr/bin:/bin", "SHORT_TOKEN": "abc"}


def test_denied_names_are_the_secret_looking_ones():
    assert denied("OPENAI_API_KEY") and denied("github_token") and denied("AWS_REGION")
    assert not denied("PATH") and not denied("TRITON_INTERPRET")


def test_every_secret_value_is_replaced_and_ordinary_text_kept():
    text = "key sk-ant-0123456789abcdef and ghp_abcdefghijklmnop in /usr/bin:/bin, abc"
    out = redact(text, env=ENV)
    assert "sk-ant" not in out and "ghp_" not in out
    assert "[redacted ANTHROPIC_API_KEY]" in out and "[redacted GITHUB_TOKEN]" in out
    assert "/usr/bin:/bin" in out and out.endswith(", abc")  # PATH is not secret, a 3-char value is too short


def test_a_secret_inside_a_longer_one_is_removed_whole():
    env = {"A_KEY": "abcdefgh", "B_KEY": "xxabcdefghyy"}
    assert redact("v=xxabcdefghyy", env=env) == "v=[redacted B_KEY]"


def test_json_data_keys_and_nested_values_and_extra_secrets():
    data = {"reason": "seed 8812734512 leaked", "nested": [{"hunter2hunter2": "ok"}], "n": 3}
    out = redact_data(data, {"secret seed": "8812734512"}, env=ENV)
    assert out == {"reason": "seed [redacted secret seed] leaked", "nested": [{"[redacted MY_SECRET]": "ok"}], "n": 3}
