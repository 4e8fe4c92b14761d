"""
salt-api's ``rest_cherrypy``, as the web console needs it: the same server, configured by the same
``rest_cherrypy:`` section, with two differences.

- Every answer carries ``X-Frame-Options: DENY`` and ``Content-Security-Policy: frame-ancestors 'none'``
  as HTTP headers (a ``<meta>`` policy cannot forbid framing): no other site can frame the console and
  trick a logged-in operator into pressing its buttons.
- rest_cherrypy's own CORS answer (the request's ``Origin`` echoed, with ``Allow-Credentials: true``)
  is off.  The console is served from the API's own origin and needs none; ``console_origin:`` in the
  section allows exactly one other origin (no credentials).

It runs instead of the built-in module: the master's config disables that one
(``disable_netapis: [rest_cherrypy]``), which is also what loads this one.
"""

import logging

try:
    import cherrypy

    from salt.netapi import rest_cherrypy
    from salt.netapi.rest_cherrypy import app as cherry_app

    HAS_CHERRYPY = True
except ImportError:
    HAS_CHERRYPY = False

log = logging.getLogger(__name__)

__virtualname__ = "deploy_console"

SECTION = "rest_cherrypy"
HEADERS = [
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", "frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
]
ALLOWED_METHODS = "GET, POST"
ALLOWED_HEADERS = "Content-Type, X-Auth-Token, X-Requested-With"


def __virtual__():
    if SECTION not in __opts__.get("disable_netapis", []):
        return False, "deploy_console runs only in place of rest_cherrypy (disable_netapis: [rest_cherrypy])"
    if not isinstance(__opts__.get(SECTION), dict) or "port" not in __opts__[SECTION]:
        return False, "deploy_console: the rest_cherrypy section has no port"
    if not HAS_CHERRYPY:
        return False, "deploy_console: the Python package cherrypy is missing"
    return __virtualname__


def cors_one_origin():
    """CORS for the one configured ``console_origin`` only: its requests get ``Allow-Origin`` naming it,
    any other origin gets no CORS header at all (the browser then keeps the answer from that site)."""
    allowed = cherrypy.config["apiopts"].get("console_origin")
    origin = cherrypy.request.headers.get("Origin")
    if not allowed or origin != allowed:
        return
    headers = cherrypy.response.headers
    headers["Access-Control-Allow-Origin"] = allowed
    headers["Vary"] = "Origin"
    if cherrypy.request.method == "OPTIONS":
        headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        headers["Access-Control-Max-Age"] = "1400"
        cherrypy.response.body = b""
        cherrypy.response.status = 200
        cherrypy.serving.request.handler = None


def configure(conf):
    """rest_cherrypy's CherryPy config ``conf``, changed in place: the headers on, its CORS tool off."""
    root = conf.setdefault("/", {})
    root["tools.cors_tool.on"] = False
    root["tools.deploy_cors.on"] = True
    root["tools.response_headers.on"] = True
    root["tools.response_headers.headers"] = list(HEADERS)
    return conf


def start():
    """Start rest_cherrypy's server with :func:`configure` applied."""
    if not hasattr(cherrypy.tools, "deploy_cors"):
        cherrypy.tools.deploy_cors = cherrypy.Tool("before_request_body", cors_one_origin, priority=49)
    root, apiopts, conf = cherry_app.get_app(__opts__)
    configure(conf)
    if not apiopts.get("disable_ssl", False):
        if "ssl_crt" not in apiopts or "ssl_key" not in apiopts:
            log.error("Not starting deploy_console: ssl_crt and ssl_key are required unless disable_ssl is set")
            return None
        rest_cherrypy.verify_certs(apiopts["ssl_crt"], apiopts["ssl_key"])
        cherrypy.server.ssl_module = "builtin"
        cherrypy.server.ssl_certificate = apiopts["ssl_crt"]
        cherrypy.server.ssl_private_key = apiopts["ssl_key"]
        if "ssl_chain" in apiopts:
            cherrypy.server.ssl_certificate_chain = apiopts["ssl_chain"]
    cherrypy.quickstart(root, apiopts.get("root_prefix", "/"), conf)
    return None
