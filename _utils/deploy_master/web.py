"""HTTP from the master to an address the pillar or a caller gave: the one opener every request uses.

No proxy from the environment (the request goes straight to its host) and no redirect followed (a 3xx
is the answer, never a second request elsewhere).
"""

import urllib.request


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx answer is the answer (a failed request), never a second request elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # pylint: disable=too-many-arguments
        return None


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())
