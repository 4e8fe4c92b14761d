"""The ``prometheus`` provider of the live-traffic analysis gate: the figures come from a Prometheus server.

Pillar (beside the gate's own keys: ``bake``, ``interval``, the limits ...)::

    analysis:
      provider: prometheus
      url: http://prometheus.example.com:9090     # http or https; no credentials in it
      recipe: haproxy                             # or nginx; or queries: (below)
      backend: rainbow                            # haproxy: the backend; nginx: the upstream
      timeout: 10                                 # seconds for all the queries of one window
      basic_auth: {username: deploy, password: ...}   # or bearer_token: ...; never shown

    # instead of a recipe, your own PromQL:
      queries:
        requests: sum(increase(http_responses_total{server=~"{{ servers }}"}[{{ window }}]))
        errors: sum(increase(http_responses_total{server=~"{{ servers }}",code="5xx"}[{{ window }}]))
        latency_ms: 1000 * avg(avg_over_time(response_seconds{server=~"{{ servers }}"}[{{ window }}]))

``{{ servers }}`` is a regex alternation of the group's LB server names (``web-1|web-2``; ``app\\.1``
for ``app.1``), each escaped for PromQL's regex and for a double-quoted PromQL string, so it must stand inside double
quotes.  ``{{ window }}`` is the bake window as a PromQL duration (``63s``).  Each query runs once per
group (the new release's servers, then the old one's) as an instant query at the window's end,
``POST <url>/api/v1/query``, and must give one number (aggregate with ``sum``/``avg``).  A query that
fails, answers no series or not a number gives ``None`` (the gate then judges the window
inconclusive) and says why in ``notes``; never with the credentials, which never leave this module but
in the ``Authorization`` header.

Recipes (README "Analysis of live traffic"):

``haproxy``
    HAProxy's built-in exporter (``http-request use-service prometheus-exporter``): per-server
    ``haproxy_server_http_responses_total`` by ``code`` class and
    ``haproxy_server_response_time_average_seconds`` (HAProxy's mean over a server's last 1024
    requests; the latency is its mean over the window).
``nginx``
    nginx-module-vts (``vhost_traffic_status_display_format prometheus``): per upstream server
    ``nginx_vts_upstream_requests_total`` by ``code`` and ``nginx_vts_upstream_response_seconds_total``
    (the latency is the mean upstream response time of the window's requests).  Its ``backend`` label
    is the server's ``host:port``: the LB pillar's ``servers`` of the nginx driver.
"""

import base64
import concurrent.futures
import difflib
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request

from salt.exceptions import SaltInvocationError

try:  # the gate's own keys: given beside the provider's, not this module's to judge
    from deploy_master.gates.analysis import KEYS as _GATE_KEYS
except ImportError:  # before the gate seam
    from deploy_master.analysis import KEYS as _GATE_KEYS

KEYS = ("url", "recipe", "queries", "backend", "timeout", "basic_auth", "bearer_token")
QUERY_KEYS = ("requests", "errors", "latency_ms")
AUTH_KEYS = ("username", "password")
DEFAULT_TIMEOUT = 10
LATENCY = "latency (Prometheus, latency_ms)"  # how the gate names the latency in reasons and in its summary line
LATENCY_SHORT = "latency"
MAX_TIMEOUT = 120
MAX_QUERY = 4000  # characters of one query
MAX_ANSWER = 4 * 1024 * 1024  # bytes of one answer
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
PLACEHOLDERS = ("servers", "window")

# the provider's pillar keys as JSON Schema, for the project's schema (``deploy_master.pillar_schema``)
_TEXT = {"type": "string"}
PILLAR = {
    "url": {"type": "string", "description": "prometheus: the Prometheus server, http(s)://host:port[/prefix]"},
    "recipe": {"type": "string", "enum": ["haproxy", "nginx"],
               "description": "prometheus: ready queries for HAProxy's exporter or nginx-module-vts"},
    "queries": {"type": "object", "description": "prometheus: your own PromQL ({{ servers }}, {{ window }})",
                "properties": {k: _TEXT for k in QUERY_KEYS}, "additionalProperties": False},
    "backend": {"type": "string", "description": "prometheus recipe: the HAProxy backend / the nginx upstream"},
    "timeout": {"type": ["number", "string"], "default": DEFAULT_TIMEOUT,
                "description": "prometheus: seconds for the window's queries"},
    "basic_auth": {"type": "object", "description": "prometheus: username and password (never shown)",
                   "properties": {k: _TEXT for k in AUTH_KEYS}, "additionalProperties": False},
    "bearer_token": {"type": "string", "description": "prometheus: a bearer token (never shown)"},
}

