"""The analysis gate's ``prometheus`` provider (deploy_master.gates.prometheus): pure logic.

Its settings and their errors, the placeholders and their escaping, the recipes' queries, the
parsing of an instant query's answer, the hidden credentials.  The real thing, a Prometheus
scraping HAProxy's exporter while a release fails, is tests/integration/test_prometheus.py.
"""

import copy
import json
import pickle
import re

import pytest
import salt.payload
from salt.exceptions import SaltInvocationError
from deploy_master.gates import prometheus as prom

WHERE = "env 'pro'"
URL = "http://127.0.0.1:9090"
OWN = {
    "requests": 'sum(increase(http_responses_total{server=~"{{ servers }}"}[{{ window }}]))',
    "errors": 'sum(increase(http_responses_total{server=~"{{servers}}",code="5xx"}[{{ window }}]))',
}


def _settings(**raw):
    return prom.settings({"url": URL, **raw}, WHERE)


def _refused(match, **raw):
    with pytest.raises(SaltInvocationError, match=match) as exc:
        prom.settings(raw, WHERE)
    return str(exc.value)


# --------------------------------------------------------------------------- settings


def test_a_recipe_gives_ready_queries_for_its_backend():
    s = _settings(recipe="haproxy", backend="rainbow", bake=10, max_error_rate="1%", provider="prometheus")
    assert s == {"url": URL, "recipe": "haproxy", "backend": "rainbow", "queries": None, "timeout": 10,
                 "basic_auth": None, "bearer_token": None}
    q = prom.queries_of(s)
    assert q["requests"] == ('sum(increase(haproxy_server_http_responses_total{proxy="rainbow",'
                             'server=~"{{ servers }}"}[{{ window }}]))')
    assert q["errors"] == ('sum(increase(haproxy_server_http_responses_total{proxy="rainbow",'
                           'server=~"{{ servers }}",code="5xx"}[{{ window }}]))')
    assert "haproxy_server_response_time_average_seconds" in q["latency_ms"] and q["latency_ms"].startswith("1000 *")
    n = prom.queries_of(_settings(recipe="nginx", backend="app", url=URL + "/"))
    assert n["errors"] == ('sum(increase(nginx_vts_upstream_requests_total{upstream="app",backend=~"{{ servers }}",'
                           'code="5xx"}[{{ window }}]))')
    assert 'code="total"' in n["requests"] and "nginx_vts_upstream_response_seconds_total" in n["latency_ms"]
    for recipe in prom.RECIPES.values():  # every recipe query passes the checks a user's query gets
        for key, query in recipe.items():
            prom.check_query(query, WHERE, key, placeholders=("servers", "window", "backend"))


def test_the_pillar_schema_knows_every_key():
    assert tuple(prom.PILLAR) == prom.KEYS
    assert prom.PILLAR["recipe"]["enum"] == list(prom.RECIPES)


def test_a_backend_name_is_quoted_for_promql():
    q = prom.queries_of(_settings(recipe="haproxy", backend='we"b\\x'))["requests"]
    assert 'proxy="we\\"b\\\\x"' in q


def test_own_queries_latency_optional_and_timeout():
    s = _settings(queries=OWN, timeout="2.5")
    assert s["queries"] == {"requests": OWN["requests"], "errors": OWN["errors"], "latency_ms": None}
    assert s["recipe"] is None and s["backend"] is None and s["timeout"] == 2.5 and prom.queries_of(s) == s["queries"]


def test_the_settings_are_valid_settings_again():
    """A stage that changes some keys is parsed over its env's settings (the gate's ``options``)."""
    for raw in ({"recipe": "nginx", "backend": "app", "basic_auth": {"username": "u", "password": "pw-S3cret"}},
                {"queries": OWN, "bearer_token": "tok-S3cret", "timeout": 3}):
        s = _settings(**raw)
        assert prom.settings(s, WHERE) == s and prom.authorization(prom.settings(s, WHERE)) == prom.authorization(s)
        stage = prom.settings({**s, "timeout": 7}, WHERE)
        assert stage["timeout"] == 7 and prom.authorization(stage) == prom.authorization(s)


