"""Providers against loopback servers (the real anthropic and openai clients, pointed at a
pytest-httpserver with base_url), the command provider with a script as the model, and the
settings' precedence: flag > environment > config file > default."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from werkzeug import Response

from kforge.gen.config import ConfigError, ProviderConfig, ProviderName, load_config
from kforge.gen.providers import PROVIDERS, make_provider
from kforge.gen.providers._http import price_usage
from kforge.gen.providers.openai_provider import chat_request, is_openai_host
from kforge.gen.types import Message, MissingKeyError, ProviderError, Role

MESSAGES = [Message(Role.SYSTEM, "You write Triton kernels."), Message(Role.USER, "Write rms_norm.")]
CODE = "```python\nimport torch\n\ndef forward(x, weight, eps=1e-6):\n    return x\n```"
QUICK_RETRY = {"retry-after-ms": "10", "retry-after": "0"}  # the SDKs honour these: no multi-second backoff


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No provider setting or key from the developer's shell leaks into a test."""
    for var in ("KFORGE_PROVIDER", "KFORGE_MODEL", "KFORGE_BASE_URL", "KFORGE_TIMEOUT_S", "KFORGE_MAX_RETRIES",
                "KFORGE_TEMPERATURE", "KFORGE_MAX_TOKENS", "KFORGE_COMMAND", "KFORGE_CONFIG", "ANTHROPIC_API_KEY",
                "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


def anthropic_answer(text: str = CODE, model: str = "claude-sonnet-5-5") -> dict:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 1200, "output_tokens": 300}}


def openai_answer(text: str = CODE, model: str = "gpt-4.1-2025-04-14") -> dict:
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 250, "total_tokens": 1250}}


API = {  # provider -> (key variable, request path, answer)
    "anthropic": ("ANTHROPIC_API_KEY", "/v1/messages", anthropic_answer),
    "openai": ("OPENAI_API_KEY", "/v1/chat/completions", openai_answer),
}


def provider_for(name, httpserver, monkeypatch, key="test-key", **settings):
    monkeypatch.setenv(API[name][0], key)
    base = httpserver.url_for("/v1" if name == "openai" else "")
    return make_provider(load_config(provider=name, base_url=base.rstrip("/"), **settings))


def request_body(httpserver, i: int = 0) -> dict:
    return json.loads(httpserver.log[i][0].get_data())


@pytest.mark.parametrize("name", API)
def test_a_normal_answer_with_tokens_cost_and_the_request_as_configured(name, httpserver, monkeypatch):
    _, path, answer = API[name]
    httpserver.expect_request(path, method="POST").respond_with_json(answer())
    provider = provider_for(name, httpserver, monkeypatch, temperature="0.3", max_tokens="4000")
    completion = provider.complete(MESSAGES)
    assert completion.text == CODE and completion.provider == name and completion.attempts == 1
    assert completion.latency_s > 0
    body = request_body(httpserver)
    assert body["max_tokens"] == 4000
    if name == "anthropic":
        assert body["model"] == "claude-sonnet-5-5" and body["system"] == "You write Triton kernels."
        assert body["messages"] == [{"role": "user", "content": "Write rms_norm."}]
        # anthropic 2.x's messages.create takes no temperature: then none is sent
        assert body.get("temperature", 0.3) == 0.3
        assert completion.model == "claude-sonnet-5-5"
        assert (completion.usage.input_tokens, completion.usage.output_tokens) == (1200, 300)
        assert completion.usage.cost_usd == pytest.approx((1200 * 2.0 + 300 * 10.0) / 1e6)
    else:
        assert body["temperature"] == 0.3 and body["model"] == "gpt-4.1"
        assert body["messages"] == [{"role": "system", "content": "You write Triton kernels."},
                                    {"role": "user", "content": "Write rms_norm."}]
        assert completion.model == "gpt-4.1-2025-04-14"
        assert (completion.usage.input_tokens, completion.usage.output_tokens) == (1000, 250)
        assert completion.usage.cost_usd == pytest.approx((1000 * 2.0 + 250 * 8.0) / 1e6)
    headers = httpserver.log[0][0].headers  # anthropic 2.x sends the key as a bearer token, 1.x as x-api-key
    assert headers.get("x-api-key") == "test-key" or headers.get("authorization") == "Bearer test-key"