# the recipes: ``SEL`` stands for the labels selecting the group's servers of the backend/upstream
_HAPROXY = 'proxy="{{ backend }}",server=~"{{ servers }}"'
_VTS = 'upstream="{{ backend }}",backend=~"{{ servers }}"'
_VTS_TOTAL = 'sum(increase(nginx_vts_upstream_requests_total{SEL,code="total"}[{{ window }}]))'
RECIPES = {
    "haproxy": {
        "requests": "sum(increase(haproxy_server_http_responses_total{SEL}[{{ window }}]))",
        "errors": 'sum(increase(haproxy_server_http_responses_total{SEL,code="5xx"}[{{ window }}]))',
        "latency_ms": "1000 * avg(avg_over_time(haproxy_server_response_time_average_seconds{SEL}[{{ window }}]))",
    },
    "nginx": {
        "requests": _VTS_TOTAL,
        "errors": 'sum(increase(nginx_vts_upstream_requests_total{SEL,code="5xx"}[{{ window }}]))',
        "latency_ms": "1000 * sum(increase(nginx_vts_upstream_response_seconds_total{SEL}[{{ window }}])) / "
                      + _VTS_TOTAL,
    },
}
RECIPES = {name: {key: query.replace("SEL", _HAPROXY if name == "haproxy" else _VTS) for key, query in qs.items()}
           for name, qs in RECIPES.items()}


class Hidden(str):
    """A credential.  Its text, everywhere it may travel (repr, str, JSON, msgpack, a record), is a
    mask; only :meth:`reveal` gives the value (to the ``Authorization`` header)."""

    def __new__(cls, value):
        self = super().__new__(cls, "<hidden>")
        self._value = value.reveal() if isinstance(value, Hidden) else value
        return self

    def reveal(self):
        return self._value

    def __reduce__(self):
        return (Hidden, (self._value,))


def _revealed(value):
    return value.reveal() if isinstance(value, Hidden) else value


# --------------------------------------------------------------------------- settings


def _bad(where, key, why):
    return SaltInvocationError(f"{where}: analysis:{key} {why}")


def _unknown(where, key, accepted, prefix=""):
    near = difflib.get_close_matches(str(key), accepted, n=1, cutoff=0.6)
    hint = f"did you mean {prefix}{near[0]!r}?" if near else f"accepted: {', '.join(accepted)}"
    return SaltInvocationError(f"{where}: unknown analysis key {prefix}{str(key)!r} (provider prometheus); {hint}")


def _url(value, where):
    if not isinstance(value, str) or not value.strip():
        raise _bad(where, "url", "is required: the Prometheus server, e.g. http://prometheus:9090")
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad(where, "url", f"{value!r} must be an http:// or https:// address of the Prometheus server")
    if "@" in parts.netloc:
        raise _bad(where, "url", "must not carry credentials: give them as basic_auth or bearer_token")
    if parts.query or parts.fragment:
        raise _bad(where, "url", f"{parts._replace(query='', fragment='').geturl()!r}... must have no query or "
                                 f"fragment: the queries go in queries: or a recipe")
    try:
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError:
        raise _bad(where, "url", f"{value!r} has a bad port") from None
    return parts.geturl().rstrip("/")


def _quoted_spans(query):
    """The (start, end) of each double-quoted string of a PromQL query (its text between the quotes)."""
    spans, i, quote, start = [], 0, None, 0
    while i < len(query):
        ch = query[i]
        if quote is None:
            if ch in "\"'`":
                quote, start = ch, i + 1
        elif ch == "\\" and quote != "`":
            i += 1
        elif ch == quote:
            if quote == '"':
                spans.append((start, i))
            quote = None
        i += 1
    return spans