@pytest.mark.parametrize("raw, match", [
    ({"recipe": "haproxy", "backend": "b"}, r"analysis:url is required"),
    ({"url": "ftp://x", "recipe": "haproxy", "backend": "b"}, r"analysis:url 'ftp://x' must be an http"),
    ({"url": "http://u:pw@x:9090", "recipe": "haproxy", "backend": "b"}, r"analysis:url must not carry credentials"),
    ({"url": "http://x:9090/?a=1", "recipe": "haproxy", "backend": "b"}, r"must have no query or fragment"),
    ({"url": "http://x:99999", "recipe": "haproxy", "backend": "b"}, r"has a bad port"),
    ({"url": URL}, r"analysis:recipe or analysis:queries: give one of them"),
    ({"url": URL, "recipe": "haproxy", "queries": OWN}, r"give one of them"),
    ({"url": URL, "recipe": "envoy", "backend": "b"}, r"analysis:recipe 'envoy' must be one of haproxy, nginx"),
    ({"url": URL, "recipe": "haproxy"}, r"analysis:backend is required by recipe haproxy: the HAProxy backend"),
    ({"url": URL, "queries": OWN, "backend": "b"}, r"analysis:backend is for a recipe"),
    ({"url": URL, "queries": {"requests": OWN["requests"]}}, r"analysis:queries:errors is required"),
    ({"url": URL, "queries": "up"}, r"analysis:queries must be a dict of requests, errors, latency_ms"),
    ({"url": URL, "recipe": "haproxy", "backend": "b", "timeout": 0}, r"analysis:timeout 0 must be a number"),
    ({"url": URL, "recipe": "haproxy", "backend": "b", "timeout": 600}, r"from 0.5 to 120"),
    ({"url": URL, "recipe": "haproxy", "backend": "b", "basic_auth": "u:p"}, r"analysis:basic_auth must be a dict"),
    ({"url": URL, "recipe": "haproxy", "backend": "b", "basic_auth": {"username": "u"}},
     r"analysis:basic_auth:password must be a non-empty string"),
    ({"url": URL, "recipe": "haproxy", "backend": "b", "basic_auth": {"username": "u", "password": "p"},
      "bearer_token": "t"}, r"analysis:basic_auth and analysis:bearer_token: give one of them"),
])
def test_bad_settings_name_the_key(raw, match):
    message = _refused(match, **raw)
    assert message.startswith(f"{WHERE}: ")


@pytest.mark.parametrize("key, near", [("recpie", "'recipe'"), ("bakend", "'backend'"), ("querys", "'queries'"),
                                       ("timout", "'timeout'"), ("max_eror_rate", "'max_error_rate'")])
def test_a_misspelt_key_gets_the_nearest(key, near):
    _refused(rf"unknown analysis key '{key}' \(provider prometheus\); did you mean {near}\?",
             url=URL, recipe="haproxy", backend="b", **{key: 1})


def test_a_misspelt_nested_key_gets_the_nearest():
    _refused(r"unknown analysis key queries:'request' .*did you mean queries:'requests'\?",
             url=URL, queries={"request": OWN["requests"], "errors": OWN["errors"]})
    _refused(r"did you mean basic_auth:'username'\?", url=URL, recipe="haproxy", backend="b",
             basic_auth={"user": "u", "password": "p"})


@pytest.mark.parametrize("query, match", [
    ('sum(increase(x{server=~"{{ server }}"}[{{ window }}]))', r"has an unknown placeholder '\{\{ server \}\}'; "
                                                               r"did you mean '\{\{ servers \}\}'\?"),
    ('sum(increase(x{server=~"{{ servers }}"}[{{ bake }}]))', r"has an unknown placeholder '\{\{ bake \}\}'; known: "),
    ("sum(increase(x[{{ window }}]))", r"must select the group's servers with \{\{ servers \}\}"),
    ("sum(increase(x{server=~'{{ servers }}'}[1m]))", r"must have \{\{ servers \}\} inside double quotes"),
    ("sum(increase(x{server=~`{{ servers }}`}[1m]))", r"must have \{\{ servers \}\} inside double quotes"),
    ('sum(x{a="\\"", server=~{{ servers }}})', r"must have \{\{ servers \}\} inside double quotes"),
    ("", r"must be a PromQL query"),
    ("x" * 5000 + '{s=~"{{ servers }}"}', r"is 5020 characters long"),
])
def test_bad_queries_are_refused(query, match):
    _refused(r"analysis:queries:requests " + match, url=URL, queries={"requests": query, "errors": OWN["errors"]})