@pytest.mark.parametrize("name", API)
def test_per_call_parameters_override_the_config(name, httpserver, monkeypatch):
    _, path, answer = API[name]
    httpserver.expect_request(path, method="POST").respond_with_json(answer())
    provider = provider_for(name, httpserver, monkeypatch, model="my-model", max_tokens="4000")
    provider.complete(MESSAGES + [Message(Role.ASSISTANT, "```python"), Message(Role.USER, "go on")],
                      max_tokens=123, temperature=0.0)
    body = request_body(httpserver)
    assert body["model"] == "my-model" and body["max_tokens"] == 123 and body.get("temperature", 0.0) == 0.0
    assert [m["role"] for m in body["messages"]][-3:] == ["user", "assistant", "user"]
    with pytest.raises(TypeError, match="top_p"):
        provider.complete(MESSAGES, top_p=0.9)


@pytest.mark.parametrize("name", API)
def test_an_answer_wrapped_in_prose_comes_back_verbatim(name, httpserver, monkeypatch):
    _, path, answer = API[name]
    text = f"Here is a kernel that keeps rows in registers:\n\n{CODE}\n\nIt should reach 90% of bandwidth."
    httpserver.expect_request(path, method="POST").respond_with_json(answer(text, model="my-local-model"))
    completion = provider_for(name, httpserver, monkeypatch).complete(MESSAGES)
    assert completion.text == text and completion.model == "my-local-model"
    assert completion.usage.cost_usd is None and completion.usage.output_tokens > 0  # no price for that model


@pytest.mark.parametrize("status", [429, 500])
@pytest.mark.parametrize("name", API)
def test_429_and_500_are_retried(name, status, httpserver, monkeypatch):
    _, path, answer = API[name]
    httpserver.expect_ordered_request(path, method="POST").respond_with_json(
        {"error": {"type": "overloaded_error", "message": "slow down"}}, status=status, headers=QUICK_RETRY)
    httpserver.expect_ordered_request(path, method="POST").respond_with_json(answer())
    start = time.monotonic()
    completion = provider_for(name, httpserver, monkeypatch, max_retries="2").complete(MESSAGES)
    assert completion.text == CODE and len(httpserver.log) == 2 and completion.attempts == 2
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("name", API)
def test_retries_run_out_into_one_line_naming_the_status_and_cause(name, httpserver, monkeypatch):
    _, path, _ = API[name]
    httpserver.expect_request(path, method="POST").respond_with_json(
        {"error": {"type": "overloaded_error", "message": "the model is overloaded"}}, status=529, headers=QUICK_RETRY)
    with pytest.raises(ProviderError) as err:
        provider_for(name, httpserver, monkeypatch, max_retries="1").complete(MESSAGES)
    message = str(err.value)
    assert message.startswith(f"{name} (") and "HTTP 529 (after 1 retry)" in message
    assert "the model is overloaded" in message and "\n" not in message
    assert len(httpserver.log) == 2


@pytest.mark.parametrize("name", API)
def test_a_client_error_is_not_retried_and_never_shows_the_key(name, httpserver, monkeypatch):
    _, path, _ = API[name]
    key = "sk-secret-0123456789abcdef"
    httpserver.expect_request(path, method="POST").respond_with_json(
        {"error": {"type": "authentication_error", "message": f"invalid x-api-key {key}"}}, status=401)
    with pytest.raises(ProviderError, match=f"{name} .*HTTP 401: authentication_error: invalid x-api-key") as err:
        provider_for(name, httpserver, monkeypatch, key=key, max_retries="3").complete(MESSAGES)
    assert key not in str(err.value) and "is the API key right?" in str(err.value)
    assert len(httpserver.log) == 1