def check_query(query, where, key, placeholders=PLACEHOLDERS):
    """A query of the pillar: a string, known placeholders, ``{{ servers }}`` in it, inside double quotes."""
    if not isinstance(query, str) or not query.strip():
        raise _bad(where, key, "must be a PromQL query (a string)")
    if len(query) > MAX_QUERY:
        raise _bad(where, key, f"is {len(query)} characters long, more than {MAX_QUERY}")
    names = [m.group(1) for m in PLACEHOLDER.finditer(query)]
    for name in names:
        if name not in placeholders:
            near = difflib.get_close_matches(name, placeholders, n=1, cutoff=0.6)
            hint = f"did you mean '{{{{ {near[0]} }}}}'?" if near else \
                "known: " + ", ".join("{{ " + p + " }}" for p in placeholders)
            raise _bad(where, key, f"has an unknown placeholder '{{{{ {name} }}}}'; {hint}")
    if "servers" not in names:
        raise _bad(where, key, "must select the group's servers with {{ servers }}, e.g. server=~\"{{ servers }}\"")
    spans = _quoted_spans(query)
    for m in PLACEHOLDER.finditer(query):
        if m.group(1) == "servers" and not any(a <= m.start() and m.end() <= b for a, b in spans):
            raise _bad(where, key, "must have {{ servers }} inside double quotes, e.g. server=~\"{{ servers }}\"")
    return query.strip()


def _queries(value, where):
    if not isinstance(value, dict):
        raise _bad(where, "queries", f"must be a dict of {', '.join(QUERY_KEYS)} (PromQL)")
    for key in value:
        if key not in QUERY_KEYS:
            raise _unknown(where, key, list(QUERY_KEYS), prefix="queries:")
    for key in ("requests", "errors"):
        if key not in value:
            raise _bad(where, f"queries:{key}", "is required (PromQL giving the group's count in the window)")
    return {key: check_query(value[key], where, f"queries:{key}") if value.get(key) is not None else None
            for key in QUERY_KEYS}


def promql_string(text):
    """``text`` as the inside of a double-quoted PromQL string."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _recipe(raw, where):
    recipe = raw["recipe"]
    if recipe not in RECIPES:
        raise _bad(where, "recipe", f"{recipe!r} must be one of {', '.join(RECIPES)}")
    backend = raw.get("backend")
    label = "the HAProxy backend" if recipe == "haproxy" else "the nginx upstream"
    if not isinstance(backend, str) or not backend.strip():
        raise _bad(where, "backend", f"is required by recipe {recipe}: {label} the servers are in")
    return recipe, backend.strip()


def recipe_queries(recipe, backend):
    """The queries of ``recipe`` for the HAProxy backend / nginx upstream ``backend``."""
    return {key: query.replace("{{ backend }}", promql_string(backend)) for key, query in RECIPES[recipe].items()}


def queries_of(options):
    """The queries a window runs: the pillar's own, or its recipe's."""
    return options["queries"] or recipe_queries(options["recipe"], options["backend"])


def _timeout(value, where):
    try:
        number = None if isinstance(value, bool) else float(str(value).strip())
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or not 0.5 <= number <= MAX_TIMEOUT:
        raise _bad(where, "timeout", f"{value!r} must be a number of seconds from 0.5 to {MAX_TIMEOUT}")
    return number


def _credential(value, where, key):
    value = _revealed(value)
    if not isinstance(value, str) or not value:
        raise _bad(where, key, "must be a non-empty string")
    if any(ch in value for ch in "\r\n\0"):
        raise _bad(where, key, "must be one line")  # the value itself is never shown
    return value


def _credentials(raw, where):
    """``{"basic_auth": {username, password} or None, "bearer_token": ... or None}``, every value :class:`Hidden`."""
    basic, bearer = raw.get("basic_auth"), raw.get("bearer_token")
    if basic is not None and bearer is not None:
        raise _bad(where, "basic_auth", "and analysis:bearer_token: give one of them")
    if bearer is not None:
        return {"basic_auth": None, "bearer_token": Hidden(_credential(bearer, where, "bearer_token"))}
    if basic is None:
        return {"basic_auth": None, "bearer_token": None}
    if not isinstance(basic, dict):
        raise _bad(where, "basic_auth", "must be a dict of username, password")
    for key in basic:
        if key not in AUTH_KEYS:
            raise _unknown(where, key, list(AUTH_KEYS), prefix="basic_auth:")
    user = _credential(basic.get("username"), where, "basic_auth:username")
    if ":" in user:
        raise _bad(where, "basic_auth:username", "must not contain ':'")
    password = _credential(basic.get("password"), where, "basic_auth:password")
    return {"basic_auth": {"username": Hidden(user), "password": Hidden(password)}, "bearer_token": None}


def authorization(options):
    """The ``Authorization`` header's value (None: none), for the request only."""
    if options.get("bearer_token") is not None:
        return "Bearer " + _revealed(options["bearer_token"])
    basic = options.get("basic_auth")
    if not basic:
        return None
    pair = f"{_revealed(basic['username'])}:{_revealed(basic['password'])}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def settings(raw, where):
    """The provider's settings from the analysis pillar ``raw`` (a key of the gate's own is left to it).

    Returns every key of :data:`KEYS`: ``url``, ``timeout``, either ``recipe`` and ``backend`` or
    ``queries`` (the other None), ``basic_auth`` / ``bearer_token`` (None, or with :class:`Hidden`
    values).  What it returns is valid input again (a stage that changes a key is parsed over its
    env's settings).  One ``SaltInvocationError`` naming ``where`` and the key for anything wrong (a
    misspelt key gets the nearest valid one); a credential's value is never in it."""
    if not isinstance(raw, dict):
        raise SaltInvocationError(f"{where}: analysis must be a dict")
    for key in raw:
        if key not in KEYS and key not in _GATE_KEYS and key != "provider":
            raise _unknown(where, key, [*KEYS, *_GATE_KEYS, "provider"])
    raw = {k: v for k, v in raw.items() if v is not None}
    url = _url(raw.get("url"), where)
    if ("recipe" in raw) == ("queries" in raw):
        raise _bad(where, "recipe", "or analysis:queries: give one of them (recipe: haproxy or nginx, or your "
                                    "own queries: requests, errors, latency_ms)")
    if "recipe" in raw:
        (recipe, backend), queries = _recipe(raw, where), None
    else:
        if "backend" in raw:
            raise _bad(where, "backend", "is for a recipe; write the label into your queries")
        recipe, backend, queries = None, None, _queries(raw["queries"], where)
    return {"url": url, "recipe": recipe, "queries": queries, "backend": backend,
            "timeout": _timeout(raw.get("timeout", DEFAULT_TIMEOUT), where), **_credentials(raw, where)}