def test_a_placeholder_may_sit_inside_a_longer_string():
    q = 'sum(increase(x{instance=~"({{ servers }}):9100",job="a\\"b"}[{{ window }}]))'
    assert prom.check_query(q, WHERE, "queries:requests") == q


# --------------------------------------------------------------------------- credentials


def test_credentials_are_hidden_everywhere_but_the_header():
    s = _settings(recipe="haproxy", backend="b", basic_auth={"username": "deploy", "password": "pw-S3cret"})
    assert prom.authorization(s) == "Basic ZGVwbG95OnB3LVMzY3JldA=="  # deploy:pw-S3cret
    gate = {"bake": 10, "options": s}  # as the gate keeps it, in the record and the event
    for text in (str(gate), repr(gate), json.dumps(gate), str(salt.payload.loads(salt.payload.dumps(gate)))):
        assert "S3cret" not in text and "deploy" not in text and "ZGVwbG95" not in text, text
        assert "<hidden>" in text
    password = s["basic_auth"]["password"]
    for twin in (copy.deepcopy(s)["basic_auth"]["password"], pickle.loads(pickle.dumps(password))):  # noqa: S301
        assert twin.reveal() == "pw-S3cret" and str(twin) == "<hidden>"
    bearer = _settings(recipe="haproxy", backend="b", bearer_token="tok-S3cret")
    assert prom.authorization(bearer) == "Bearer tok-S3cret" and "S3cret" not in json.dumps(bearer)
    assert prom.authorization(_settings(recipe="haproxy", backend="b")) is None


@pytest.mark.parametrize("auth", [{"basic_auth": {"username": "u", "password": "pw-S3cret\nX: y"}},
                                  {"bearer_token": "tok-S3cret\r\n"},
                                  {"basic_auth": {"username": "u:S3cret", "password": "p"}}])
def test_a_bad_credential_is_refused_without_its_value(auth):
    message = _refused(r"analysis:(basic_auth:password|bearer_token|basic_auth:username) must",
                       url=URL, recipe="haproxy", backend="b", **auth)
    assert "S3cret" not in message


# --------------------------------------------------------------------------- placeholders