@pytest.mark.parametrize("name", API)
def test_a_timeout_is_a_provider_error(name, httpserver, monkeypatch):
    _, path, answer = API[name]

    def slow(request):
        time.sleep(1.0)
        return Response(json.dumps(answer()), content_type="application/json")

    httpserver.expect_request(path, method="POST").respond_with_handler(slow)
    provider = provider_for(name, httpserver, monkeypatch, timeout_s="0.5", max_retries="0")
    start = time.monotonic()
    with pytest.raises(ProviderError, match=rf"{name} \(.*\): no answer within 0.5 s .*after 0 retries"):
        provider.complete(MESSAGES)
    assert time.monotonic() - start < 0.95


@pytest.mark.parametrize("name", API)
def test_no_server_listening_is_a_provider_error(name, monkeypatch):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(API[name][0], "test-key")
    provider = make_provider(load_config(provider=name, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0))
    with pytest.raises(ProviderError, match=f"{name} .*cannot connect to http://127.0.0.1:{port}/v1"):
        provider.complete(MESSAGES)


@pytest.mark.parametrize("name", API)
def test_an_empty_answer_or_a_non_api_server_is_a_provider_error(name, httpserver, monkeypatch):
    _, path, answer = API[name]
    httpserver.expect_ordered_request(path, method="POST").respond_with_json(answer("  \n"))
    httpserver.expect_ordered_request(path, method="POST").respond_with_data("<html>a web page</html>",
                                                                             content_type="text/html")
    provider = provider_for(name, httpserver, monkeypatch)
    with pytest.raises(ProviderError, match="the answer has no text"):
        provider.complete(MESSAGES)
    with pytest.raises(ProviderError, match="is base_url right"):
        provider.complete(MESSAGES)


@pytest.mark.parametrize("name", API)
def test_a_missing_key_names_the_variable_and_suggests_the_catalog(name):
    with pytest.raises(MissingKeyError) as err:
        make_provider(load_config(provider=name))
    assert API[name][0] in str(err.value) and "--provider catalog" in str(err.value)


def test_an_openai_compatible_local_server_needs_no_key(httpserver):
    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_json(
        openai_answer(model="qwen2.5-coder"))
    provider = make_provider(load_config(provider="openai", base_url=httpserver.url_for("/v1"), model="qwen2.5-coder"))
    completion = provider.complete(MESSAGES)
    assert completion.text == CODE and completion.usage.cost_usd is None
    body = request_body(httpserver)
    assert body["model"] == "qwen2.5-coder" and body["max_tokens"] == 8192 and "max_completion_tokens" not in body
    assert httpserver.log[0][0].headers["authorization"] == "Bearer kforge-no-key"
    with pytest.raises(MissingKeyError):  # OpenAI's own host does need one
        make_provider(load_config(provider="openai", base_url="https://api.openai.com/v1"))


def test_openai_itself_gets_max_completion_tokens_and_no_temperature_for_reasoning_models():
    assert is_openai_host(None) and is_openai_host("https://api.openai.com/v1")
    assert not is_openai_host("http://localhost:11434/v1") and not is_openai_host("https://notopenai.com/v1")
    chat = chat_request("gpt-4.1", MESSAGES, 0.7, 100, official=True)
    assert (chat["max_completion_tokens"], chat["temperature"]) == (100, 0.7) and "max_tokens" not in chat
    reasoning = chat_request("o4-mini", MESSAGES, 0.7, 100, official=True)
    assert reasoning["max_completion_tokens"] == 100 and "temperature" not in reasoning


def test_prices_follow_the_model_id_with_or_without_its_date():
    assert price_usage("claude-opus-4-5-20251101", 1_000_000, 0).cost_usd == pytest.approx(5.0)
    assert price_usage("claude-opus-4-1-20250805", 0, 1_000_000).cost_usd == pytest.approx(75.0)
    assert price_usage("gpt-4.1-mini-2025-04-14", 1_000_000, 1_000_000).cost_usd == pytest.approx(2.0)
    assert price_usage("claude-opus-9", 10, 10).cost_usd is None  # no guessing from a prefix