# --------------------------------------------------------------------------- queries


def regex_escape(name):
    """``name`` with every RE2 metacharacter escaped (Prometheus matches labels with RE2, anchored)."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", name)


def servers_regex(servers):
    """The alternation matching exactly ``servers`` (sorted, each escaped) for ``{{ servers }}``."""
    return "|".join(regex_escape(s) for s in sorted(set(servers)))


def duration(seconds):
    """A window of ``seconds`` as a PromQL duration, rounded up to whole seconds (at least 1s)."""
    return f"{max(1, math.ceil(seconds - 1e-9))}s"


def render(query, servers, window):
    """``query`` with its placeholders filled: ``servers`` (LB server names), ``window`` (a PromQL duration)."""
    values = {"servers": promql_string(servers_regex(servers)), "window": window}
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], query)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, "a redirect (not followed)", headers, fp)


def _opener():
    # no proxy from the environment, no redirect followed; https verified by the default context
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _error_text(body):
    try:
        data = json.loads(body.decode("utf-8", "replace"))
        return f"{data.get('errorType', 'error')}: {str(data.get('error'))[:300]}"
    except (ValueError, AttributeError):
        return None


def _value(data):
    """The one number of an instant query's ``data`` (or raises ValueError saying why not)."""
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        sample = result
    elif kind == "vector":
        if not result:
            raise ValueError("the query returned no series (a label or metric name that matches nothing?)")
        if len(result) > 1:
            raise ValueError(f"the query returned {len(result)} series, not one number: aggregate it (sum, avg)")
        sample = result[0].get("value")
    else:
        raise ValueError(f"the query returned a {kind}, not one number")
    number = float(sample[1])
    if not math.isfinite(number):
        raise ValueError(f"the query gave {sample[1]} (no traffic in the window?)")
    return number