def _promql_unquote(text):
    """The inside of a double-quoted PromQL string, unescaped as Prometheus' lexer does."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text)


@pytest.mark.parametrize("servers", [["web-1", "web-2"], ["a.b", "a|b", "x(y)", "p+q*", "[s]", "c\\d", "e$^", "f{2}"],
                                     ["10.0.0.1:8080"], ['q"uote']])
def test_servers_regex_matches_exactly_the_group(servers):
    rendered = prom.render('x{server=~"{{ servers }}"}', servers, "5s")
    inside = re.fullmatch(r'x\{server=~"(.*)"\}', rendered).group(1)
    pattern = re.compile(f"^(?:{_promql_unquote(inside)})$")  # Prometheus anchors label regexes
    for name in servers:
        assert pattern.match(name), (name, inside)
    for other in ("web-10", "web-", "ab", "a", "x", "10.0.0.1:80801", "10a0a0a1:8080", "web-1|web-2", ""):
        if other not in servers:
            assert not pattern.match(other), (other, inside)


def test_render_fills_both_placeholders_and_sorts_servers():
    q = prom.render(OWN["errors"], ["web-3", "web-1", "web-3"], prom.duration(62.2))
    assert q == 'sum(increase(http_responses_total{server=~"web-1|web-3",code="5xx"}[63s]))'


@pytest.mark.parametrize("seconds, text", [(0.2, "1s"), (1.0, "1s"), (10.0000000001, "10s"), (10.4, "11s"),
                                           (63, "63s")])
def test_duration_rounds_up_to_whole_seconds(seconds, text):
    assert prom.duration(seconds) == text


# --------------------------------------------------------------------------- an instant query's answer


@pytest.mark.parametrize("data, expected", [
    ({"resultType": "vector", "result": [{"metric": {}, "value": [1700000000.1, "123.4"]}]}, 123.4),
    ({"resultType": "scalar", "result": [1700000000.1, "7"]}, 7.0),
])
def test_one_number_is_read(data, expected):
    assert prom._value(data) == expected


@pytest.mark.parametrize("data, match", [
    ({"resultType": "vector", "result": []}, "returned no series"),
    ({"resultType": "vector", "result": [{"value": [1, "1"]}, {"value": [1, "2"]}]}, "returned 2 series, not one"),
    ({"resultType": "matrix", "result": []}, "returned a matrix"),
    ({"resultType": "vector", "result": [{"value": [1, "NaN"]}]}, "gave NaN"),
    ({"resultType": "scalar", "result": [1, "+Inf"]}, r"gave \+Inf"),
])
def test_anything_but_one_number_says_why(data, match):
    with pytest.raises(ValueError, match=match):
        prom._value(data)


class _Ctx:
    def __init__(self, new, old, servers=None):
        self.new, self.old, self.servers = new, old, servers or {}


def test_a_window_without_old_servers_asks_nothing_for_them(monkeypatch):
    asked = []

    def fake(url, query, at, timeout, authorization=None, opener=None):
        asked.append(query)
        return {"requests": 200.4, "errors": 3.0}.get("errors" if 'code="5xx"' in query else "requests", 0)

    monkeypatch.setattr(prom, "instant_query", fake)
    w = prom.Window({"bake": 10, "options": _settings(queries=OWN)}, _Ctx(["web-1"], [], {"web-1": "srv-1"}))
    fig = w.figures()
    assert fig["new"] == {"servers": ["srv-1"], "requests": 200, "errors": 3, "latency_ms": None}
    assert fig["old"] == {"servers": [], "requests": 0, "errors": 0, "latency_ms": None}
    assert fig["notes"] == [] and len(asked) == 2 and all('server=~"srv-1"' in q for q in asked)


def test_a_failed_query_gives_none_and_a_note(monkeypatch):
    def fake(url, query, at, timeout, authorization=None, opener=None):
        if 'code="5xx"' in query:
            raise ValueError("Prometheus at http://127.0.0.1:9090 answered HTTP 503")
        return 50.0

    monkeypatch.setattr(prom, "instant_query", fake)
    fig = prom.Window(_settings(queries=OWN), _Ctx(["web-1"], ["web-2"])).figures()
    assert fig["new"]["requests"] == 50 and fig["new"]["errors"] is None and fig["old"]["errors"] is None
    assert fig["notes"] == ["prometheus: new errors: Prometheus at http://127.0.0.1:9090 answered HTTP 503",
                            "prometheus: old errors: Prometheus at http://127.0.0.1:9090 answered HTTP 503"]


# --------------------------------------------------------------------------- in the analysis gate


def test_the_gate_takes_the_provider_and_a_stage_changes_its_keys():
    from deploy_master.gates import analysis

    env = analysis.parse({"provider": "prometheus", "url": URL, "recipe": "haproxy", "backend": "rainbow",
                          "basic_auth": {"username": "u", "password": "pw-S3cret"}, "bake": 30}, WHERE)
    assert env["provider"] == "prometheus" and env["bake"] == 30 and env["options"]["backend"] == "rainbow"
    stage = analysis.parse({"timeout": 3, "bake": 10}, f"{WHERE} stage 'gray'", env)
    assert stage["options"]["timeout"] == 3 and stage["bake"] == 10
    assert prom.authorization(stage["options"]) == prom.authorization(env["options"])
    assert "S3cret" not in json.dumps(stage)
    with pytest.raises(SaltInvocationError, match=r"unknown analysis key 'recpie' \(provider prometheus\); "
                                                  r"did you mean 'recipe'\?"):
        analysis.parse({"provider": "prometheus", "url": URL, "recpie": "haproxy"}, WHERE)
    analysis.check_driver(env, "nginx", WHERE)  # Prometheus, not the LB, counts: any LB will do


def test_the_gate_judges_a_window_without_figures_inconclusive(monkeypatch):
    from deploy_master.gates import analysis

    def unreachable(url, query, at, timeout, authorization=None, opener=None):
        raise ValueError(f"could not reach Prometheus at {url}: Connection refused")

    monkeypatch.setattr(prom, "instant_query", unreachable)
    s = analysis.parse({"provider": "prometheus", "url": URL, "recipe": "haproxy", "backend": "b"}, WHERE)
    figures = prom.Window(s, _Ctx(["web-1"], ["web-2"])).figures()
    result = analysis.decide(s, figures, ["web-1"], ["web-2"])
    assert (result["verdict"], result["passed"]) == ("inconclusive", False)
    assert result["reasons"] == ["inconclusive: the new release's servers (web-1) have no figures (see the notes)"]
    assert result["notes"][-1] == "no figures for the old release's servers (see the notes): absolute limits"
    assert len(result["notes"]) == 7 and "None responses" in analysis.describe(result, s)