# -- command provider ----------------------------------------------------------------------------
def script(tmp_path, body: str) -> str:
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(body))
    return f"{sys.executable} {path}"


def test_the_command_provider_pipes_the_prompt_and_reads_the_answer(tmp_path):
    command = script(tmp_path, """
        import sys
        prompt = sys.stdin.read()
        headers = [l for l in prompt.splitlines() if l.startswith("## ")]
        task = [l for l in prompt.splitlines() if l.startswith("Write")][0]
        print("```python\\n# " + task + " " + ",".join(headers) + "\\n```")
    """)
    completion = make_provider(load_config(provider="command", command=command)).complete(MESSAGES)
    assert completion.text == "```python\n# Write rms_norm. ## system,## user\n```\n"
    assert completion.provider == "command" and completion.model == sys.executable.rsplit("/", 1)[-1]
    assert (completion.usage.input_tokens, completion.usage.cost_usd) == (0, None)


def test_the_command_provider_reports_a_failing_program(tmp_path):
    command = script(tmp_path, "import sys; sys.stderr.write('loading\\nno model loaded'); sys.exit(3)")
    with pytest.raises(ProviderError, match="exited with 3: loading no model loaded$"):
        make_provider(load_config(provider="command", command=command)).complete(MESSAGES)


def test_the_command_provider_kills_a_program_that_hangs_and_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    command = script(tmp_path, f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(30)
    """)
    start = time.monotonic()
    with pytest.raises(ProviderError, match="no answer within 1 s; killed"):
        make_provider(load_config(provider="command", command=command, timeout_s="1")).complete(MESSAGES)
    assert time.monotonic() - start < 8
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the killed grandchild is reaped by init shortly after
        status = subprocess.run(["ps", "-o", "stat=", "-p", str(child)], capture_output=True, text=True).stdout
        if not status.strip() or status.strip().startswith("Z"):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the program's child {child} outlived the timeout")


def test_the_command_provider_without_a_usable_command_says_how_to_set_one(tmp_path):
    with pytest.raises(ProviderError, match="KFORGE_COMMAND"):
        make_provider(load_config(provider="command"))
    with pytest.raises(ProviderError, match="cannot run .*no-such-model-program.*KFORGE_COMMAND / --command"):
        make_provider(load_config(provider="command", command=str(tmp_path / "no-such-model-program"))).complete(MESSAGES)


# -- settings ------------------------------------------------------------------------------------
def write_config(tmp_path, monkeypatch, text: str):
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(text))
    monkeypatch.setenv("KFORGE_CONFIG", str(path))
    return path


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path, monkeypatch):
    write_config(tmp_path, monkeypatch, """
        [generate]
        provider = "openai"
        model = "from-file"
        timeout_s = 30
        max_retries = 5
        max_tokens = 2048
        [providers.openai]
        temperature = 0.1
        timeout_s = 40
        [providers.anthropic]
        temperature = 0.9
    """)
    monkeypatch.setenv("KFORGE_MODEL", "from-env")
    monkeypatch.setenv("KFORGE_MAX_RETRIES", "2")
    c = load_config(max_retries="1")
    assert c.provider is ProviderName.OPENAI  # file
    assert (c.model, c.max_retries, c.temperature, c.timeout_s, c.max_tokens) == ("from-env", 1, 0.1, 40.0, 2048)
    assert load_config().max_retries == 2  # env, with no flag
    monkeypatch.setenv("KFORGE_PROVIDER", "anthropic")  # the per-provider table follows the provider chosen
    assert (load_config().temperature, load_config().timeout_s) == (0.9, 30.0)


def test_defaults_name_a_model_for_each_provider(tmp_path, monkeypatch):
    monkeypatch.setenv("KFORGE_HOME", str(tmp_path / "empty-home"))  # no config file there
    assert load_config() == ProviderConfig(provider=ProviderName.CATALOG, model="catalog")
    assert load_config(provider="anthropic").model == "claude-sonnet-5-5"
    assert load_config(provider=ProviderName.OPENAI).model == "gpt-4.1"
    assert load_config(provider="command", command="/opt/bin/my-agent --fast").model == "my-agent"
    assert load_config(provider="command", command=["a b", "-x"]).command == ("a b", "-x")


def test_the_config_file_defaults_to_the_kforge_home(kforge_home):
    kforge_home.mkdir(parents=True, exist_ok=True)
    (kforge_home / "config.toml").write_text('[generate]\nprovider = "command"\ncommand = "llm -m local"\n')
    assert load_config().command == ("llm", "-m", "local")


@pytest.mark.parametrize("text", ['[providers.anthropic]\napi_key = "x"\n', '[generate]\ntoken = "x"\n',
                                  'openai_api_key = "x"\n', '[generate]\nmodel = "sk-ant-api03-abcdefghijklmnop"\n'])
def test_a_key_in_the_config_file_is_refused(text, tmp_path, monkeypatch):
    path = write_config(tmp_path, monkeypatch, text)
    with pytest.raises(ConfigError, match="API keys are read only from the environment") as err:
        load_config()
    assert str(path) in str(err.value)


def test_a_bad_value_names_its_setting_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("KFORGE_TIMEOUT_S", "soon")
    with pytest.raises(ConfigError, match="environment variable KFORGE_TIMEOUT_S: bad timeout_s: 'soon'"):
        load_config()
    monkeypatch.delenv("KFORGE_TIMEOUT_S")
    with pytest.raises(ConfigError, match="--provider: .*'gemini'; valid: anthropic, openai, catalog, command"):
        load_config(provider="gemini")
    with pytest.raises(ConfigError, match="--max-retries: max_retries must be >= 0, got -1"):
        load_config(max_retries="-1")
    path = write_config(tmp_path, monkeypatch, "[generate]\nmax_tokens = true\n")
    with pytest.raises(ConfigError, match=rf"{path} \[generate\]: bad max_tokens"):
        load_config()
    write_config(tmp_path, monkeypatch, "[generate]\ntimeout = 5\n")
    with pytest.raises(ConfigError, match=r"unknown settings timeout; valid: provider, model"):
        load_config()
    write_config(tmp_path, monkeypatch, "[providers.antropic]\nmodel = 'x'\n")
    with pytest.raises(ConfigError, match=r"\[providers.antropic\]: unknown provider"):
        load_config()
    write_config(tmp_path, monkeypatch, "[generate\n")
    with pytest.raises(ConfigError, match="config file .*config.toml"):
        load_config()
    monkeypatch.setenv("KFORGE_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="KFORGE_CONFIG names .*missing.toml"):
        load_config()


def test_the_cli_flags_reach_the_config_and_leave_the_subcommand_alone():
    from kforge.cli.main import build_parser
    from kforge.gen.config import config_from_args

    args = build_parser().parse_args(["generate", "rms_norm", "--provider", "command", "--command", "my-agent --x",
                                      "--max-tokens", "100", "--timeout", "9", "--temperature", "0"])
    config = config_from_args(args)
    assert args.command == "generate"  # kforge's error line names the subcommand from here
    assert (config.provider, config.command, config.max_tokens, config.timeout_s, config.temperature) == (
        ProviderName.COMMAND, ("my-agent", "--x"), 100, 9.0, 0.0)
    with pytest.raises(ConfigError, match="--timeout: timeout_s must be > 0"):
        config_from_args(build_parser().parse_args(["generate", "rms_norm", "--timeout", "0"]))


def test_a_provider_that_cannot_be_imported_fails_only_when_asked_for(monkeypatch):
    monkeypatch.setitem(PROVIDERS, ProviderName.CATALOG, "kforge.gen.providers.not_written_yet:CatalogProvider")
    with pytest.raises(ProviderError, match="provider 'catalog' cannot be loaded"):
        make_provider(load_config(provider="catalog"))
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    assert make_provider(load_config(provider="openai")).name == "openai"


def test_importing_the_providers_loads_no_llm_sdk():
    code = ("import sys, kforge.gen.providers, kforge.gen.config; "
            "print(*(m in sys.modules for m in ('anthropic', 'openai', 'kforge.gen.providers.catalog')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]