def instant_query(url, query, at, timeout, authorization=None, opener=None):
    """One instant query at unix time ``at``: its number; ``ValueError`` with a reason (never a
    credential) when it failed or gave no single number."""
    form = urllib.parse.urlencode({"query": query, "time": f"{at:.3f}", "timeout": f"{timeout:g}s"}).encode()
    req = urllib.request.Request(f"{url}/api/v1/query", data=form, method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded",
                                          "Accept": "application/json"})
    if authorization is not None:
        req.add_unredirected_header("Authorization", authorization)
    try:
        with (opener or _opener()).open(req, timeout=timeout) as resp:
            body = resp.read(MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            raise ValueError(f"Prometheus at {url} answered HTTP {exc.code}: a redirect, not followed "
                             f"(give the server's own address as url)") from None
        detail = _error_text(exc.read(MAX_ANSWER)) if exc.fp is not None else None
        raise ValueError(f"Prometheus at {url} answered HTTP {exc.code}" + (f" ({detail})" if detail else "")) \
            from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ValueError(f"could not reach Prometheus at {url}: {reason}") from None
    if len(body) > MAX_ANSWER:
        raise ValueError(f"Prometheus at {url} answered more than {MAX_ANSWER} bytes")
    try:
        answer = json.loads(body.decode("utf-8"))
    except ValueError:
        raise ValueError(f"{url} answered something other than Prometheus' JSON") from None
    if not isinstance(answer, dict) or answer.get("status") != "success":
        detail = _error_text(body) if isinstance(answer, dict) else None
        raise ValueError(f"Prometheus at {url} refused the query ({detail})")
    try:
        return _value(answer.get("data") or {})
    except (TypeError, IndexError, KeyError, AttributeError):
        raise ValueError(f"{url} answered something other than an instant query's result") from None


# --------------------------------------------------------------------------- one bake window


class Window:
    """One bake window: Prometheus keeps the samples, so :meth:`sample` does nothing and
    :meth:`figures` asks for the window's figures, once per group, at its end."""

    def __init__(self, settings, ctx):
        # the gate's settings carry the provider's as ``options``
        self.options = settings.get("options", settings)
        self.ctx = ctx
        self.started = time.time()
        self.queries = {}  # the rendered queries of the last figures(): {group: {name: query}}

    def sample(self):
        return None

    def _groups(self):
        servers = getattr(self.ctx, "servers", None) or {}
        return {"new": [servers.get(n, n) for n in self.ctx.new or []],
                "old": [servers.get(n, n) for n in self.ctx.old or []]}

    def figures(self):
        end = time.time()
        window = duration(end - self.started)
        groups = self._groups()
        jobs = {}
        for group, servers in groups.items():
            self.queries[group] = {name: render(query, servers, window)
                                   for name, query in queries_of(self.options).items() if query and servers}
            jobs.update({(group, name): q for name, q in self.queries[group].items()})
        answers = self._ask(jobs, end)
        notes = []
        out = {"window": [round(self.started, 3), round(end, 3)], "range": window}
        for group, servers in groups.items():
            fig = {"servers": sorted(servers), "requests": 0 if not servers else None,
                   "errors": 0 if not servers else None, "latency_ms": None}
            for name in self.queries[group]:
                value, why = answers[(group, name)]
                if why:
                    notes.append(f"prometheus: {group} {name}: {why}")
                elif name == "latency_ms":
                    fig[name] = round(value, 3)
                else:
                    fig[name] = max(0, int(round(value)))
            out[group] = fig
        out["notes"] = notes
        return out

    def _ask(self, jobs, at):
        """Every query at once, all within the settings' timeout: {(group, name): (number, reason)}."""
        s = self.options
        opener, auth = _opener(), authorization(s)

        def one(query):
            try:
                return instant_query(s["url"], query, at, s["timeout"], auth, opener), None
            except ValueError as exc:
                return None, str(exc)

        if not jobs:
            return {}
        pool = concurrent.futures.ThreadPoolExecutor(min(len(jobs), 6))
        try:
            futures = {key: pool.submit(one, query) for key, query in jobs.items()}
            deadline = time.monotonic() + s["timeout"] + 1
            out = {}
            for key, future in futures.items():
                try:
                    out[key] = future.result(timeout=max(0.0, deadline - time.monotonic()))
                except concurrent.futures.TimeoutError:
                    out[key] = (None, f"no answer from Prometheus at {s['url']} within {s['timeout']:g}s")
            return out
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
